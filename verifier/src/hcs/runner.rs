//! `HcsRunner`: the [`Runner`] that boots Windows images through any [`HcsApi`]: the real
//! Host Compute Service on Windows, or the test double anywhere.
//!
//! All decisions live here, in cross-platform code: the call sequence, the documents
//! ([`super::doc`]), the layer folders ([`super::unpack`]), timeouts, mapping errors to a job
//! state ([`super::api::classify`]) and cleanup. docs/HCS.md lists the sequence. The runner
//! calls only the `HcsApi` trait; every call runs on tokio's blocking pool under a watchdog
//! (hcsshim's `vmcompute.execute`), so a hung HCS call cannot stall the worker.

use super::api::{self, hresult, Fault, HcsApi, HcsError, Op, ProcessHandle, SystemHandle};
use super::doc::{self, Layer as DocLayer};
use super::unpack::{self, Target, UnpackError};
use crate::runner::{ms, tail, Outcome, RunRequest, Runner};
use berth_oci::platform::Isolation;
use berth_oci::worker_protocol::{JobState, Timings};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// File the runner writes first into a run directory, so [`Runner::sweep`] can tell its
/// leftovers from anything else under the work directory.
pub const MARKER: &str = "berth-hcs-run.json";

/// At most this much output goes into `log_tail` (the report's limit).
pub const LOG_TAIL_BYTES: usize = 8 * 1024;

/// Knobs of the runner.
#[derive(Debug, Clone)]
pub struct HcsConfig {
    /// Utility VM memory in MB (Hyper-V isolation).
    pub uvm_memory_mb: u64,
    /// Utility VM virtual processors.
    pub uvm_processors: u32,
    /// Size of each scratch VHDX in GB (the process-isolated sandbox and the Hyper-V
    /// container's scratch).
    pub scratch_size_gb: u64,
    /// How often the exit of the probe is polled on hosts without `HcsWaitForProcessExit`.
    pub poll_interval: Duration,
    /// Pause between attempts to mount the sandbox after ERROR_NOT_READY (hcsshim: 100 ms).
    pub mount_retry_pause: Duration,
    /// Watchdog for every HCS call but the wait for the probe.
    pub call_timeout: Duration,
    /// Extra time the wait for the probe gets before its watchdog fires.
    pub wait_grace: Duration,
}

impl Default for HcsConfig {
    fn default() -> Self {
        Self {
            uvm_memory_mb: doc::DEFAULT_UVM_MEMORY_MB,
            uvm_processors: doc::DEFAULT_UVM_PROCESSORS,
            scratch_size_gb: 20,
            poll_interval: Duration::from_millis(250),
            mount_retry_pause: Duration::from_millis(100),
            call_timeout: Duration::from_secs(600),
            wait_grace: Duration::from_secs(30),
        }
    }
}

/// The runner over an [`HcsApi`].
#[derive(Debug)]
pub struct HcsRunner<A: HcsApi> {
    api: Arc<A>,
    config: HcsConfig,
}

impl<A: HcsApi> HcsRunner<A> {
    /// A runner over `api` with the default configuration.
    pub fn new(api: Arc<A>) -> Self {
        Self::with_config(api, HcsConfig::default())
    }

    /// A runner over `api` with `config`.
    pub fn with_config(api: Arc<A>, config: HcsConfig) -> Self {
        Self { api, config }
    }

    /// The API it calls (the tests inspect the double through it).
    pub fn api(&self) -> &Arc<A> {
        &self.api
    }

    /// Runs one HCS call on the blocking pool, bounded by `limit`.
    async fn call<T, F>(&self, op: Op, limit: Duration, f: F) -> api::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&A) -> api::Result<T> + Send + 'static,
    {
        let api = Arc::clone(&self.api);
        let task = tokio::task::spawn_blocking(move || f(&api));
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(HcsError::new(
                op,
                hresult::E_FAIL,
                format!("the call failed: {e}"),
            )),
            Err(_) => Err(HcsError::new(
                op,
                hresult::HCS_E_OPERATION_TIMEOUT,
                format!("no answer within {} (watchdog)", human(limit)),
            )),
        }
    }

    async fn hcs<T, F>(&self, op: Op, f: F) -> api::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&A) -> api::Result<T> + Send + 'static,
    {
        self.call(op, self.config.call_timeout, f).await
    }
}

/// What a run created, in order, so cleanup undoes exactly that.
#[derive(Debug, Default)]
struct Created {
    /// Layer folders handed to HCS (imported or set up), base first.
    layers: Vec<PathBuf>,
    /// The scratch folder (destroyed after the layers' filter and disk are gone).
    writable: Option<PathBuf>,
    /// The sandbox VHDX, attached.
    sandbox: Option<PathBuf>,
    /// The sandbox volume with its storage filter attached.
    filter: Option<PathBuf>,
    /// Compute systems, in creation order, with "started and not yet stopped".
    systems: Vec<(SystemHandle, bool)>,
    /// Processes.
    processes: Vec<ProcessHandle>,
}

/// Why a run stopped early.
#[derive(Debug)]
enum Stop {
    Hcs(HcsError),
    Unpack(UnpackError),
    /// The image cannot be run (not a Windows base layer, no utility VM…).
    Image(String),
    /// Local I/O or task failure.
    Host(String),
}

impl From<HcsError> for Stop {
    fn from(e: HcsError) -> Self {
        Stop::Hcs(e)
    }
}

impl Stop {
    fn into_outcome(self) -> Outcome {
        let (status, message) = match self {
            Stop::Hcs(e) => {
                let status = match e.fault() {
                    Fault::Infrastructure => JobState::Error,
                    Fault::Image => JobState::Failed,
                    Fault::Incompatible => JobState::Incompatible,
                };
                (status, e.to_string())
            }
            Stop::Unpack(e) if e.is_image_fault() => (JobState::Failed, e.to_string()),
            Stop::Unpack(e) => (JobState::Error, e.to_string()),
            Stop::Image(m) => (JobState::Failed, m),
            Stop::Host(m) => (JobState::Error, m),
        };
        Outcome {
            status,
            exit_code: None,
            message,
            log_tail: String::new(),
            timings: Timings::default(),
        }
    }
}

/// A duration for people: `30 s`, `250 ms`.
pub fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn io_stop(what: &str, e: std::io::Error) -> Stop {
    Stop::Host(format!("{what}: {e}"))
}

/// Attempts at mounting the sandbox (hcsshim `wcow_mount.go`: 5).
const MOUNT_ATTEMPTS: usize = 5;

/// Where the hosted container's storage lives in the utility VM.
const GUEST_ROOT: &str = doc::HOSTED_SCRATCH_GUEST_PATH;

/// The folder of layer `i` (base = 0) in the run directory.
fn layer_folder(dir: &Path, i: usize, digest: &str) -> PathBuf {
    let hex = digest.rsplit(':').next().unwrap_or(digest);
    let short: String = hex
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    dir.join("layers").join(format!("{i:02}-{short}"))
}

impl<A: HcsApi> HcsRunner<A> {
    async fn run_steps(
        &self,
        req: &RunRequest,
        c: &mut Created,
        t: &mut Timings,
    ) -> Result<Outcome, Stop> {
        let dir = req.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| io_stop("creating the run directory", e))?;
        let marker = serde_json::json!({
            "runner": self.api.runner_name(),
            "job": req.job_id,
            "container": req.container_id,
        });
        std::fs::write(dir.join(MARKER), marker.to_string())
            .map_err(|e| io_stop("writing the run marker", e))?;
        if req.image.layers.is_empty() {
            return Err(Stop::Image("the image has no layers".into()));
        }
        if req.command.is_empty() {
            return Err(Stop::Image(
                "nothing to run: no probe and no entrypoint or command".into(),
            ));
        }

        // --- unpack and import, base first (parent chain) ---
        let t0 = Instant::now();
        let mut folders: Vec<PathBuf> = Vec::new();
        let mut uvm_layer: Option<PathBuf> = None;
        let budget = Arc::new(crate::unpack::Budget::new(req.limits));
        for (i, layer) in req.image.layers.iter().enumerate() {
            let folder = layer_folder(&dir, i, &layer.digest);
            let (l, f) = (layer.clone(), folder.clone());
            let b = budget.clone();
            if i == 0 {
                let u = tokio::task::spawn_blocking(move || {
                    unpack::unpack_layer(&l, &f, Target::Base, &b)
                })
                .await
                .map_err(|e| Stop::Host(format!("unpack task: {e}")))?
                .map_err(Stop::Unpack)?;
                if !u.looks_like_base {
                    return Err(Stop::Image(format!(
                        "layer 1 ({}) is not a Windows base layer: no Files/Windows/System32/config/SYSTEM",
                        layer.digest
                    )));
                }
                c.layers.push(folder.clone());
                let (f, vhd) = (folder.clone(), folder.join("blank-base.vhdx"));
                let opts = doc::to_json(&doc::container_base_options());
                self.hcs(Op::SetupBaseOsLayer, move |a| {
                    a.setup_base_os_layer(&f, &vhd, &opts)
                })
                .await?;
                if u.has_utility_vm {
                    uvm_layer = Some(folder.clone());
                }
            } else {
                // The transport format (hcsshim legacyLayerWriter): the source gets Files\ and
                // Hives\; UtilityVM\ goes straight into the new layer folder.
                let src = dir.join("import").join(format!("{i:02}"));
                std::fs::create_dir_all(&folder)
                    .map_err(|e| io_stop("creating a layer folder", e))?;
                c.layers.push(folder.clone());
                let parents: Vec<PathBuf> = folders.iter().rev().cloned().collect();
                let (s2, f2, p2) = (src.clone(), folder.clone(), parents.clone());
                let u = tokio::task::spawn_blocking(move || {
                    unpack::unpack_layer(
                        &l,
                        &s2,
                        Target::Import {
                            layer: &f2,
                            parents: &p2,
                        },
                        &b,
                    )
                })
                .await
                .map_err(|e| Stop::Host(format!("unpack task: {e}")))?
                .map_err(Stop::Unpack)?;
                let parent_layers: Vec<DocLayer> =
                    parents.iter().map(|p| DocLayer::at(&s(p))).collect();
                let data = doc::to_json(&doc::layer_data(&parent_layers));
                let (f, s3) = (folder.clone(), src.clone());
                self.hcs(Op::ImportLayer, move |a| a.import_layer(&f, &s3, &data))
                    .await?;
                let (f, has_uvm) = (folder.clone(), u.has_utility_vm);
                tokio::task::spawn_blocking(move || unpack::finish_import(&f, &u))
                    .await
                    .map_err(|e| Stop::Host(format!("import task: {e}")))?
                    .map_err(|e| io_stop("whiteouts and hard links after the import", e))?;
                let _ = std::fs::remove_dir_all(&src);
                if has_uvm {
                    uvm_layer = Some(folder.clone());
                }
            }
            folders.push(folder);
        }
        let _ = std::fs::remove_dir_all(dir.join("import"));
        t.unpack_ms = ms(t0.elapsed());

        // Read-only layers as HCS wants them: topmost first, base last.
        let layers: Vec<DocLayer> = folders.iter().rev().map(|p| DocLayer::at(&s(p))).collect();
        let data = doc::to_json(&doc::layer_data(&layers));

        // --- scratch and compute system(s) ---
        let t1 = Instant::now();
        let container = match req.isolation {
            Isolation::Process => {
                let scratch = dir.join("scratch");
                std::fs::create_dir_all(&scratch)
                    .map_err(|e| io_stop("creating the scratch folder", e))?;
                c.writable = Some(scratch.clone());
                let volume = self.mount_sandbox(&scratch, &data, c).await?;
                let document = doc::to_json(&doc::process_container(&doc::ContainerSpec {
                    hostname: req.container_id.clone(),
                    layers: layers.clone(),
                    scratch: volume,
                }));
                let id = req.container_id.clone();
                let h = self
                    .hcs(Op::CreateComputeSystem, move |a| {
                        a.create_compute_system(&id, &document)
                    })
                    .await?;
                c.systems.push((h, false));
                h
            }
            Isolation::HyperV => {
                let Some(uvm_layer) = uvm_layer else {
                    return Err(Stop::Image(
                        "no layer has UtilityVM/Files: the image cannot boot with Hyper-V isolation".into(),
                    ));
                };
                let uvm_dir = dir.join("uvm");
                std::fs::create_dir_all(&uvm_dir)
                    .map_err(|e| io_stop("creating the uvm folder", e))?;
                // The utility VM's image: SystemTemplateBase.vhdx and its differencing
                // SystemTemplate.vhdx in the topmost layer with a UtilityVM (computestorage
                // SetupUtilityVMBaseLayer; hcsshim ProcessUtilityVMImage at import).
                let uvm_image = uvm_layer.join("UtilityVM");
                let (u, vhd) = (uvm_image.clone(), uvm_image.join("SystemTemplateBase.vhdx"));
                let opts = doc::to_json(&doc::vm_base_options());
                self.hcs(Op::SetupBaseOsLayer, move |a| {
                    a.setup_base_os_layer(&u, &vhd, &opts)
                })
                .await?;
                let uvm_id = format!("{}-uvm", req.container_id);
                // Its scratch: a copy of SystemTemplate.vhdx the VM may open (wcow/scratch.go).
                let uvm_vhd = uvm_dir.join("sandbox.vhdx");
                let (t, v, id) = (
                    uvm_image.join("SystemTemplate.vhdx"),
                    uvm_vhd.clone(),
                    uvm_id.clone(),
                );
                self.hcs(Op::CreateUvmScratch, move |a| {
                    a.create_uvm_scratch(&t, &v, &id)
                })
                .await?;
                let ctr_vhd = uvm_dir.join("container-scratch.vhdx");
                let (v, size) = (ctr_vhd.clone(), self.config.scratch_size_gb);
                self.hcs(Op::CreateScratchVhd, move |a| {
                    a.create_scratch_vhd(&v, size)
                })
                .await?;
                let uvm_doc = doc::to_json(&doc::utility_vm(&doc::UtilityVmSpec {
                    os_files: s(&uvm_image.join("Files")),
                    uvm_scratch_vhd: s(&uvm_vhd),
                    layers: layers.clone(),
                    memory_mb: self.config.uvm_memory_mb,
                    processors: self.config.uvm_processors,
                }));
                let id = uvm_id.clone();
                let uvm = self
                    .hcs(Op::CreateComputeSystem, move |a| {
                        a.create_compute_system(&id, &uvm_doc)
                    })
                    .await?;
                c.systems.push((uvm, false));
                self.hcs(Op::StartComputeSystem, move |a| a.start_compute_system(uvm))
                    .await?;
                if let Some(x) = c.systems.last_mut() {
                    x.1 = true;
                }
                // The hosted container's storage, prepared in the guest through HCS
                // (hcsshim c68147485 uvm/scsi.go addSCSIActual, uvm/combine_layers.go).
                for request in [
                    doc::add_mapped_virtual_disk(
                        &s(&ctr_vhd),
                        doc::CONTAINER_SCRATCH_LUN,
                        GUEST_ROOT,
                    ),
                    doc::combine_layers(GUEST_ROOT, &doc::guest_layers(&layers)),
                ] {
                    let request = doc::to_json(&request);
                    self.hcs(Op::ModifyComputeSystem, move |a| {
                        a.modify_compute_system(uvm, &request)
                    })
                    .await?;
                }
                let hosted =
                    doc::to_json(&doc::hosted_container(&uvm_id, &req.container_id, &layers));
                let id = req.container_id.clone();
                let h = self
                    .hcs(Op::CreateComputeSystem, move |a| {
                        a.create_compute_system(&id, &hosted)
                    })
                    .await?;
                c.systems.push((h, false));
                h
            }
        };
        t.create_ms = ms(t1.elapsed());

        // --- start and run the probe ---
        let t2 = Instant::now();
        self.hcs(Op::StartComputeSystem, move |a| {
            a.start_compute_system(container)
        })
        .await?;
        if let Some(x) = c.systems.last_mut() {
            x.1 = true;
        }
        let params = doc::to_json(&doc::process_parameters(
            &req.command,
            &req.working_dir,
            &req.env,
            &req.user,
        ));
        let process = self
            .hcs(Op::CreateProcess, move |a| {
                a.create_process(container, &params)
            })
            .await?;
        c.processes.push(process);
        t.start_ms = ms(t2.elapsed());

        // --- wait, bounded by the job's timeout ---
        let t3 = Instant::now();
        let timeout = req.timeout;
        let exit = if self.api.has(Op::WaitForProcessExit) {
            self.call(
                Op::WaitForProcessExit,
                timeout + self.config.wait_grace,
                move |a| a.wait_for_process_exit(process, timeout),
            )
            .await?
        } else {
            // 17763 has no HcsWaitForProcessExit: poll the process status until the deadline.
            let deadline = Instant::now() + timeout;
            loop {
                let exit = self
                    .hcs(Op::GetProcessProperties, move |a| {
                        a.get_process_exit(process)
                    })
                    .await?;
                let now = Instant::now();
                if exit.is_some() || now >= deadline {
                    break exit;
                }
                tokio::time::sleep(self.config.poll_interval.min(deadline - now)).await;
            }
        };
        let outcome = match exit {
            Some(exit) => {
                t.exit_ms = ms(t3.elapsed());
                let (status, message) = if exit.exit_code == 0 {
                    (JobState::Passed, "probe exited with code 0".to_owned())
                } else {
                    (
                        JobState::Failed,
                        format!("probe exited with code {}", exit.exit_code),
                    )
                };
                Outcome {
                    status,
                    exit_code: Some(exit.exit_code),
                    message,
                    log_tail: tail(&exit.output, LOG_TAIL_BYTES),
                    timings: Timings::default(),
                }
            }
            None => {
                let r = self
                    .hcs(Op::TerminateComputeSystem, move |a| {
                        a.terminate_compute_system(container)
                    })
                    .await;
                t.exit_ms = ms(t3.elapsed());
                let mut message = format!("timed out after {}", human(timeout));
                match r {
                    Ok(()) => {
                        if let Some(x) = c.systems.last_mut() {
                            x.1 = false;
                        }
                    }
                    Err(e) if api::is_already_gone(e.hresult) => {
                        if let Some(x) = c.systems.last_mut() {
                            x.1 = false;
                        }
                    }
                    Err(e) => message.push_str(&format!("; terminating it failed: {e}")),
                }
                Outcome {
                    status: JobState::Failed,
                    exit_code: None,
                    message,
                    log_tail: String::new(),
                    timings: Timings::default(),
                }
            }
        };
        Ok(outcome)
    }

    /// The process-isolated container's storage (hcsshim `mountProcessIsolatedWCIFSLayers`):
    /// `scratch\sandbox.vhdx` created, formatted and attached without a drive letter; on its
    /// volume the writable layer is initialized and the storage filter attached over the
    /// layers in `data`. ERROR_NOT_READY / ERROR_DEVICE_NOT_CONNECTED (the RS5 flake) undo what
    /// was done and try again, up to [`MOUNT_ATTEMPTS`] times. Returns the volume path.
    async fn mount_sandbox(
        &self,
        scratch: &Path,
        data: &str,
        c: &mut Created,
    ) -> Result<String, Stop> {
        let vhd = scratch.join("sandbox.vhdx");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.try_mount_sandbox(&vhd, data, c).await;
            match r {
                Ok(volume) => return Ok(volume),
                Err(e) if api::is_retryable_mount(e.hresult) && attempt < MOUNT_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "retrying the sandbox mount");
                    if let Some(w) = c.filter.take() {
                        let _ = self
                            .hcs(Op::DetachLayerStorageFilter, move |a| {
                                a.detach_layer_storage_filter(&w)
                            })
                            .await;
                    }
                    if let Some(v) = c.sandbox.take() {
                        let _ = self
                            .hcs(Op::DetachSandboxVhd, move |a| a.detach_sandbox_vhd(&v))
                            .await;
                    }
                    tokio::time::sleep(self.config.mount_retry_pause).await;
                }
                Err(e) => return Err(Stop::Hcs(e)),
            }
        }
    }

    async fn try_mount_sandbox(
        &self,
        vhd: &Path,
        data: &str,
        c: &mut Created,
    ) -> api::Result<String> {
        let (v, size) = (vhd.to_path_buf(), self.config.scratch_size_gb);
        let volume = self
            .hcs(Op::MountSandboxVhd, move |a| a.mount_sandbox_vhd(&v, size))
            .await?;
        c.sandbox = Some(vhd.to_path_buf());
        let (w, d) = (PathBuf::from(&volume), data.to_owned());
        self.hcs(Op::InitializeWritableLayer, move |a| {
            a.initialize_writable_layer(&w, &d, "")
        })
        .await?;
        let (w, d) = (PathBuf::from(&volume), data.to_owned());
        self.hcs(Op::AttachLayerStorageFilter, move |a| {
            a.attach_layer_storage_filter(&w, &d)
        })
        .await?;
        c.filter = Some(PathBuf::from(&volume));
        Ok(volume)
    }

    /// Undoes what `c` lists, newest first; returns what could not be undone.
    async fn cleanup(&self, dir: &Path, c: Created) -> Vec<String> {
        let mut errors = Vec::new();
        for p in c.processes.into_iter().rev() {
            let _ = self
                .hcs(Op::CloseProcess, move |a| {
                    a.close_process(p);
                    Ok(())
                })
                .await;
        }
        for (sys, running) in c.systems.into_iter().rev() {
            if running {
                match self
                    .hcs(Op::TerminateComputeSystem, move |a| {
                        a.terminate_compute_system(sys)
                    })
                    .await
                {
                    Ok(()) => {}
                    Err(e) if api::is_already_gone(e.hresult) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            let _ = self
                .hcs(Op::CloseComputeSystem, move |a| {
                    a.close_compute_system(sys);
                    Ok(())
                })
                .await;
        }
        // The filter first, then the disk (hcsshim wcowHostWCIFSLayerCloser.Release).
        if let Some(w) = c.filter {
            if let Err(e) = self
                .hcs(Op::DetachLayerStorageFilter, move |a| {
                    a.detach_layer_storage_filter(&w)
                })
                .await
            {
                errors.push(e.to_string());
            }
        }
        if let Some(v) = c.sandbox {
            if let Err(e) = self
                .hcs(Op::DetachSandboxVhd, move |a| a.detach_sandbox_vhd(&v))
                .await
            {
                errors.push(e.to_string());
            }
        }
        let layers = c.writable.into_iter().chain(c.layers.into_iter().rev());
        for l in layers {
            let l2 = l.clone();
            match self
                .hcs(Op::DestroyLayer, move |a| a.destroy_layer(&l2))
                .await
            {
                Ok(()) => {}
                Err(e) if api::is_already_gone(e.hresult) && !l.exists() => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        for sub in ["import", "layers", "scratch", "uvm", MARKER] {
            let p = dir.join(sub);
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else if p.exists() {
                std::fs::remove_file(&p)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                errors.push(format!("removing {}: {e}", p.display()));
            }
        }
        errors
    }

    /// Cleans one run directory left behind by a crashed run: detach and destroy its layers,
    /// then delete it.
    async fn sweep_one(&self, dir: &Path) -> Vec<String> {
        let mut errors = Vec::new();
        let scratch = dir.join("scratch");
        if scratch.exists() {
            // The sandbox disk went with the crashed process's handle (it is attached without
            // PERMANENT_LIFETIME), and its filter with the volume; detaching again is harmless.
            let v = scratch.join("sandbox.vhdx");
            let _ = self
                .hcs(Op::DetachSandboxVhd, move |a| a.detach_sandbox_vhd(&v))
                .await;
            let w = scratch.clone();
            if let Err(e) = self
                .hcs(Op::DestroyLayer, move |a| a.destroy_layer(&w))
                .await
            {
                if !api::is_already_gone(e.hresult) {
                    errors.push(e.to_string());
                }
            }
        }
        let mut layers: Vec<PathBuf> = std::fs::read_dir(dir.join("layers"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        layers.sort();
        for l in layers.into_iter().rev() {
            let l2 = l.clone();
            if let Err(e) = self
                .hcs(Op::DestroyLayer, move |a| a.destroy_layer(&l2))
                .await
            {
                if !api::is_already_gone(e.hresult) {
                    errors.push(e.to_string());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(dir) {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
        errors
    }
}

#[async_trait::async_trait]
impl<A: HcsApi> Runner for HcsRunner<A> {
    fn name(&self) -> &'static str {
        self.api.runner_name()
    }

    fn os(&self) -> &'static str {
        "windows"
    }

    fn isolation(&self) -> Vec<Isolation> {
        vec![Isolation::Process, Isolation::HyperV]
    }

    fn simulated(&self) -> bool {
        self.api.simulated()
    }

    async fn run(&self, req: RunRequest) -> Outcome {
        let mut created = Created::default();
        let mut timings = Timings::default();
        let result = self.run_steps(&req, &mut created, &mut timings).await;
        let cleanup_errors = self.cleanup(&req.dir, created).await;
        let mut outcome = match result {
            Ok(o) => o,
            Err(stop) => stop.into_outcome(),
        };
        outcome.timings = timings;
        if !cleanup_errors.is_empty() {
            tracing::warn!(job.id = req.job_id, errors = ?cleanup_errors, "hcs cleanup incomplete");
            outcome.message.push_str(&format!(
                "; cleanup incomplete: {}",
                cleanup_errors.join("; ")
            ));
        }
        outcome
    }

    async fn sweep(&self, work_dir: &Path) -> anyhow::Result<()> {
        let entries = match std::fs::read_dir(work_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", work_dir.display())),
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.join(MARKER).is_file())
            .collect();
        dirs.sort();
        let mut errors = Vec::new();
        for d in dirs {
            tracing::info!(dir = %d.display(), "sweeping a run left behind");
            errors.extend(self.sweep_one(&d).await);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("sweep incomplete: {}", errors.join("; ")))
        }
    }
}
