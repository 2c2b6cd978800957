//! The worker loop: register, then in `concurrency` slots claim a job, keep its lease alive,
//! pull the variant (every digest checked), check the host can run it, boot it with the
//! runner for its OS, report, and remove the run directory, whatever happened.

use crate::client::{Beat, Client};
use crate::runner::{Image, Layer, Outcome, RunRequest, Runner};
use anyhow::{anyhow, bail, Context, Result};
use berth_oci::manifest::is_index_media_type;
use berth_oci::platform::{self, Candidate, ClientRule, Host, Isolation, Platform, Runnability};
use berth_oci::worker_protocol::{Assignment, HostInfo, JobState, Report, WorkerRegistration};
use berth_oci::{Digest, Manifest, ManifestKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The worker's settings (TOML file, then flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Registry URL.
    pub registry: String,
    /// Robot or user name (`robot$verifier`).
    pub username: Option<String>,
    /// Its secret (prefer `password_file`).
    pub password: Option<String>,
    /// A file holding the secret.
    pub password_file: Option<PathBuf>,
    /// Worker name, unique per robot (default: the host name).
    pub name: String,
    /// Scratch space; every job gets a `job-…` folder, removed afterwards.
    pub work_dir: PathBuf,
    /// Jobs at once.
    pub concurrency: usize,
    /// Runners: `oci-runtime` (Linux), `hcs` (Windows), `hcs-double` (test double).
    pub runners: Vec<String>,
    /// The OCI runtime binary for `oci-runtime`.
    pub runtime: PathBuf,
    /// Labels shown with the worker.
    pub labels: BTreeMap<String, String>,
    /// How long one claim waits for a job (long-poll), at most 60.
    pub wait_secs: u64,
    /// Override of the detected host os.version (for the HCS test double on Linux).
    pub os_version: Option<String>,
    /// Most bytes of file content one job may unpack (all layers).
    pub max_unpack_bytes: u64,
    /// Most tar entries one job may unpack (all layers).
    pub max_unpack_entries: u64,
    /// Most bytes one job may download (config and layers).
    pub max_pull_bytes: u64,
    /// A blob download that sends nothing for this long fails.
    pub blob_stall_secs: u64,
    /// oci-runtime: first host uid/gid the image's ids are mapped to.
    pub id_map_base: u32,
    /// oci-runtime: how many ids are mapped.
    pub id_map_size: u32,
    /// oci-runtime: memory limit of a container, MiB.
    pub memory_limit_mb: u64,
    /// oci-runtime: most processes and threads of a container.
    pub pids_limit: i64,
    /// oci-runtime: CPUs of a container.
    pub cpus: f64,
    /// oci-runtime: mount the image's rootfs read-only.
    pub readonly_rootfs: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registry: "http://127.0.0.1:5000".into(),
            username: None,
            password: None,
            password_file: None,
            name: String::new(),
            work_dir: crate::workdir::default_dir(),
            concurrency: 1,
            runners: vec![if cfg!(windows) {
                "hcs".into()
            } else {
                "oci-runtime".into()
            }],
            runtime: PathBuf::from("runc"),
            labels: BTreeMap::new(),
            wait_secs: 30,
            os_version: None,
            max_unpack_bytes: 16 << 30,
            max_unpack_entries: 1_000_000,
            max_pull_bytes: 16 << 30,
            blob_stall_secs: 60,
            id_map_base: 0x6000_0000,
            id_map_size: 65536,
            memory_limit_mb: 1024,
            pids_limit: 512,
            cpus: 1.0,
            readonly_rootfs: false,
        }
    }
}

impl Config {
    /// The secret, from `password` or `password_file`.
    pub fn secret(&self) -> Result<Option<String>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        match &self.password_file {
            Some(f) => Ok(Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            )),
            None => Ok(None),
        }
    }
}

/// The architecture name OCI uses for this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// A running worker.
pub struct Worker {
    client: Client,
    cfg: Config,
    id: String,
    platform: Platform,
    runners: Vec<Arc<dyn Runner>>,
    /// Set by [`Worker::stop`]; an idle slot's long-poll ends on it at once.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Worker {
    /// Registers with the registry and sweeps what earlier runs left.
    pub async fn start(
        cfg: Config,
        platform: Platform,
        runners: Vec<Arc<dyn Runner>>,
    ) -> Result<Arc<Self>> {
        if runners.is_empty() {
            bail!("no runner configured");
        }
        if cfg.concurrency == 0 {
            bail!("concurrency must be at least 1");
        }
        // The oci-runtime container runs as an unprivileged host uid that must reach its bundle.
        let traversable = runners.iter().any(|r| r.name() == "oci-runtime");
        crate::workdir::prepare(&cfg.work_dir, traversable)?;
        for r in &runners {
            r.sweep(&cfg.work_dir)
                .await
                .with_context(|| format!("cleaning up after earlier runs of {}", r.name()))?;
        }
        let client = Client::new(&cfg.registry, cfg.username.clone(), cfg.secret()?)?
            .with_blob_stall(Duration::from_secs(cfg.blob_stall_secs.max(1)));
        let mut isolation: Vec<Isolation> = Vec::new();
        for r in &runners {
            for i in r.isolation() {
                if !isolation.contains(&i) {
                    isolation.push(i);
                }
            }
        }
        let reg = WorkerRegistration {
            name: cfg.name.clone(),
            platform: platform.clone(),
            isolation,
            runners: runners.iter().map(|r| r.name().to_owned()).collect(),
            labels: cfg.labels.clone(),
            simulated: runners.iter().any(|r| r.simulated()),
        };
        let mut delay = Duration::from_secs(1);
        let w = loop {
            match client.register(&reg).await {
                Ok(w) => break w,
                Err(e) if delay < Duration::from_secs(30) => {
                    tracing::warn!(error = format!("{e:#}"), "registration failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(worker = %w.id, name = %cfg.name, platform = ?platform, runners = ?reg.runners, "registered");
        println!("registered as worker {}", w.id);
        Ok(Arc::new(Self {
            client,
            cfg,
            id: w.id,
            platform,
            runners,
            stopping: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Asks the slots to stop claiming; jobs in flight finish.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Runs the claim loops until [`Worker::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut slots = Vec::new();
        for slot in 0..self.cfg.concurrency {
            let w = self.clone();
            slots.push(tokio::spawn(async move { w.slot(slot).await }));
        }
        for s in slots {
            let _ = s.await;
        }
    }

    async fn slot(&self, slot: usize) {
        let mut backoff = Duration::from_secs(1);
        let mut stop = self.stopping.subscribe();
        while !*stop.borrow() {
            // A stop ends the long-poll at once. A job the registry assigned in that instant
            // is never started here; its lease runs out and it goes to the next claim.
            let claimed = tokio::select! {
                r = self.client.claim(&self.id, self.cfg.wait_secs.min(60)) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match claimed {
                Ok(Some(a)) => {
                    backoff = Duration::from_secs(1);
                    self.job(slot, a).await;
                }
                Ok(None) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(slot, error = format!("{e:#}"), "claim failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn job(&self, slot: usize, a: Assignment) {
        let started = Instant::now();
        tracing::info!(slot, job = a.id, repo = %a.repository, digest = %a.digest, isolation = ?a.isolation, attempt = a.attempt, "job claimed");
        let dir = self.cfg.work_dir.join(format!(
            "job-{}-{}-{}",
            a.id,
            a.attempt,
            uuid::Uuid::new_v4().simple()
        ));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Keep the lease alive while the job runs.
        let lost = Arc::new(AtomicBool::new(false));
        let beat = {
            let client_every = Duration::from_secs((a.lease_secs / 3).max(1));
            let lost = lost.clone();
            let id = a.id;
            let lease = a.lease.clone();
            let client = &self.client;
            async move {
                loop {
                    tokio::time::sleep(client_every).await;
                    match client.heartbeat(id, &lease, "running").await {
                        Ok(Beat::Kept) => {}
                        Ok(Beat::Lost) => {
                            tracing::warn!(
                                job = id,
                                "lease lost: another worker may have the job now"
                            );
                            lost.store(true, Ordering::SeqCst);
                            // The run goes on to its end (its own timeout bounds it), so
                            // the runner cleans up; its report is then skipped.
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            tracing::warn!(job = id, error = format!("{e:#}"), "heartbeat failed")
                        }
                    }
                }
            }
        };
        let work = async {
            // Created fresh, never through a planted symlink.
            if let Err(e) = crate::workdir::create_private(&self.cfg.work_dir, &name, 0o700)
                .and_then(|d| crate::workdir::create_private(&d, "blobs", 0o700))
            {
                return Outcome::error(format!("creating the run directory: {e:#}"));
            }
            self.work(&a, &dir).await
        };
        let outcome = tokio::select! {
            o = work => o,
            _ = beat => unreachable!("the heartbeat loop never ends"),
        };
        // Whatever happened, the run directory goes.
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the run directory");
            }
        }
        if lost.load(Ordering::SeqCst) {
            tracing::warn!(
                job = a.id,
                "not reporting: the lease was lost during the run"
            );
            return;
        }
        let runner = self
            .runner_for(&a.platform.os, a.isolation)
            .map(|r| r.name().to_owned())
            .unwrap_or_else(|| "none".into());
        let report = Report {
            lease: a.lease.clone(),
            status: outcome.status,
            exit_code: outcome.exit_code,
            message: outcome.message.clone(),
            log_tail: outcome.log_tail.clone(),
            timings: outcome.timings.clone(),
            runner,
            host: HostInfo {
                worker: self.id.clone(),
                name: self.cfg.name.clone(),
                platform: self.platform.clone(),
            },
            simulated: self.runners.iter().any(|r| r.simulated()),
        };
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=5 {
            match self.client.report(a.id, &report).await {
                Ok(true) => {
                    tracing::info!(job = a.id, status = outcome.status.as_str(), exit_code = ?outcome.exit_code, secs = started.elapsed().as_secs_f32(), "reported");
                    return;
                }
                Ok(false) => {
                    tracing::warn!(job = a.id, "result refused: the lease was lost");
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        job = a.id,
                        attempt,
                        error = format!("{e:#}"),
                        "report failed"
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    fn runner_for(&self, os: &str, iso: Isolation) -> Option<&Arc<dyn Runner>> {
        self.runners
            .iter()
            .find(|r| r.os() == os && r.isolation().contains(&iso))
    }

    /// Pull, check, run. Never fails: errors become outcomes.
    async fn work(&self, a: &Assignment, dir: &std::path::Path) -> Outcome {
        let Some(runner) = self.runner_for(&a.platform.os, a.isolation).cloned() else {
            return Outcome::error(format!(
                "this worker has no runner for {} with {:?} isolation",
                a.platform.os, a.isolation
            ));
        };
        // Would this host run the variant at all? (Windows: Microsoft's compatibility rules.)
        if self.platform.is_windows() && a.platform.is_windows() {
            let host = Host {
                platform: self.platform.clone(),
                isolation: a.isolation,
                rule: ClientRule::Containerd,
            };
            let c = platform::runnable(&host, &a.platform);
            if c.verdict == Runnability::NotRunnable {
                return Outcome {
                    status: JobState::Incompatible,
                    exit_code: None,
                    message: c.reason,
                    log_tail: String::new(),
                    timings: Default::default(),
                };
            }
        }
        let t = Instant::now();
        let pulled = self.pull(a, dir).await;
        let pull_ms = crate::runner::ms(t.elapsed());
        let (image, note) = match pulled {
            Ok(x) => x,
            Err(e) => {
                let mut o = Outcome::error(format!("pull failed: {e:#}"));
                if let Some(t) = e.chain().find_map(|c| c.downcast_ref::<PullTooBig>()) {
                    // The image's size, not the host: not retried.
                    o.status = JobState::Failed;
                    o.message = t.to_string();
                }
                o.timings.pull_ms = pull_ms;
                return o;
            }
        };
        let cfg = image.config.clone();
        let strings = |k: &str| -> Vec<String> {
            cfg[k]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let command = match &a.probe {
            Some(p) => p.clone(),
            None => {
                let mut c = strings("Entrypoint");
                c.extend(strings("Cmd"));
                c
            }
        };
        let req = RunRequest {
            job_id: a.id,
            container_id: format!("berth-{}-{}-{}", self.id, a.id, a.attempt),
            image,
            platform: a.platform.clone(),
            isolation: a.isolation,
            command,
            env: strings("Env"),
            working_dir: cfg["WorkingDir"].as_str().unwrap_or("").to_owned(),
            user: cfg["User"].as_str().unwrap_or("").to_owned(),
            timeout: Duration::from_secs(a.timeout_secs.max(1)),
            dir: dir.to_path_buf(),
            limits: crate::unpack::Limits {
                max_bytes: self.cfg.max_unpack_bytes,
                max_entries: self.cfg.max_unpack_entries,
            },
        };
        let mut o = runner.run(req).await;
        o.timings.pull_ms = pull_ms;
        if let Some(n) = note {
            o.message = format!("{} ({n})", o.message);
        }
        o
    }

    /// Fetches the variant: manifest, config and layers, each checked against its digest.
    /// Returns the image and a note when this host would pick another variant of the index.
    async fn pull(&self, a: &Assignment, dir: &std::path::Path) -> Result<(Image, Option<String>)> {
        let repo = &a.repository;
        let mut digest: Digest = a.digest.parse().map_err(|e| anyhow!("job digest: {e}"))?;
        let mut note = None;
        let host = Host {
            platform: if self.platform.is_windows() {
                self.platform.clone()
            } else {
                let p = Platform::new(a.platform.os.clone(), self.platform.architecture.clone());
                match &a.platform.variant {
                    Some(v) => p.with_variant(v.clone()),
                    None => p,
                }
            },
            isolation: a.isolation,
            rule: ClientRule::Containerd,
        };
        // The variant a host of this platform would pull from the index, by the same matcher
        // as `berth resolve`.
        if let Some(idx) = &a.index_digest {
            let idx: Digest = idx.parse().map_err(|e| anyhow!("index digest: {e}"))?;
            let (bytes, mt) = self.client.manifest(repo, &idx).await?;
            let m = Manifest::parse(&bytes, Some(&mt)).map_err(|e| anyhow!("index: {e}"))?;
            let r = platform::resolve(&candidates(&m), &host);
            match r.chosen_digest() {
                Some(d) if d == digest.as_str() => {}
                Some(d) => {
                    note = Some(format!(
                        "a {} host pulling the index would get {d}",
                        platform_line(&host.platform)
                    ))
                }
                None => {
                    note = Some(format!(
                        "a {} host pulling the index would get nothing",
                        platform_line(&host.platform)
                    ))
                }
            }
        }
        let (bytes, mt) = self.client.manifest(repo, &digest).await?;
        let mut m = Manifest::parse(&bytes, Some(&mt)).map_err(|e| anyhow!("manifest: {e}"))?;
        if m.kind == ManifestKind::Index || is_index_media_type(&mt) {
            let r = platform::resolve(&candidates(&m), &host);
            let d = r
                .chosen_digest()
                .ok_or_else(|| anyhow!("no variant of {digest} for this host"))?;
            digest = d.parse().map_err(|e| anyhow!("{e}"))?;
            let (b, t) = self.client.manifest(repo, &digest).await?;
            m = Manifest::parse(&b, Some(&t)).map_err(|e| anyhow!("manifest: {e}"))?;
        }
        let cfg_desc = m
            .config
            .clone()
            .ok_or_else(|| anyhow!("manifest {digest} has no config"))?;
        let mut pulled = 0u64;
        let cap = self.cfg.max_pull_bytes;
        let mut take = |what: &Digest, size: u64| -> Result<()> {
            pulled = pulled.saturating_add(size);
            if pulled > cap {
                return Err(PullTooBig(format!(
                    "the image is larger than the worker's pull cap of {cap} bytes (at {what})"
                ))
                .into());
            }
            Ok(())
        };
        take(&cfg_desc.digest, cfg_desc.size as u64)?;
        let cfg_path = dir.join("blobs").join(cfg_desc.digest.hex());
        self.client
            .blob_to_file(repo, &cfg_desc.digest, cfg_desc.size as u64, &cfg_path)
            .await?;
        let cfg: serde_json::Value = serde_json::from_slice(&tokio::fs::read(&cfg_path).await?)
            .context("image config is not JSON")?;
        // The config must describe the platform the job is for.
        let os = cfg["os"].as_str().unwrap_or("");
        let arch = cfg["architecture"].as_str().unwrap_or("");
        if os != a.platform.os
            || Platform::new(os, arch).normalized().architecture
                != a.platform.normalized().architecture
        {
            bail!(
                "the image config says {os}/{arch}, the job {}/{}",
                a.platform.os,
                a.platform.architecture
            );
        }
        let mut layers = Vec::new();
        for l in &m.layers {
            if berth_oci::media_type::is_foreign_layer(&l.media_type) && l.urls.is_some() {
                bail!("foreign layer {} is not fetched by this worker", l.digest);
            }
            take(&l.digest, l.size as u64)?;
            let path = dir.join("blobs").join(l.digest.hex());
            let size = self
                .client
                .blob_to_file(repo, &l.digest, l.size as u64, &path)
                .await?;
            layers.push(Layer {
                digest: l.digest.to_string(),
                media_type: l.media_type.clone(),
                path,
                size,
            });
        }
        Ok((
            Image {
                digest: digest.to_string(),
                config: cfg
                    .get("config")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
                layers,
            },
            note,
        ))
    }
}

/// An image larger than the worker's pull cap (its descriptors say so before a byte of it is
/// downloaded).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PullTooBig(String);

fn platform_line(p: &Platform) -> String {
    let mut s = format!("{}/{}", p.os, p.architecture);
    if let Some(v) = &p.os_version {
        s.push(' ');
        s.push_str(v);
    }
    s
}

fn candidates(m: &Manifest) -> Vec<Candidate> {
    m.manifests
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let p: Platform = serde_json::from_value(d.platform.clone()?).ok()?;
            Some(Candidate {
                index: i,
                digest: d.digest.to_string(),
                platform: p,
            })
        })
        .collect()
}
