//! The verification gate: which checks a policy requires of a pushed manifest, the job queue
//! they become, the results that come back (stored, and attached to the image as referrers),
//! and the gates that enforce them (protected tags on PUT, the optional pull gate).
//!
//! A check is one (variant manifest, isolation mode, host build). Linux variants get one
//! check, run with process isolation on a worker of their architecture. Windows variants get
//! one per isolation mode and host build the policy names; a pair that Microsoft's
//! compatibility rules say cannot run is recorded as `incompatible` at once and is not
//! required. Only real (not simulated) passes satisfy a gate. docs/VERIFY.md has the rest.

use super::{Registry, RegistryError, Result};
use berth_oci::image_config::ImageConfig;
use berth_oci::media_type as mt;
use berth_oci::platform::{self, ClientRule, Host, Isolation, Platform, Runnability};
use berth_oci::worker_protocol::{self as wire, build_of, isolation_str, JobState};
use berth_oci::{Digest, Manifest, ManifestKind, Reference, RepoPattern, Tag};
use berth_storage::meta::{JobRow, NewJob};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[verify]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// How long a claimed job stays a worker's without a heartbeat.
    pub lease_secs: u64,
    /// Attempts before a job that keeps failing for infrastructure reasons ends as `error`.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further attempt.
    pub retry_backoff_secs: u64,
    /// Policies; the first whose `repositories` match a repository applies to it.
    pub policies: Vec<VerifyPolicy>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            lease_secs: 60,
            max_attempts: 3,
            retry_backoff_secs: 10,
            policies: vec![],
        }
    }
}

fn both_isolations() -> Vec<Isolation> {
    vec![Isolation::Process, Isolation::HyperV]
}

fn default_timeout() -> u64 {
    300
}

/// What must pass for the repositories matching `repositories`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyPolicy {
    /// Name, shown with results.
    pub name: String,
    /// Repository patterns (`*` within a component, `**` across).
    pub repositories: Vec<RepoPattern>,
    /// Platforms to verify, `os/architecture[/variant]`; empty: every variant.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Isolation modes Windows variants must pass (Linux variants always run as processes).
    #[serde(default = "both_isolations")]
    pub isolation: Vec<Isolation>,
    /// Windows host builds the fleet runs (`10.0.20348`, `ltsc2022`, …); empty: the build of
    /// each variant's own os.version.
    #[serde(default)]
    pub windows_hosts: Vec<String>,
    /// Command run in Windows variants; unset: the image's entrypoint and command.
    #[serde(default)]
    pub probe_windows: Option<Vec<String>>,
    /// Command run in Linux variants; unset: the image's entrypoint and command.
    #[serde(default)]
    pub probe_linux: Option<Vec<String>>,
    /// How long the probe may run.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Tag patterns (`*` wildcards) that may only point at verified manifests.
    #[serde(default)]
    pub protected_tags: Vec<RepoPattern>,
    /// Refuse pulls by tag of manifests whose required checks have not passed.
    #[serde(default)]
    pub pull_gate: bool,
}

/// How deep nested indexes are followed when planning checks.
const MAX_INDEX_DEPTH: usize = 4;

/// The variants of a manifest, as [`Registry::variants_of`] finds them.
#[derive(Default)]
struct Variants {
    images: Vec<(Digest, Platform)>,
    /// (digest, platform when the index declares one, why it cannot be checked)
    unverifiable: Vec<(Digest, Option<Platform>, String)>,
}

/// The checks a policy requires of a manifest.
#[derive(Debug, Default)]
pub struct Plan {
    /// One job per check (incompatible pairs already final).
    pub jobs: Vec<NewJob>,
    /// Children that must be verified but cannot be: they keep the manifest unverified.
    pub unverifiable: Vec<(String, Platform, String)>,
}

/// Compiled verification settings.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    cfg: VerifyConfig,
    /// Host builds of each policy, normalised to `10.0.NNNNN`.
    hosts: Vec<Vec<String>>,
}

impl Policies {
    /// Checks and compiles the section.
    pub fn new(cfg: VerifyConfig) -> anyhow::Result<Self> {
        if cfg.lease_secs < 5 {
            anyhow::bail!("lease_secs must be at least 5");
        }
        if cfg.max_attempts == 0 {
            anyhow::bail!("max_attempts must be at least 1");
        }
        let mut hosts = Vec::new();
        for p in &cfg.policies {
            if p.name.is_empty() {
                anyhow::bail!("a policy needs a name");
            }
            if p.repositories.is_empty() {
                anyhow::bail!("policy {:?}: repositories is empty", p.name);
            }
            if p.isolation.is_empty() {
                anyhow::bail!("policy {:?}: isolation is empty", p.name);
            }
            if p.timeout_secs == 0 {
                anyhow::bail!("policy {:?}: timeout_secs must be > 0", p.name);
            }
            for pl in &p.platforms {
                parse_platform_filter(pl).ok_or_else(|| {
                    anyhow::anyhow!(
                        "policy {:?}: platform {pl:?} is not os/architecture[/variant]",
                        p.name
                    )
                })?;
            }
            for probe in [&p.probe_windows, &p.probe_linux].into_iter().flatten() {
                if probe.is_empty() || probe[0].is_empty() {
                    anyhow::bail!("policy {:?}: a probe needs a command", p.name);
                }
            }
            let mut hs = Vec::new();
            for h in &p.windows_hosts {
                hs.push(normalize_host(h).ok_or_else(|| {
                    anyhow::anyhow!(
                        "policy {:?}: windows host {h:?} is neither a build (10.0.20348) nor a name (ltsc2022)",
                        p.name
                    )
                })?);
            }
            hosts.push(hs);
        }
        Ok(Self { cfg, hosts })
    }

    /// The settings.
    pub fn config(&self) -> &VerifyConfig {
        &self.cfg
    }

    /// The policy for a repository, with its host builds.
    pub fn for_repo(&self, repo: &str) -> Option<(&VerifyPolicy, &[String])> {
        self.cfg
            .policies
            .iter()
            .zip(&self.hosts)
            .find(|(p, _)| p.repositories.iter().any(|r| r.matches(repo)))
            .map(|(p, h)| (p, h.as_slice()))
    }
}

fn parse_platform_filter(s: &str) -> Option<(String, String, Option<String>)> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => {
            Some((os.to_string(), arch.to_string(), None))
        }
        [os, arch, var] if !os.is_empty() && !arch.is_empty() && !var.is_empty() => {
            Some((os.to_string(), arch.to_string(), Some(var.to_string())))
        }
        _ => None,
    }
}

/// `ltsc2022` → `10.0.20348`; `10.0.20348(.x)` → `10.0.20348`.
pub fn normalize_host(s: &str) -> Option<String> {
    if let Some(b) = platform::WindowsVersion::build_for_name(s) {
        return Some(format!("10.0.{b}"));
    }
    build_of(s)
}

fn platform_selected(policy: &VerifyPolicy, p: &Platform) -> bool {
    if policy.platforms.is_empty() {
        return true;
    }
    let n = p.normalized();
    policy.platforms.iter().any(|f| {
        let Some((os, arch, var)) = parse_platform_filter(f) else {
            return false;
        };
        let want = Platform {
            os,
            architecture: arch,
            variant: var.clone(),
            os_version: None,
            os_features: vec![],
        }
        .normalized();
        want.os == n.os
            && want.architecture == n.architecture
            && (var.is_none() || want.variant == n.variant)
    })
}

/// One check a policy requires, with what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The variant manifest.
    pub digest: String,
    /// Its platform.
    pub platform: Platform,
    /// Isolation mode.
    pub isolation: Isolation,
    /// Host build it must pass on (Windows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_build: Option<String>,
    /// Whether the gate needs it (false for incompatible pairs).
    pub required: bool,
    /// `queued`, `running`, `passed`, … or `missing` when no job exists.
    pub state: String,
    /// Whether it satisfies the gate.
    pub satisfied: bool,
    /// The job, once there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    /// A result from a test double.
    pub simulated: bool,
    /// Probe exit code of the current run (absent while a re-queued check runs again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// While a re-queued check runs again: the exit code its previous run ended with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_exit_code: Option<i64>,
    /// Last message.
    pub message: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The referrer carrying the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// While a re-queued check runs again: how its previous run ended. A previous pass keeps
    /// satisfying the gate until the new result arrives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_state: Option<String>,
}

impl Check {
    /// One line for error messages and the CLI.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} {} {}",
            platform_str(&self.platform),
            isolation_str(self.isolation),
            self.host_build.as_deref().unwrap_or("-")
        );
        s.push_str(": ");
        s.push_str(&self.state);
        if let Some(l) = &self.last_state {
            s.push_str(&format!(" (last result: {l})"));
        }
        if self.simulated {
            s.push_str(" (simulated: does not count)");
        }
        if let Some(c) = self.exit_code {
            s.push_str(&format!(" (exit {c})"));
        }
        if let Some(c) = self.previous_exit_code {
            s.push_str(&format!(" (previous attempt: exit {c})"));
        }
        s
    }
}

/// `os/arch[/variant] os.version`.
pub fn platform_str(p: &Platform) -> String {
    let mut s = format!("{}/{}", p.os, p.architecture);
    if let Some(v) = &p.variant {
        s.push('/');
        s.push_str(v);
    }
    if let Some(v) = &p.os_version {
        s.push(' ');
        s.push_str(v);
    }
    s
}

/// The gate's view of a manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Repository.
    pub repository: String,
    /// Manifest digest (an index or an image).
    pub digest: Digest,
    /// Policy that applies (none: nothing is required).
    pub policy: Option<String>,
    /// Every check.
    pub checks: Vec<Check>,
    /// Required checks.
    pub required: usize,
    /// Required checks that passed for real.
    pub passed: usize,
    /// Required checks still queued or running (or missing).
    pub pending: usize,
    /// Required checks that ended without passing.
    pub failed: usize,
    /// No required check is pending.
    pub complete: bool,
    /// Every required check passed (and there is at least one).
    pub ok: bool,
}

impl Status {
    /// One line per required check that is not satisfied.
    pub fn missing(&self) -> Vec<String> {
        if self.required == 0 {
            return vec![format!(
                "no variant of {} is covered by policy {}",
                self.digest,
                self.policy.as_deref().unwrap_or("-")
            )];
        }
        self.checks
            .iter()
            .filter(|c| c.required && !c.satisfied)
            .map(Check::line)
            .collect()
    }
}

fn is_image_config(media_type: &str) -> bool {
    media_type == mt::OCI_CONFIG || media_type == mt::DOCKER_CONFIG
}

impl Registry {
    /// The verification policy of a repository.
    pub fn verify_policy(&self, repo: &str) -> Option<&VerifyPolicy> {
        self.settings.verify.for_repo(repo).map(|(p, _)| p)
    }

    /// Whether `tag` in `repo` is protected by a policy.
    pub fn is_protected(&self, repo: &str, tag: &str) -> bool {
        self.verify_policy(repo)
            .is_some_and(|p| p.protected_tags.iter().any(|t| t.matches(tag)))
    }

    /// The image variants of a manifest: itself (an image), or the image children of an index,
    /// nested indexes included (up to [`MAX_INDEX_DEPTH`]), each with its platform (from the
    /// index entry, else from its config, normalised). Children that are not images (their
    /// config is not an image config: signatures, SBOMs, verification results) are left out.
    /// Children that cannot be checked (absent from a sparse index, unreadable, nested too
    /// deep) are returned apart, so that the gate fails closed on them.
    async fn variants_of(&self, repo: &str, digest: &Digest, m: &Manifest) -> Result<Variants> {
        let mut out = Variants::default();
        match m.kind {
            ManifestKind::Image => {
                let Some(cfg) = m.config.as_ref().filter(|c| is_image_config(&c.media_type)) else {
                    return Ok(out);
                };
                match self
                    .read_small_blob(&cfg.digest)
                    .await?
                    .and_then(|b| ImageConfig::parse(&b).ok())
                {
                    Some(c) => out.images.push((digest.clone(), c.platform().normalized())),
                    None => out.unverifiable.push((
                        digest.clone(),
                        None,
                        "its image config is missing or unreadable".into(),
                    )),
                }
            }
            ManifestKind::Index => {
                Box::pin(self.index_variants(repo, m, 1, &mut out)).await?;
            }
        }
        Ok(out)
    }

    async fn index_variants(
        &self,
        repo: &str,
        m: &Manifest,
        depth: usize,
        out: &mut Variants,
    ) -> Result<()> {
        for d in &m.manifests {
            let declared = d
                .platform
                .clone()
                .and_then(|v| serde_json::from_value::<Platform>(v).ok())
                .map(|p| p.normalized());
            if out.images.iter().any(|(x, _)| x == &d.digest)
                || out.unverifiable.iter().any(|(x, _, _)| x == &d.digest)
            {
                continue;
            }
            let Some(child) = self.meta.manifest(repo, &d.digest).await? else {
                out.unverifiable.push((
                    d.digest.clone(),
                    declared,
                    "absent from the repository (sparse index): push it to verify it".into(),
                ));
                continue;
            };
            let Ok(cm) = Manifest::parse(&child.content, Some(&child.media_type)) else {
                out.unverifiable
                    .push((d.digest.clone(), declared, "unreadable manifest".into()));
                continue;
            };
            if cm.kind == ManifestKind::Index {
                if depth >= MAX_INDEX_DEPTH {
                    out.unverifiable.push((
                        d.digest.clone(),
                        declared,
                        format!("index nested more than {MAX_INDEX_DEPTH} deep"),
                    ));
                } else {
                    Box::pin(self.index_variants(repo, &cm, depth + 1, out)).await?;
                }
                continue;
            }
            if !cm
                .config
                .as_ref()
                .is_some_and(|c| is_image_config(&c.media_type))
            {
                continue;
            }
            let p = match declared {
                Some(p) => p,
                None => match self.image_of(&child).await? {
                    Some((_, Some(c))) => c.platform().normalized(),
                    _ => {
                        out.unverifiable.push((
                            d.digest.clone(),
                            None,
                            "no platform in the index and no readable image config".into(),
                        ));
                        continue;
                    }
                },
            };
            out.images.push((d.digest.clone(), p));
        }
        Ok(())
    }

    /// The checks the repository's policy requires of a manifest, as new jobs (incompatible
    /// pairs already final).
    pub async fn plan_checks(&self, repo: &str, digest: &Digest, m: &Manifest) -> Result<Plan> {
        let mut plan = Plan::default();
        let Some((policy, hosts)) = self.settings.verify.for_repo(repo) else {
            return Ok(plan);
        };
        let cfg = self.settings.verify.config();
        let index = (m.kind == ManifestKind::Index).then(|| digest.to_string());
        let variants = self.variants_of(repo, digest, m).await?;
        for (child, p, reason) in variants.unverifiable {
            // Fail closed: a child the policy may select (its platform is unknown, or
            // selected) and that cannot be checked keeps the manifest unverified.
            if p.as_ref().is_none_or(|p| platform_selected(policy, p)) {
                plan.unverifiable
                    .push((child.to_string(), p.unwrap_or_default(), reason));
            }
        }
        let jobs = &mut plan.jobs;
        for (child, p) in variants.images {
            if !platform_selected(policy, &p) {
                continue;
            }
            let base = NewJob {
                repository: repo.to_owned(),
                digest: child.to_string(),
                index_digest: index.clone(),
                platform: p.clone(),
                isolation: Isolation::Process,
                host_build: None,
                policy: policy.name.clone(),
                probe: None,
                timeout_secs: i64::try_from(policy.timeout_secs).unwrap_or(i64::MAX),
                max_attempts: i64::from(cfg.max_attempts),
                state: JobState::Queued,
                message: String::new(),
            };
            if !p.is_windows() {
                jobs.push(NewJob {
                    probe: policy.probe_linux.clone(),
                    ..base
                });
                continue;
            }
            let own = p.os_version.as_deref().and_then(build_of);
            let builds: Vec<Option<String>> = if hosts.is_empty() {
                vec![own]
            } else {
                hosts.iter().cloned().map(Some).collect()
            };
            for iso in &policy.isolation {
                for b in &builds {
                    let mut j = NewJob {
                        isolation: *iso,
                        host_build: b.clone(),
                        probe: policy.probe_windows.clone(),
                        ..base.clone()
                    };
                    if let Some(b) = b {
                        let host = Host {
                            platform: Platform::new("windows", p.architecture.clone())
                                .with_os_version(b.clone()),
                            isolation: *iso,
                            rule: ClientRule::Containerd,
                        };
                        let c = platform::runnable(&host, &p);
                        if c.verdict == Runnability::NotRunnable {
                            j.state = JobState::Incompatible;
                            j.message = c.reason;
                        }
                    }
                    jobs.push(j);
                }
            }
        }
        Ok(plan)
    }

    /// Plans and queues the checks of a stored manifest. `requeue` runs finished checks
    /// again (`berth verify <ref>`). Returns the ids of the jobs queued.
    pub async fn enqueue_verification(
        &self,
        repo: &str,
        digest: &Digest,
        requeue: bool,
    ) -> Result<Vec<i64>> {
        if self.settings.verify.for_repo(repo).is_none() {
            return Ok(vec![]);
        }
        let m = self.stored_manifest(repo, digest).await?;
        let jobs = self.plan_checks(repo, digest, &m).await?.jobs;
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        let queued = self.meta.enqueue_jobs(&jobs, requeue).await?;
        // Pairs found incompatible on the spot get their referrer now.
        for j in &jobs {
            if j.state != JobState::Incompatible {
                continue;
            }
            for row in self.meta.jobs_for_digest(repo, &j.digest).await? {
                if row.state == JobState::Incompatible && row.result_digest.is_none() {
                    if let Err(e) = self.record_result(&row).await {
                        tracing::warn!(job = row.id, error = %e, "could not attach the result");
                    }
                }
            }
        }
        if !queued.is_empty() {
            tracing::info!(repo.name = repo, manifest.digest = %digest, jobs = ?queued, "verification queued");
            self.verify_wake.notify_waiters();
        }
        Ok(queued)
    }

    /// A stored manifest of the repository, parsed.
    async fn stored_manifest(&self, repo: &str, digest: &Digest) -> Result<Manifest> {
        let stored = self
            .meta
            .manifest(repo, digest)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(digest.to_string()))?;
        Manifest::parse(&stored.content, Some(&stored.media_type))
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))
    }

    /// The gate's view of a manifest: every required check and its state.
    pub async fn verification_status(&self, repo: &str, digest: &Digest) -> Result<Status> {
        let m = self.stored_manifest(repo, digest).await?;
        self.status_of(repo, digest, &m).await
    }

    async fn status_of(&self, repo: &str, digest: &Digest, m: &Manifest) -> Result<Status> {
        let policy = self.verify_policy(repo).map(|p| p.name.clone());
        let Plan {
            jobs: planned,
            unverifiable,
        } = self.plan_checks(repo, digest, m).await?;
        let mut rows: BTreeMap<String, Vec<JobRow>> = BTreeMap::new();
        for j in &planned {
            if !rows.contains_key(&j.digest) {
                let r = self.meta.jobs_for_digest(repo, &j.digest).await?;
                rows.insert(j.digest.clone(), r);
            }
        }
        let mut checks = Vec::new();
        for j in planned {
            let row = rows.get(&j.digest).and_then(|rs| {
                rs.iter()
                    .find(|r| r.isolation == j.isolation && r.host_build == j.host_build)
            });
            let required = j.state != JobState::Incompatible;
            let check = match row {
                Some(r) => {
                    let rerun = matches!(r.state, JobState::Queued | JobState::Running);
                    Check {
                        digest: j.digest.clone(),
                        platform: j.platform.clone(),
                        isolation: j.isolation,
                        host_build: j.host_build.clone(),
                        required,
                        state: r.state.as_str().to_owned(),
                        // A re-queued pass counts until the new result replaces it.
                        satisfied: (r.state == JobState::Passed
                            || (matches!(r.state, JobState::Queued | JobState::Running)
                                && r.last_state == Some(JobState::Passed)))
                            && !r.simulated,
                        last_state: if matches!(r.state, JobState::Queued | JobState::Running) {
                            r.last_state.map(|s| s.as_str().to_owned())
                        } else {
                            None
                        },
                        job: Some(r.id),
                        simulated: r.simulated,
                        // A re-queued check's exit code is its previous run's: never shown as current.
                        exit_code: r.exit_code.filter(|_| !rerun),
                        previous_exit_code: r.exit_code.filter(|_| rerun),
                        message: r.message.clone(),
                        attempts: r.attempts,
                        result: r.result_digest.clone(),
                    }
                }
                None => Check {
                    digest: j.digest.clone(),
                    platform: j.platform.clone(),
                    isolation: j.isolation,
                    host_build: j.host_build.clone(),
                    required,
                    state: if required {
                        "missing".into()
                    } else {
                        "incompatible".into()
                    },
                    satisfied: false,
                    job: None,
                    simulated: false,
                    exit_code: None,
                    previous_exit_code: None,
                    message: j.message.clone(),
                    attempts: 0,
                    result: None,
                    last_state: None,
                },
            };
            checks.push(check);
        }
        for (d, p, reason) in unverifiable {
            checks.push(Check {
                digest: d,
                platform: p,
                isolation: Isolation::Process,
                host_build: None,
                required: true,
                state: "unverifiable".into(),
                satisfied: false,
                job: None,
                simulated: false,
                exit_code: None,
                previous_exit_code: None,
                message: reason,
                attempts: 0,
                result: None,
                last_state: None,
            });
        }
        let req: Vec<&Check> = checks.iter().filter(|c| c.required).collect();
        let passed = req.iter().filter(|c| c.satisfied).count();
        let is_pending = |c: &&&Check| matches!(c.state.as_str(), "queued" | "running" | "missing");
        let pending = req.iter().filter(is_pending).count();
        let required = req.len();
        // A re-queued pass is both satisfied and pending: failed counts neither.
        let failed = req
            .iter()
            .filter(|c| !c.satisfied && !is_pending(c))
            .count();
        Ok(Status {
            repository: repo.to_owned(),
            digest: digest.clone(),
            policy,
            complete: pending == 0,
            ok: required > 0 && passed == required,
            required,
            passed,
            pending,
            failed,
            checks,
        })
    }

    /// The protected-tag gate of a manifest PUT: Ok when no tag is protected or every
    /// required check passed; otherwise the missing checks.
    pub(super) async fn tag_gate(
        &self,
        repo: &str,
        digest: &Digest,
        m: &Manifest,
        tags: &[String],
    ) -> Result<Option<RegistryError>> {
        let protected: Vec<&String> = tags.iter().filter(|t| self.is_protected(repo, t)).collect();
        if protected.is_empty() {
            return Ok(None);
        }
        let st = self.status_of(repo, digest, m).await?;
        if st.ok {
            return Ok(None);
        }
        let names: Vec<&str> = protected.iter().map(|t| t.as_str()).collect();
        Ok(Some(RegistryError::Unverified {
            what: format!(
                "tag {} of {repo} may only point at a verified manifest; {digest}",
                names.join(", ")
            ),
            missing: st.missing(),
        }))
    }

    /// The pull gate: refuses a pull by tag of a manifest whose required checks have not
    /// passed, where the repository's policy asks for it.
    pub(super) async fn pull_gate(&self, repo: &str, tag: &Tag, digest: &Digest) -> Result<()> {
        if !self.verify_policy(repo).is_some_and(|p| p.pull_gate) {
            return Ok(());
        }
        let st = self.verification_status(repo, digest).await?;
        if st.ok {
            return Ok(());
        }
        Err(RegistryError::Unverified {
            what: format!("pull of {repo}:{tag} ({digest})"),
            missing: st.missing(),
        })
    }

    /// Attaches a finished job's result to its variant manifest as a referrer artifact and
    /// records its digest on the job.
    pub async fn record_result(&self, job: &JobRow) -> Result<Digest> {
        let subject_digest: Digest = job
            .digest
            .parse()
            .map_err(|e| RegistryError::ManifestInvalid(format!("job digest: {e}")))?;
        let subject = self
            .meta
            .manifest(&job.repository, &subject_digest)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(job.digest.clone()))?;
        let timings: wire::Timings = job
            .timings
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let host: wire::HostInfo = job
            .host
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let finished = job.finished_at.unwrap_or(job.updated_at);
        let doc = wire::ResultDocument {
            job: job.id,
            repository: job.repository.clone(),
            digest: job.digest.clone(),
            platform: job.platform.clone(),
            isolation: job.isolation,
            host_build: job.host_build.clone(),
            status: job.state,
            exit_code: job.exit_code,
            message: job.message.clone(),
            log_tail: job.log_tail.clone(),
            timings,
            runner: job.runner.clone().unwrap_or_default(),
            host,
            simulated: job.simulated,
            attempt: u32::try_from(job.attempts).unwrap_or(0),
            finished_at: rfc3339(finished),
        };
        let body = serde_json::to_vec_pretty(&doc)
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let size = body.len();
        let blob = self.put_blob_bytes(&job.repository, body).await?;
        self.put_small_blob(&job.repository, b"{}").await?;
        let mut ann = BTreeMap::new();
        ann.insert(wire::annotation::STATUS, job.state.as_str().to_owned());
        ann.insert(
            wire::annotation::ISOLATION,
            isolation_str(job.isolation).to_owned(),
        );
        ann.insert(wire::annotation::PLATFORM, platform_str(&job.platform));
        if let Some(b) = &job.host_build {
            ann.insert(wire::annotation::HOST_BUILD, b.clone());
        }
        ann.insert(
            wire::annotation::RUNNER,
            job.runner.clone().unwrap_or_else(|| "policy".into()),
        );
        ann.insert(wire::annotation::SIMULATED, job.simulated.to_string());
        ann.insert("org.opencontainers.image.created", rfc3339(finished));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt::OCI_MANIFEST,
            "artifactType": wire::ARTIFACT_TYPE,
            "config": {"mediaType": mt::OCI_EMPTY, "digest": mt::EMPTY_JSON_DIGEST, "size": 2},
            "layers": [{"mediaType": wire::RESULT_MEDIA_TYPE, "digest": blob, "size": size}],
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": subject.content.len(),
            },
            "annotations": ann,
        });
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let digest = Digest::sha256(&bytes);
        self.put_manifest(
            &job.repository,
            &Reference::Digest(digest.clone()),
            Some(mt::OCI_MANIFEST),
            &bytes,
            &[],
            super::PutMode::CLIENT,
        )
        .await?;
        self.meta
            .set_job_result_digest(job.id, digest.as_str())
            .await?;
        Ok(digest)
    }
}

/// Seconds since the epoch as RFC 3339 UTC (also the token endpoint's `issued_at`).
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("ltsc2022").as_deref(), Some("10.0.20348"));
        assert_eq!(
            normalize_host("10.0.17763.5936").as_deref(),
            Some("10.0.17763")
        );
        assert_eq!(normalize_host("bogus"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn platform_filters() {
        let p: VerifyPolicy = toml::from_str(
            "name = \"x\"\nrepositories = [\"**\"]\nplatforms = [\"linux/amd64\", \"linux/arm/v7\"]",
        )
        .unwrap();
        assert!(platform_selected(&p, &Platform::new("linux", "amd64")));
        assert!(platform_selected(&p, &Platform::new("linux", "x86_64")));
        assert!(!platform_selected(&p, &Platform::new("linux", "arm64")));
        assert!(platform_selected(
            &p,
            &Platform::new("linux", "arm").with_variant("v7")
        ));
        assert!(!platform_selected(
            &p,
            &Platform::new("linux", "arm").with_variant("v6")
        ));
        assert_eq!(p.isolation, both_isolations());
    }
}
