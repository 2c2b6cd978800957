//! The `oci-runtime` runner: boots Linux images with runc (or crun).
//!
//! Layers are unpacked into `<dir>/bundle/rootfs`, a runtime-spec `config.json` is written
//! with the oci-spec crate (new pid, mount, ipc, uts and network namespaces; the image's
//! user, environment and working directory; the probe or the image's entrypoint and command),
//! and the container runs under a `berth-verifier shim` process with the timeout enforced
//! here. Whatever happens, the container is killed and deleted and the run directory removed
//! by the worker; `sweep` clears what a killed worker left.

use crate::runner::{ms, tail, Outcome, RunRequest, Runner};
use crate::shim::ShimResult;
use crate::unpack;
use anyhow::{Context, Result};
use berth_oci::platform::Isolation;
use berth_oci::verify::{JobState, Timings};
use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, SpecBuilder, UserBuilder,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Bytes of output kept for the report.
pub const LOG_TAIL: usize = 4096;

/// The runner.
pub struct OciRuntime {
    /// runc or crun.
    pub runtime: PathBuf,
    /// The runtime's state directory, private to this worker (`--root`).
    pub state_dir: PathBuf,
    /// This executable, started as `shim`.
    pub shim_exe: PathBuf,
}

impl OciRuntime {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root").arg(&self.state_dir);
        c.stdin(std::process::Stdio::null());
        c
    }

    async fn kill(&self, id: &str) {
        let _ = self
            .cmd()
            .args(["kill", id, "KILL"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }

    async fn delete(&self, id: &str) {
        let _ = self
            .cmd()
            .args(["delete", "--force", id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
}

/// Resolves the image's `User` (`uid[:gid]`, or names from the rootfs's /etc/passwd and
/// /etc/group) to numbers.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = read_image_file(rootfs, file)?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| {
                (
                    f[2].parse().unwrap_or(0),
                    f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0),
                )
            })
        })
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_gid_of_uid(rootfs, n).unwrap_or(0)),
        Err(_) => lookup("etc/passwd", u)
            .with_context(|| format!("user {u:?} is not in the image's /etc/passwd"))?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                lookup("etc/group", g)
                    .with_context(|| format!("group {g:?} is not in the image's /etc/group"))?
                    .0
            }
        };
    }
    Ok((uid, gid))
}

/// Reads a small text file of the image (`etc/passwd`, `etc/group`) without following
/// symlinks anywhere on the way (a link to the host's /etc, /dev/zero or a FIFO must not be
/// read by the worker), up to 1 MiB.
fn read_image_file(rootfs: &Path, rel: &str) -> Option<String> {
    use std::io::Read;
    let mut cur = rootfs.to_path_buf();
    for c in Path::new(rel).components() {
        cur.push(c);
        let m = std::fs::symlink_metadata(&cur).ok()?;
        if m.file_type().is_symlink() {
            return None;
        }
    }
    if !std::fs::symlink_metadata(&cur).ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(&cur)
        .ok()?
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The last `max` bytes of a file, without reading the rest.
fn file_tail(path: &Path, max: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let max = max as u64;
    if len > max && f.seek(SeekFrom::Start(len - max)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

fn lookup_gid_of_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = read_image_file(rootfs, "etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok())?
    })
}

/// Writes `config.json` for the request into `bundle`.
pub fn write_spec(bundle: &Path, req: &RunRequest) -> Result<()> {
    let rootfs = bundle.join("rootfs");
    let (uid, gid) = resolve_user(&rootfs, &req.user)?;
    let mut env = req.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let cwd = if req.working_dir.is_empty() {
        "/".to_owned()
    } else {
        req.working_dir.clone()
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(req.command.clone())
        .env(env)
        .cwd(cwd)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .no_new_privileges(true)
        // The sandbox's hard limits are low; ask for what any host allows.
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()?])
        .build()?;
    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    let linux = LinuxBuilder::default()
        .namespaces(vec![
            ns(LinuxNamespaceType::Pid)?,
            ns(LinuxNamespaceType::Network)?,
            ns(LinuxNamespaceType::Ipc)?,
            ns(LinuxNamespaceType::Uts)?,
            ns(LinuxNamespaceType::Mount)?,
        ])
        .build()?;
    let defaults = oci_spec::runtime::Spec::default();
    let spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        )
        .hostname(req.container_id.chars().take(63).collect::<String>())
        .process(process)
        .mounts(defaults.mounts().clone().unwrap_or_default())
        .linux(
            LinuxBuilder::default()
                .namespaces(linux.namespaces().clone().unwrap_or_default())
                .masked_paths(
                    defaults
                        .linux()
                        .as_ref()
                        .and_then(|l| l.masked_paths().clone())
                        .unwrap_or_default(),
                )
                .readonly_paths(
                    defaults
                        .linux()
                        .as_ref()
                        .and_then(|l| l.readonly_paths().clone())
                        .unwrap_or_default(),
                )
                .build()?,
        )
        .build()?;
    spec.save(bundle.join("config.json"))
        .context("writing config.json")?;
    Ok(())
}

#[async_trait::async_trait]
impl Runner for OciRuntime {
    fn name(&self) -> &'static str {
        "oci-runtime"
    }

    fn os(&self) -> &'static str {
        "linux"
    }

    fn isolation(&self) -> Vec<Isolation> {
        vec![Isolation::Process]
    }

    async fn run(&self, req: RunRequest) -> Outcome {
        let mut timings = Timings::default();
        let bundle = req.dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        // Unpack (blocking work off the runtime's threads).
        let t = Instant::now();
        let layers = req.image.layers.clone();
        let rf = rootfs.clone();
        let unpacked = tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::create_dir_all(&rf)?;
            for l in &layers {
                let c = unpack::compression(&l.media_type)?;
                unpack::apply_layer(&rf, &l.path, c)
                    .with_context(|| format!("layer {}", l.digest))?;
            }
            Ok(())
        })
        .await;
        timings.unpack_ms = ms(t.elapsed());
        match unpacked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A layer that cannot be applied is the image's fault.
                return Outcome {
                    status: JobState::Failed,
                    exit_code: None,
                    message: format!("unpacking the layers failed: {e:#}"),
                    log_tail: String::new(),
                    timings,
                };
            }
            Err(e) => return Outcome::error(format!("unpack task: {e}")),
        }
        if req.command.is_empty() {
            return Outcome {
                status: JobState::Failed,
                exit_code: None,
                message: "the image has no entrypoint or command, and the policy no probe".into(),
                log_tail: String::new(),
                timings,
            };
        }
        if let Err(e) = write_spec(&bundle, &req) {
            return Outcome {
                status: JobState::Failed,
                exit_code: None,
                message: format!("cannot build the runtime spec: {e:#}"),
                log_tail: String::new(),
                timings,
            };
        }
        let log = req.dir.join("output.log");
        let mut shim = Command::new(&self.shim_exe);
        shim.arg("shim")
            .arg("--runtime")
            .arg(&self.runtime)
            .arg("--root")
            .arg(&self.state_dir)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--id")
            .arg(&req.container_id)
            .arg("--log")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = match shim.spawn() {
            Ok(c) => c,
            Err(e) => return Outcome::error(format!("starting the shim: {e}")),
        };
        let waited = tokio::time::timeout(
            req.timeout + Duration::from_secs(30),
            wait_with_deadline(self, &req, child),
        )
        .await;
        let (res, timed_out) = match waited {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.kill(&req.container_id).await;
                self.delete(&req.container_id).await;
                return Outcome::error(format!("shim: {e:#}"));
            }
            Err(_) => {
                self.kill(&req.container_id).await;
                self.delete(&req.container_id).await;
                return Outcome::error("the shim did not finish after the container was killed");
            }
        };
        self.delete(&req.container_id).await;
        timings.create_ms = res.create_ms;
        timings.start_ms = res.start_ms;
        timings.exit_ms = res.exit_ms;
        // Read only the end: a probe may write gigabytes.
        let output = file_tail(&log, LOG_TAIL * 2);
        let log_tail = tail(&output, LOG_TAIL);
        if timed_out {
            return Outcome {
                status: JobState::Failed,
                exit_code: res.exit_code,
                message: format!(
                    "timed out after {}s; the container was killed",
                    req.timeout.as_secs()
                ),
                log_tail,
                timings,
            };
        }
        match (res.exit_code, res.error) {
            (Some(0), _) => Outcome {
                status: JobState::Passed,
                exit_code: Some(0),
                message: "the probe exited with 0".into(),
                log_tail,
                timings,
            },
            (Some(c), _) => Outcome {
                status: JobState::Failed,
                exit_code: Some(c),
                message: format!("the probe exited with {c}"),
                log_tail,
                timings,
            },
            (None, Some(e)) if res.phase == "create" || res.phase == "start" => {
                // The runtime refused the container. With a spec we wrote, that is the
                // image's doing (a missing entrypoint, a bad working directory…): the runtime's
                // own message is in the log.
                Outcome {
                    status: JobState::Failed,
                    exit_code: None,
                    message: format!("the container did not start: {e}"),
                    log_tail,
                    timings,
                }
            }
            (None, e) => Outcome {
                status: JobState::Error,
                exit_code: None,
                message: e.unwrap_or_else(|| "the shim reported nothing".into()),
                log_tail,
                timings,
            },
        }
    }

    async fn sweep(&self, work_dir: &Path) -> Result<()> {
        // Containers a killed worker left in its runtime state directory.
        if self.state_dir.exists() {
            let out = self
                .cmd()
                .args(["list", "--quiet"])
                .output()
                .await
                .context("listing containers")?;
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let id = id.trim();
                if id.is_empty() {
                    continue;
                }
                tracing::info!(
                    container = id,
                    "removing a container left by an earlier run"
                );
                self.kill(id).await;
                self.delete(id).await;
            }
        }
        // Run directories: direct subfolders named `job-…`.
        if let Ok(mut rd) = tokio::fs::read_dir(work_dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("job-") {
                    tracing::info!(dir = %e.path().display(), "removing a run directory left by an earlier run");
                    let _ = tokio::fs::remove_dir_all(e.path()).await;
                }
            }
        }
        Ok(())
    }
}

/// Waits for the shim, killing the container at the request's deadline. Returns the shim's
/// report and whether the deadline struck.
async fn wait_with_deadline(
    rt: &OciRuntime,
    req: &RunRequest,
    child: tokio::process::Child,
) -> Result<(ShimResult, bool)> {
    let out = child.wait_with_output();
    tokio::pin!(out);
    let mut timed_out = false;
    let deadline = tokio::time::sleep(req.timeout);
    tokio::pin!(deadline);
    let output = loop {
        tokio::select! {
            o = &mut out => break o?,
            _ = &mut deadline, if !timed_out => {
                timed_out = true;
                tracing::info!(container = %req.container_id, "probe timed out; killing the container");
                rt.kill(&req.container_id).await;
            }
        }
    };
    let line = String::from_utf8_lossy(&output.stdout);
    let res: ShimResult = serde_json::from_str(line.trim()).with_context(|| {
        format!(
            "shim answered {:?} (stderr {:?})",
            line.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    Ok((res, timed_out))
}
