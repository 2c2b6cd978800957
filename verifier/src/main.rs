//! `berth-verifier`: claims verification jobs from a berth registry and boots the images.
//!
//!   berth-verifier run --registry http://berth:5000 --username 'robot$verifier' \
//!       --password-file /etc/berth/verifier.secret --work-dir /var/lib/berth-verifier
//!   berth-verifier host          # the platform and runners this machine would register

use anyhow::{bail, Context, Result};
use berth_oci::platform::Platform;
use berth_verifier::runner::Runner;
use berth_verifier::worker::{host_arch, Config, Worker};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "berth-verifier",
    version,
    about = "Boots candidate images for a berth registry's verification gate"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Registry URL.
    #[arg(long)]
    registry: Option<String>,
    /// Robot or user name.
    #[arg(long)]
    username: Option<String>,
    /// Secret (prefer --password-file or BERTH_VERIFIER_PASSWORD).
    #[arg(long, env = "BERTH_VERIFIER_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// File holding the secret.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Worker name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Scratch directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Jobs at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Runner (repeatable): oci-runtime, hcs, hcs-double.
    #[arg(long = "runner")]
    runners: Vec<String>,
    /// OCI runtime binary (runc or crun).
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Long-poll seconds per claim.
    #[arg(long)]
    wait_secs: Option<u64>,
    /// Host os.version to register (the HCS test double only).
    #[arg(long)]
    os_version: Option<String>,
    /// Most bytes of file content one job may unpack, all layers together (default 16 GiB).
    #[arg(long)]
    max_unpack_bytes: Option<u64>,
    /// Most tar entries one job may unpack (default 1000000).
    #[arg(long)]
    max_unpack_entries: Option<u64>,
    /// Most bytes one job may download (default 16 GiB).
    #[arg(long)]
    max_pull_bytes: Option<u64>,
    /// Seconds a blob download may send nothing before it fails (default 60).
    #[arg(long)]
    blob_stall_secs: Option<u64>,
    /// oci-runtime: first host uid/gid image ids are mapped to (default 0x60000000).
    #[arg(long, value_parser = parse_u32)]
    id_map_base: Option<u32>,
    /// oci-runtime: how many ids are mapped (default 65536).
    #[arg(long)]
    id_map_size: Option<u32>,
    /// oci-runtime: memory limit of a container in MiB, swap included (default 1024).
    #[arg(long)]
    memory_limit_mb: Option<u64>,
    /// oci-runtime: most processes and threads in a container (default 512).
    #[arg(long)]
    pids_limit: Option<i64>,
    /// oci-runtime: CPUs a container may use (default 1).
    #[arg(long)]
    cpus: Option<f64>,
    /// oci-runtime: mount the image's root filesystem read-only.
    #[arg(long)]
    readonly_rootfs: bool,
}

/// A number, decimal or `0x` hex.
fn parse_u32(s: &str) -> std::result::Result<u32, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Register and work until SIGINT/SIGTERM (a second signal stops at once).
    Run(Box<RunArgs>),
    /// Print the host platform and the runners this machine offers.
    Host(Box<RunArgs>),
    /// Internal: run one container under the OCI runtime (started by the worker).
    #[cfg(target_os = "linux")]
    #[command(hide = true)]
    Shim(berth_verifier::shim::ShimArgs),
}

fn load(a: &RunArgs) -> Result<Config> {
    let mut cfg = match &a.config {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", f.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = &a.registry {
        cfg.registry = v.clone();
    }
    if let Some(v) = &a.username {
        cfg.username = Some(v.clone());
    }
    if let Some(v) = &a.password {
        cfg.password = Some(v.clone());
    }
    if let Some(v) = &a.password_file {
        cfg.password_file = Some(v.clone());
    }
    if let Some(v) = &a.name {
        cfg.name = v.clone();
    }
    if let Some(v) = &a.work_dir {
        cfg.work_dir = v.clone();
    }
    if let Some(v) = a.concurrency {
        cfg.concurrency = v;
    }
    if !a.runners.is_empty() {
        cfg.runners = a.runners.clone();
    }
    if let Some(v) = &a.runtime {
        cfg.runtime = v.clone();
    }
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label {l:?} is not KEY=VALUE"))?;
        cfg.labels.insert(k.to_owned(), v.to_owned());
    }
    if let Some(v) = a.wait_secs {
        cfg.wait_secs = v;
    }
    if let Some(v) = &a.os_version {
        cfg.os_version = Some(v.clone());
    }
    macro_rules! set {
        ($($f:ident),*) => {$(if let Some(v) = a.$f { cfg.$f = v; })*};
    }
    set!(
        max_unpack_bytes,
        max_unpack_entries,
        max_pull_bytes,
        blob_stall_secs,
        id_map_base,
        id_map_size,
        memory_limit_mb,
        pids_limit,
        cpus
    );
    if a.readonly_rootfs {
        cfg.readonly_rootfs = true;
    }
    if cfg.id_map_base == 0 || cfg.id_map_size == 0 {
        bail!("id_map_base and id_map_size must be non-zero (image root must not be host root)");
    }
    if cfg.id_map_base.checked_add(cfg.id_map_size).is_none() {
        bail!("id_map_base + id_map_size overflows the uid space");
    }
    if cfg.cpus.is_nan() || cfg.cpus <= 0.0 || cfg.memory_limit_mb == 0 || cfg.pids_limit <= 0 {
        bail!("cpus, memory_limit_mb and pids_limit must be positive");
    }
    if cfg.name.is_empty() {
        cfg.name = hostname();
    }
    cfg.work_dir = std::path::absolute(&cfg.work_dir)?;
    Ok(cfg)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "verifier".into())
}

/// The runners named in the configuration, and the platform the worker registers.
fn runners(cfg: &Config) -> Result<(Vec<Arc<dyn Runner>>, Platform)> {
    let mut out: Vec<Arc<dyn Runner>> = Vec::new();
    let mut platform = Platform::new(std::env::consts::OS, host_arch());
    for name in &cfg.runners {
        match name.as_str() {
            #[cfg(target_os = "linux")]
            "oci-runtime" => {
                let runtime = which(&cfg.runtime)
                    .with_context(|| format!("OCI runtime {} not found", cfg.runtime.display()))?;
                out.push(Arc::new(berth_verifier::oci_runtime::OciRuntime {
                    runtime,
                    state_dir: cfg.work_dir.join("runtime-state"),
                    shim_exe: std::env::current_exe()?,
                    sandbox: berth_verifier::oci_runtime::Sandbox {
                        id_map_base: cfg.id_map_base,
                        id_map_size: cfg.id_map_size,
                        memory_limit_mb: cfg.memory_limit_mb,
                        pids_limit: cfg.pids_limit,
                        cpus: cfg.cpus,
                        readonly_rootfs: cfg.readonly_rootfs,
                    },
                }));
            }
            // The HCS test double: runs no container, results are marked simulated and never
            // satisfy a gate. For exercising the worker, the protocol and the HCS call
            // sequence on hosts without Windows containers.
            "hcs-double" => {
                if cfg.os_version.is_none() {
                    bail!("runner hcs-double needs os_version (the simulated host build, e.g. 10.0.20348.2527)");
                }
                out.push(Arc::new(berth_verifier::hcs::double_runner(Arc::new(
                    berth_verifier::hcs::HcsDouble::new(),
                ))));
            }
            #[cfg(windows)]
            "hcs" => {
                platform = berth_verifier::hcs::host_platform();
                out.push(Arc::new(berth_verifier::hcs::real_runner()));
            }
            other => bail!(
                "unknown runner {other:?} (this build offers: {})",
                available().join(", ")
            ),
        }
    }
    let oses: std::collections::BTreeSet<&str> = out.iter().map(|r| r.os()).collect();
    if oses.len() > 1 {
        bail!("one worker boots images of one OS; these runners need {oses:?}");
    }
    if let Some(os) = oses.into_iter().next() {
        if os != platform.os {
            platform = Platform::new(os, host_arch());
        }
    }
    if let Some(v) = &cfg.os_version {
        platform = platform.with_os_version(v.clone());
    }
    Ok((out, platform))
}

fn available() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(target_os = "linux") {
        v.push("oci-runtime");
    }
    if cfg!(windows) {
        v.push("hcs");
    }
    v.push("hcs-double");
    v
}

#[cfg(target_os = "linux")]
fn which(p: &std::path::Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.exists().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(p))
            .find(|c| c.is_file())
    })
}

async fn run(cfg: Config) -> Result<()> {
    let (runners, platform) = runners(&cfg)?;
    let worker = Worker::start(cfg, platform, runners).await?;
    let w = worker.clone();
    let mut work = tokio::spawn(async move { w.run().await });
    tokio::select! {
        _ = &mut work => return Ok(()),
        _ = shutdown_signal() => {}
    }
    tracing::info!("stopping: jobs in flight finish first (signal again to stop now)");
    worker.stop();
    tokio::select! {
        _ = work => {}
        _ = shutdown_signal() => tracing::warn!("stopping now; the next start cleans up"),
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        #[cfg(target_os = "linux")]
        Cmd::Shim(a) => return ExitCode::from(berth_verifier::shim::main(a) as u8),
        Cmd::Host(a) => {
            return match load(&a).and_then(|c| runners(&c)) {
                Ok((r, p)) => {
                    let names: Vec<&str> = r.iter().map(|r| r.name()).collect();
                    println!(
                        "{}",
                        serde_json::json!({"platform": p, "runners": names, "isolation": r.iter().flat_map(|r| r.isolation()).collect::<Vec<_>>()})
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth-verifier: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Run(a) => a,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-verifier: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-verifier: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-verifier: {e:#}");
            ExitCode::FAILURE
        }
    }
}
