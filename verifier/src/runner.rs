//! What every runner does: boot one pulled image variant with one isolation mode, run the
//! probe with a timeout, report what happened, and leave nothing behind.
//!
//! Runners: `oci_runtime` (Linux: runc or crun), `hcs` (Windows: the Host Compute Service;
//! its logic is cross-platform and runs on Linux against the HCS test double).

use berth_oci::platform::{Isolation, Platform};
use berth_oci::worker_protocol::{JobState, Timings};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One downloaded layer, digest already checked.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Layer digest.
    pub digest: String,
    /// Media type (`…tar`, `…tar+gzip`; zstd is refused).
    pub media_type: String,
    /// The blob on disk.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
}

/// A pulled image variant.
#[derive(Debug, Clone)]
pub struct Image {
    /// Manifest digest.
    pub digest: String,
    /// Image config (the `config` object of the image config JSON: Entrypoint, Cmd, Env…).
    pub config: serde_json::Value,
    /// Layers, base first.
    pub layers: Vec<Layer>,
}

/// What a runner is asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Job id (for names and logs).
    pub job_id: i64,
    /// Unique container name, e.g. `berth-w1-42-1`.
    pub container_id: String,
    /// The image.
    pub image: Image,
    /// The variant's platform.
    pub platform: Platform,
    /// Isolation mode.
    pub isolation: Isolation,
    /// The command to run: the probe, or the image's entrypoint and command.
    pub command: Vec<String>,
    /// Environment (`KEY=value`).
    pub env: Vec<String>,
    /// Working directory inside the container (empty: the default).
    pub working_dir: String,
    /// User (`uid[:gid]` or a name; empty: the default).
    pub user: String,
    /// How long the probe may run.
    pub timeout: Duration,
    /// Scratch directory of this run; the worker removes it afterwards.
    pub dir: PathBuf,
    /// Caps on what the run may unpack (all layers together).
    pub limits: crate::unpack::Limits,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Passed`, `Failed`, `Incompatible` or `Error` (infrastructure; retried).
    pub status: JobState,
    /// Probe exit code, when it ran.
    pub exit_code: Option<i64>,
    /// One line for people.
    pub message: String,
    /// End of the output.
    pub log_tail: String,
    /// Phase durations (`unpack`, `create`, `start`, `exit`; the worker adds `pull`).
    pub timings: Timings,
}

impl Outcome {
    /// An infrastructure error (the job is retried).
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            status: JobState::Error,
            exit_code: None,
            message: message.into(),
            log_tail: String::new(),
            timings: Timings::default(),
        }
    }
}

/// A way to boot images.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    /// Name reported with results (`oci-runtime`, `hcs`, `hcs-double`).
    fn name(&self) -> &'static str;
    /// The OS whose images it boots (`linux`, `windows`).
    fn os(&self) -> &'static str;
    /// Isolation modes it offers.
    fn isolation(&self) -> Vec<Isolation>;
    /// True for a test double: results are marked simulated and never satisfy a gate.
    fn simulated(&self) -> bool {
        false
    }
    /// Boots the image and runs the command. Never panics on bad images; cleans up what it
    /// created before returning, whatever happened.
    async fn run(&self, req: RunRequest) -> Outcome;
    /// Removes what earlier runs under `work_dir` left behind (after a crash or kill).
    async fn sweep(&self, work_dir: &Path) -> anyhow::Result<()>;
}

/// The last `max` bytes of `buf` as text, cut at a character boundary.
pub fn tail(buf: &[u8], max: usize) -> String {
    let start = buf.len().saturating_sub(max);
    let s = String::from_utf8_lossy(&buf[start..]);
    s.trim_start_matches('\u{FFFD}').to_owned()
}

/// Milliseconds of a duration, for [`Timings`].
pub fn ms(d: Duration) -> Option<u64> {
    Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail(b"hello world", 5), "world");
        assert_eq!(tail(b"hi", 5), "hi");
        // A multi-byte character cut in half is dropped, not shown as garbage.
        let s = "aé".as_bytes();
        assert_eq!(tail(s, 1), "");
    }
}
