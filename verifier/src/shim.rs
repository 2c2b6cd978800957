//! `berth-verifier shim`: runs one container with runc (or crun) and reports how it went.
//!
//! The worker starts one shim per job. The shim is a child subreaper, so the container's init
//! process (which `runc create` leaves behind) becomes its child and its exit status can be
//! read with `waitpid`. When the worker dies (the shim is reparented), the shim kills and
//! deletes the container and exits. It prints one JSON line ([`ShimResult`]) on
//! stdout; the container's output goes to the log file.
//!
//! Single-threaded and blocking on purpose: reaping with `waitpid(-1)` must not race a
//! runtime's own child handling.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the shim reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimResult {
    /// `create`, `start` or `exit`: the last phase reached.
    pub phase: String,
    /// The container process's exit code (128 + signal when killed).
    pub exit_code: Option<i64>,
    /// A runtime failure, when the container did not run to the end.
    pub error: Option<String>,
    /// Milliseconds of `runc create`.
    pub create_ms: Option<u64>,
    /// Milliseconds of `runc start`.
    pub start_ms: Option<u64>,
    /// Milliseconds from start to exit.
    pub exit_ms: Option<u64>,
    /// Killed because the worker asked (timeout) or died.
    pub killed: bool,
}

/// Arguments of the shim.
#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// The OCI runtime binary.
    #[arg(long)]
    pub runtime: PathBuf,
    /// The runtime's state directory (`--root`).
    #[arg(long)]
    pub root: PathBuf,
    /// The bundle (config.json and rootfs).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Container id.
    #[arg(long)]
    pub id: String,
    /// File for the container's stdout and stderr.
    #[arg(long)]
    pub log: PathBuf,
}

fn ms(t: Instant) -> Option<u64> {
    Some(u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
}

fn runtime(a: &ShimArgs) -> Command {
    let mut c = Command::new(&a.runtime);
    c.arg("--root").arg(&a.root);
    c
}

fn quiet(mut c: Command) -> Option<String> {
    match c.stdin(Stdio::null()).stdout(Stdio::null()).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Some(e.to_string()),
    }
}

fn kill_and_delete(a: &ShimArgs) {
    let mut k = runtime(a);
    k.args(["kill", &a.id, "KILL"]);
    let _ = quiet(k);
    let mut d = runtime(a);
    d.args(["delete", "--force", &a.id]);
    let _ = quiet(d);
}

/// Runs the shim; returns the process exit code.
pub fn main(a: ShimArgs) -> i32 {
    let r = run(&a);
    kill_and_delete(&a);
    match serde_json::to_string(&r) {
        Ok(s) => println!("{s}"),
        Err(_) => return 1,
    }
    0
}

fn run(a: &ShimArgs) -> ShimResult {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{getppid, Pid};

    let mut out = ShimResult {
        phase: "create".into(),
        ..Default::default()
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        out.error = Some(format!("PR_SET_CHILD_SUBREAPER: {e}"));
        return out;
    }
    // The worker that started us; when it dies we are reparented and stop the container.
    let parent = getppid();
    if parent == Pid::from_raw(1) {
        out.error = Some("the worker is gone".into());
        return out;
    }
    let log = match File::create(&a.log) {
        Ok(f) => f,
        Err(e) => {
            out.error = Some(format!("creating {}: {e}", a.log.display()));
            return out;
        }
    };
    let pid_file = a.bundle.join("container.pid");
    let t = Instant::now();
    let mut create = runtime(a);
    create
        .arg("create")
        .arg("--bundle")
        .arg(&a.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&a.id)
        .stdin(Stdio::null());
    match (log.try_clone(), log.try_clone()) {
        (Ok(o), Ok(e)) => {
            create.stdout(o).stderr(e);
        }
        _ => {
            out.error = Some("duplicating the log file".into());
            return out;
        }
    }
    let status = match create.status() {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("running {}: {e}", a.runtime.display()));
            return out;
        }
    };
    out.create_ms = ms(t);
    if !status.success() {
        out.error = Some(format!("{} create failed ({status})", a.runtime.display()));
        return out;
    }
    let pid: i32 = match std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) => p,
        None => {
            out.error = Some("the runtime wrote no pid file".into());
            return out;
        }
    };
    out.phase = "start".into();
    let t = Instant::now();
    let mut start = runtime(a);
    start.args(["start", &a.id]).stdin(Stdio::null());
    // The runtime's complaints (a missing entrypoint…) belong in the log with the output.
    if let (Ok(o), Ok(e)) = (log.try_clone(), log.try_clone()) {
        start.stdout(o).stderr(e);
    }
    match start.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            out.error = Some(format!("{} start failed ({s})", a.runtime.display()));
            return out;
        }
        Err(e) => {
            out.error = Some(format!("running {}: {e}", a.runtime.display()));
            return out;
        }
    }
    out.start_ms = ms(t);
    out.phase = "exit".into();
    let t = Instant::now();
    let mut killing = false;
    loop {
        if !killing && getppid() != parent {
            // The worker died: nobody will read our report; stop the container now.
            killing = true;
            out.killed = true;
            let mut k = runtime(a);
            k.args(["kill", &a.id, "KILL"]);
            let _ = quiet(k);
        }
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => {
                out.exit_code = Some(i64::from(code));
                break;
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                out.exit_code = Some(128 + sig as i64);
                break;
            }
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => {} // another orphan (a runtime helper) reaped
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::ECHILD) => {
                out.error = Some("the container process vanished".into());
                break;
            }
            Err(e) => {
                out.error = Some(format!("waitpid: {e}"));
                break;
            }
        }
    }
    out.exit_ms = ms(t);
    out
}
