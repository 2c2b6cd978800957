//! The `oci-runtime` runner: boots Linux images with runc (or crun).
//!
//! Layers are unpacked into `<dir>/bundle/rootfs` within the job's unpack caps, their owners
//! shifted into the worker's unprivileged id range, and a runtime-spec `config.json` is
//! written (new user, pid, mount, ipc, uts and network namespaces, image root mapped to
//! `id_map_base`; memory, pids and CPU limits; moby's seccomp profile; no new privileges;
//! the image's user, environment and checked working directory; the probe or the image's
//! entrypoint and command). The bundle directory is 0700 and owned by the mapped root, so no
//! other host user can reach the image's files (its setuid binaries included). The container
//! runs under a `berth-verifier shim` process with the timeout enforced here. Whatever
//! happens, the container is killed and deleted and the run directory removed by the worker;
//! `sweep` clears what a killed worker left.

use crate::runner::{ms, tail, Outcome, RunRequest, Runner};
use crate::shim::ShimResult;
use crate::unpack;
use anyhow::{Context, Result};
use berth_oci::platform::Isolation;
use berth_oci::worker_protocol::{JobState, Timings};
use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, SpecBuilder, UserBuilder,
};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The sandbox's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// First host uid/gid of the range image ids are mapped to (image root = this id).
    pub id_map_base: u32,
    /// Size of the range.
    pub id_map_size: u32,
    /// Memory limit of the container (MiB; swap included).
    pub memory_limit_mb: u64,
    /// Most processes/threads at once.
    pub pids_limit: i64,
    /// CPUs (CFS quota).
    pub cpus: f64,
    /// Mount the rootfs read-only.
    pub readonly_rootfs: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            id_map_base: 0x6000_0000,
            id_map_size: 65536,
            memory_limit_mb: 1024,
            pids_limit: 512,
            cpus: 1.0,
            readonly_rootfs: false,
        }
    }
}

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
    /// Limits and id mapping.
    pub sandbox: Sandbox,
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

/// Shifts the owner of every file under `root` (itself included) into the mapped range: image
/// uid `u` becomes `base + u` (ids outside the range become the range's nobody, 65534).
/// Never follows a symlink (`lchown`; modes are re-applied only to what `lstat` says is not a
/// link); setuid/setgid bits, which a chown clears, are restored. Hard links are shifted once.
pub fn shift_owners(root: &Path, base: u32, size: u32) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let map = |id: u32| -> u32 {
        let id = if id < size {
            id
        } else {
            65534.min(size.saturating_sub(1))
        };
        base.saturating_add(id)
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
        let is_dir = m.is_dir() && !m.file_type().is_symlink();
        if is_dir {
            for e in std::fs::read_dir(&p).with_context(|| format!("{}", p.display()))? {
                stack.push(e?.path());
            }
        }
        if !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        std::os::unix::fs::lchown(&p, Some(map(m.uid())), Some(map(m.gid())))
            .with_context(|| format!("chown {}", p.display()))?;
        if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode() & 0o7777))
                .with_context(|| format!("chmod {}", p.display()))?;
        }
    }
    Ok(())
}

/// Runtime mounts over the rootfs: a working directory there would be the host's (the
/// CVE-2024-21626 pattern: `/proc/self/fd/<n>` is a host directory runc left open).
const RUNTIME_MOUNTS: [&str; 3] = ["proc", "sys", "dev"];

/// Checks the image's `WorkingDir` before runc sees it: absolute, no `..`, and, with the
/// image's symlinks resolved inside the rootfs (as if chrooted), neither leaving the rootfs nor
/// landing on a runtime mount, and a directory when it exists. Returns the path to use.
pub fn check_working_dir(rootfs: &Path, dir: &str) -> Result<String> {
    if dir.is_empty() {
        return Ok("/".into());
    }
    if !dir.starts_with('/') {
        anyhow::bail!("WorkingDir {dir:?} is not absolute");
    }
    if dir.contains('\0') {
        anyhow::bail!("WorkingDir {dir:?} has a NUL");
    }
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    for c in Path::new(dir).components().rev() {
        match c {
            Component::Normal(n) => todo.push(n.to_owned()),
            Component::ParentDir => anyhow::bail!("WorkingDir {dir:?} has a `..` component"),
            _ => {}
        }
    }
    // Resolve, chroot style, following at most 40 links.
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        if c == "." {
            continue;
        }
        resolved.push(c);
        let host: PathBuf = std::iter::once(rootfs.as_os_str().to_owned())
            .chain(resolved.iter().cloned())
            .collect();
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    anyhow::bail!("WorkingDir {dir:?}: too many symlinks");
                }
                let target = std::fs::read_link(&host)?;
                resolved.pop();
                if target.is_absolute() {
                    resolved.clear();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => todo.push(n.to_owned()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(m) if !m.is_dir() => {
                anyhow::bail!("WorkingDir {dir:?} is not a directory in the image")
            }
            Ok(_) => {}
            // Missing: the runtime creates it (and whatever follows is plain names).
            Err(_) => {}
        }
    }
    if let Some(first) = resolved.first() {
        if RUNTIME_MOUNTS.iter().any(|m| first == *m) {
            anyhow::bail!(
                "WorkingDir {dir:?} resolves to /{} (a runtime mount, not the image's); refused",
                resolved
                    .iter()
                    .map(|s| s.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            );
        }
    }
    let mut out = String::new();
    for c in &resolved {
        out.push('/');
        out.push_str(&c.to_string_lossy());
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Writes `config.json` for the request into `bundle`.
pub fn write_spec(bundle: &Path, req: &RunRequest, sb: &Sandbox) -> Result<()> {
    let rootfs = bundle.join("rootfs");
    let (uid, gid) = resolve_user(&rootfs, &req.user)?;
    if uid >= sb.id_map_size || gid >= sb.id_map_size {
        anyhow::bail!(
            "User {:?} ({uid}:{gid}) is outside the {} ids mapped into the container",
            req.user,
            sb.id_map_size
        );
    }
    let mut env = req.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let cwd = check_working_dir(&rootfs, &req.working_dir)?;
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
    let mut v = serde_json::to_value(&spec)?;
    v["root"]["readonly"] = sb.readonly_rootfs.into();
    // The cgroup hierarchy is not the container's business.
    if let Some(m) = v["mounts"].as_array_mut() {
        m.retain(|m| m["destination"] != "/sys/fs/cgroup");
    }
    let linux = &mut v["linux"];
    linux["namespaces"]
        .as_array_mut()
        .context("namespaces")?
        .push(serde_json::json!({"type": "user"}));
    let mapping =
        serde_json::json!([{"containerID": 0, "hostID": sb.id_map_base, "size": sb.id_map_size}]);
    linux["uidMappings"] = mapping.clone();
    linux["gidMappings"] = mapping;
    let mem = sb.memory_limit_mb.saturating_mul(1 << 20);
    let period: u64 = 100_000;
    linux["resources"] = serde_json::json!({
        "memory": {"limit": mem, "swap": mem},
        "pids": {"limit": sb.pids_limit},
        "cpu": {"period": period, "quota": ((sb.cpus * period as f64) as i64).max(1000)},
    });
    linux["seccomp"] = crate::seccomp::profile();
    let f = std::fs::File::create(bundle.join("config.json")).context("writing config.json")?;
    serde_json::to_writer_pretty(f, &v).context("writing config.json")?;
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
        // The bundle: 0700, created fresh (never through a planted link); the job directory
        // above it only traversable.
        let (bundle, rootfs) = match make_bundle(&req.dir) {
            Ok(x) => x,
            Err(e) => return Outcome::error(format!("creating the bundle: {e:#}")),
        };
        // Unpack (blocking work off the runtime's threads), within the job's caps.
        let t = Instant::now();
        let layers = req.image.layers.clone();
        let rf = rootfs.clone();
        let budget = unpack::Budget::new(req.limits);
        let unpacked = tokio::task::spawn_blocking(move || -> Result<()> {
            for l in &layers {
                let c = unpack::compression(&l.media_type)?;
                unpack::apply_layer(&rf, &l.path, c, &budget)
                    .with_context(|| format!("layer {}", l.digest))?;
            }
            Ok(())
        })
        .await;
        timings.unpack_ms = ms(t.elapsed());
        match unpacked {
            Ok(Ok(())) => {}
            Ok(Err(e)) if unpack::is_disk_full(&e) => {
                // The worker's disk, not the image: retried.
                return Outcome {
                    timings,
                    ..Outcome::error(format!(
                        "unpacking the layers: the worker ran out of space: {e:#}"
                    ))
                };
            }
            Ok(Err(e)) => {
                // A layer that cannot be applied (or expands beyond the caps) is the image's
                // fault.
                let message = match e.chain().find_map(|c| c.downcast_ref::<unpack::TooBig>()) {
                    Some(t) => format!("{t}"),
                    None => format!("unpacking the layers failed: {e:#}"),
                };
                return Outcome {
                    status: JobState::Failed,
                    exit_code: None,
                    message,
                    log_tail: String::new(),
                    timings,
                };
            }
            Err(e) => return Outcome::error(format!("unpack task: {e}")),
        }
        let sb = self.sandbox.clone();
        let (b2, rf2) = (bundle.clone(), rootfs.clone());
        let shifted = tokio::task::spawn_blocking(move || -> Result<()> {
            shift_owners(&rf2, sb.id_map_base, sb.id_map_size)?;
            std::os::unix::fs::lchown(&b2, Some(sb.id_map_base), Some(sb.id_map_base))?;
            Ok(())
        })
        .await;
        match shifted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Outcome::error(format!("shifting file owners: {e:#}")),
            Err(e) => return Outcome::error(format!("chown task: {e}")),
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
        if let Err(e) = write_spec(&bundle, &req, &self.sandbox) {
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
        // The runtime state directory: private to the worker (created if missing, refused if
        // someone else could have planted state there for runc to act on).
        let parent = self.state_dir.parent().unwrap_or(work_dir);
        let name = self
            .state_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runtime-state".into());
        crate::workdir::ensure_private(parent, &name)?;
        // Containers a killed worker left in its runtime state directory.
        {
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

/// Creates `<dir>/bundle` (0700) and `<dir>/bundle/rootfs` fresh, and makes `dir` traversable
/// (0711) for the container's mapped root.
fn make_bundle(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(dir)?;
    if m.file_type().is_symlink() || !m.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    let bundle = crate::workdir::create_private(dir, "bundle", 0o700)?;
    let rootfs = crate::workdir::create_private(&bundle, "rootfs", 0o755)?;
    Ok((bundle, rootfs))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_dirs_are_resolved_inside_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("srv/app")).unwrap();
        std::os::unix::fs::symlink("/srv", r.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../../proc/self/fd/7", r.join("srv/evil")).unwrap();
        std::os::unix::fs::symlink("/proc/self/cwd", r.join("app")).unwrap();
        std::fs::write(r.join("file"), b"x").unwrap();
        assert_eq!(check_working_dir(r, "").unwrap(), "/");
        assert_eq!(check_working_dir(r, "/data/app").unwrap(), "/srv/app");
        assert_eq!(
            check_working_dir(r, "/missing/dir").unwrap(),
            "/missing/dir"
        );
        for bad in [
            "/proc/self/fd/7",
            "/app",
            "/srv/evil",
            "/../etc",
            "rel",
            "/file",
        ] {
            assert!(check_working_dir(r, bad).is_err(), "{bad}");
        }
    }
}
