//! berth's own verification-worker protocol: the types exchanged between the registry and
//! `berth-verifier` workers, i.e. the JSON documents of `/berth/v1/verify/…` and the referrer
//! artifact that carries a result.
//!
//! This is berth's protocol, not part of any OCI spec (neither the Distribution nor the Image
//! spec defines verification workers); it lives in this crate only because both sides need the
//! same pure types, so the wire format has one definition. docs/VERIFY.md describes the protocol.

use crate::platform::{Isolation, Platform};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `artifactType` of the referrer that carries one verification result.
pub const ARTIFACT_TYPE: &str = "application/vnd.berth.verification.v1+json";
/// Media type of the result document inside that referrer (its only layer).
pub const RESULT_MEDIA_TYPE: &str = "application/vnd.berth.verification.result.v1+json";
/// Annotation keys set on the referrer manifest.
pub mod annotation {
    /// `passed`, `failed` or `incompatible`.
    pub const STATUS: &str = "dev.berth.verification.status";
    /// `process` or `hyperv`.
    pub const ISOLATION: &str = "dev.berth.verification.isolation";
    /// The host build the check ran on (major.minor.build), empty for Linux.
    pub const HOST_BUILD: &str = "dev.berth.verification.host-build";
    /// The runner, e.g. `oci-runtime`, `hcs`.
    pub const RUNNER: &str = "dev.berth.verification.runner";
    /// `true` when a test double produced the result.
    pub const SIMULATED: &str = "dev.berth.verification.simulated";
    /// The platform of the verified variant, e.g. `windows/amd64:10.0.20348.2527`.
    pub const PLATFORM: &str = "dev.berth.verification.platform";
}

/// Where a job stands. The first two are in progress; the rest are final except `error`
/// before its last attempt, which goes back to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (or for its retry time).
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// The probe ran and exited 0.
    Passed,
    /// The image did not boot or the probe failed: a fault of the image.
    Failed,
    /// The Windows compatibility rules say this host build cannot run this image with this
    /// isolation: not a fault of the image, and not required by a gate.
    Incompatible,
    /// The check could not be done (infrastructure), after every attempt.
    Error,
}

impl JobState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Passed => "passed",
            JobState::Failed => "failed",
            JobState::Incompatible => "incompatible",
            JobState::Error => "error",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "passed" => JobState::Passed,
            "failed" => JobState::Failed,
            "incompatible" => JobState::Incompatible,
            "error" => JobState::Error,
            _ => return None,
        })
    }

    /// Whether no more work happens on the job.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// Wire name of an isolation mode.
pub fn isolation_str(i: Isolation) -> &'static str {
    match i {
        Isolation::Process => "process",
        Isolation::HyperV => "hyperv",
    }
}

/// Parses an isolation mode's wire name.
pub fn parse_isolation(s: &str) -> Option<Isolation> {
    match s {
        "process" => Some(Isolation::Process),
        "hyperv" => Some(Isolation::HyperV),
        _ => None,
    }
}

/// `POST /berth/v1/verify/workers`: a worker introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    /// A name for people (host name by default).
    pub name: String,
    /// The host platform: os, architecture, variant, and on Windows the full os.version
    /// (major.minor.build.UBR).
    pub platform: Platform,
    /// Isolation modes this host can run.
    pub isolation: Vec<Isolation>,
    /// Runner names, e.g. `oci-runtime`, `hcs`.
    pub runners: Vec<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// True when the runner is a test double: its results never satisfy a gate.
    #[serde(default)]
    pub simulated: bool,
}

/// A registered worker, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// Id to use in claims.
    pub id: String,
    /// What it registered.
    #[serde(flatten)]
    pub registration: WorkerRegistration,
    /// Unix seconds.
    pub registered_at: i64,
    /// Unix seconds of the last claim, heartbeat or report.
    pub last_seen: i64,
}

/// `POST /berth/v1/verify/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The worker's id.
    pub worker: String,
    /// Long-poll: seconds to wait for a job before answering 204 (at most 60).
    #[serde(default)]
    pub wait_secs: u64,
}

/// A claimed job: what to pull and how to run it. Answer of a successful claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Job id.
    pub id: i64,
    /// Repository to pull from.
    pub repository: String,
    /// The variant's manifest digest.
    pub digest: String,
    /// The index it was pushed in, if any; the worker re-resolves its variant from it with
    /// the platform matcher and checks it finds `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// The variant's platform.
    pub platform: Platform,
    /// Isolation to run with.
    pub isolation: Isolation,
    /// Host build the policy asked for (major.minor.build), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_build: Option<String>,
    /// The command to run; `None` runs the image's own entrypoint and command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Vec<String>>,
    /// Seconds the probe may run.
    pub timeout_secs: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Lease token: heartbeats and the report must carry it.
    pub lease: String,
    /// Seconds the lease lasts without a heartbeat.
    pub lease_secs: u64,
}

/// `POST /berth/v1/verify/jobs/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The lease token from the assignment.
    pub lease: String,
    /// Optional progress text (`pulling`, `running`…).
    #[serde(default)]
    pub phase: String,
}

/// Phase durations of one run, in milliseconds. A phase that did not happen is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Manifest, config and layers downloaded and checked.
    pub pull_ms: Option<u64>,
    /// Layers unpacked or imported.
    pub unpack_ms: Option<u64>,
    /// Container (or compute system) created.
    pub create_ms: Option<u64>,
    /// Started until the probe process ran.
    pub start_ms: Option<u64>,
    /// Probe process ran until it exited (or was killed).
    pub exit_ms: Option<u64>,
}

/// The host a result came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Worker id.
    pub worker: String,
    /// Worker name.
    pub name: String,
    /// Host platform (with os.version on Windows).
    pub platform: Platform,
}

/// `POST /berth/v1/verify/jobs/{id}/result`: what happened. Repeating the same report is
/// harmless (idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The lease token.
    pub lease: String,
    /// `passed`, `failed`, `incompatible` or `error` (retried).
    pub status: JobState,
    /// The probe's exit code, when it ran.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// One line for people, e.g. `timed out after 30 s`, `HCS error 0xc0370101: …`.
    #[serde(default)]
    pub message: String,
    /// The end of the probe's output (and the runtime's errors), at most 8 KiB.
    #[serde(default)]
    pub log_tail: String,
    /// Phase durations.
    #[serde(default)]
    pub timings: Timings,
    /// Runner name.
    pub runner: String,
    /// Where it ran.
    pub host: HostInfo,
    /// Produced by a test double.
    #[serde(default)]
    pub simulated: bool,
}

/// The result document stored as the referrer's layer: the job and its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultDocument {
    /// Job id in the registry that ran it.
    pub job: i64,
    /// Repository.
    pub repository: String,
    /// Verified manifest.
    pub digest: String,
    /// Its platform.
    pub platform: Platform,
    /// Isolation.
    pub isolation: Isolation,
    /// Host build asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_build: Option<String>,
    /// Final state.
    pub status: JobState,
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Message.
    pub message: String,
    /// Log tail.
    pub log_tail: String,
    /// Timings.
    pub timings: Timings,
    /// Runner.
    pub runner: String,
    /// Host.
    pub host: HostInfo,
    /// Simulated.
    pub simulated: bool,
    /// Attempt number.
    pub attempt: u32,
    /// RFC 3339 time of the report.
    pub finished_at: String,
}

/// The first three components of a Windows version (`10.0.20348.2527` → `10.0.20348`), the
/// form host builds take in policies and jobs.
pub fn build_of(os_version: &str) -> Option<String> {
    let parts: Vec<&str> = os_version.split('.').collect();
    if parts.len() < 3 || parts[..3].iter().any(|p| p.parse::<u32>().is_err()) {
        return None;
    }
    Some(parts[..3].join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_of_keeps_three_components() {
        assert_eq!(build_of("10.0.20348.2527").as_deref(), Some("10.0.20348"));
        assert_eq!(build_of("10.0.17763").as_deref(), Some("10.0.17763"));
        assert_eq!(build_of("10.0"), None);
        assert_eq!(build_of("10.x.1"), None);
    }

    #[test]
    fn states_round_trip() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Passed,
            JobState::Failed,
            JobState::Incompatible,
            JobState::Error,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            let j = serde_json::to_string(&s).expect("serialize");
            assert_eq!(j, format!("\"{}\"", s.as_str()));
        }
        assert!(JobState::Incompatible.is_final());
        assert!(!JobState::Running.is_final());
    }

    #[test]
    fn assignment_wire_format() {
        let a = Assignment {
            id: 7,
            repository: "team/app".into(),
            digest: "sha256:ab".into(),
            index_digest: None,
            platform: Platform::new("windows", "amd64").with_os_version("10.0.20348.2527"),
            isolation: Isolation::HyperV,
            host_build: Some("10.0.20348".into()),
            probe: Some(vec!["cmd".into(), "/c".into(), "ver".into()]),
            timeout_secs: 30,
            attempt: 1,
            lease: "l".into(),
            lease_secs: 60,
        };
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(v["isolation"], "hyperv");
        assert_eq!(v["platform"]["os.version"], "10.0.20348.2527");
        assert!(v.get("index_digest").is_none());
        let back: Assignment = serde_json::from_value(v).expect("parse");
        assert_eq!(back, a);
    }
}
