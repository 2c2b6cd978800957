//! The queue side of berth's verification-worker protocol (`berth_oci::worker_protocol`):
//! worker registration, claims with a lease (paging past jobs the worker may not take,
//! long-polling until one comes), heartbeats, and results (final ones stored and attached as
//! referrers, infrastructure errors re-queued with exponential backoff). Routes parse the
//! request, say what the caller may do, call these and answer; docs/VERIFY.md has the protocol.

use super::{Registry, RegistryError, Result};
use berth_oci::platform::Platform;
use berth_oci::worker_protocol::{
    build_of, Assignment, Heartbeat, JobState, Report, Worker, WorkerRegistration,
};
use berth_storage::meta::{ClaimFilter, Finish, Finished, JobRow, WorkerRow};
use sha2::Digest as _;
use std::time::{Duration, Instant};

/// Longest long-poll of a claim.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);
/// Claimable jobs read per query while a claim looks for one it may take.
const CLAIM_PAGE: i64 = 50;
/// How often a waiting claim looks again without a wake-up (other replicas, expired leases,
/// backoffs running out).
const POLL: Duration = Duration::from_secs(2);
/// Longest log tail kept of a report.
const MAX_LOG: usize = 16 << 10;
/// Longest message kept of a report, in characters.
const MAX_MESSAGE: usize = 2000;

/// A worker's id: stable for one (principal, name).
fn worker_id(principal: &str, name: &str) -> String {
    let h = sha2::Sha256::digest(format!("{principal}\0{name}").as_bytes());
    hex::encode(&h[..8])
}

fn registration_of(w: &WorkerRow) -> Result<WorkerRegistration> {
    serde_json::from_str(&w.registration)
        .map_err(|e| RegistryError::Corrupt(format!("stored worker registration: {e}")))
}

fn worker_of(w: &WorkerRow) -> Result<Worker> {
    Ok(Worker {
        id: w.id.clone(),
        registration: registration_of(w)?,
        registered_at: w.registered_at,
        last_seen: w.last_seen,
    })
}

fn claim_filter(reg: &WorkerRegistration) -> ClaimFilter {
    let p: Platform = reg.platform.normalized();
    ClaimFilter {
        host_build: if p.is_windows() {
            p.os_version.as_deref().and_then(build_of)
        } else {
            None
        },
        os: p.os,
        architecture: p.architecture,
        isolation: reg.isolation.clone(),
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// A registered worker, as a claim sees it.
pub struct ClaimingWorker {
    row: WorkerRow,
    registration: WorkerRegistration,
}

impl Registry {
    fn lease_secs(&self) -> u64 {
        self.settings.verify.config().lease_secs
    }

    /// Registers (or re-registers) a worker of `principal` (its subject).
    pub async fn register_worker(
        &self,
        principal: &str,
        reg: &WorkerRegistration,
    ) -> Result<Worker> {
        if reg.name.is_empty() || reg.name.len() > 128 {
            return Err(RegistryError::RequestInvalid(
                "worker name must be 1 to 128 characters".into(),
            ));
        }
        if reg.platform.os.is_empty() || reg.platform.architecture.is_empty() {
            return Err(RegistryError::RequestInvalid(
                "worker platform needs os and architecture".into(),
            ));
        }
        if reg.isolation.is_empty() {
            return Err(RegistryError::RequestInvalid(
                "worker offers no isolation mode".into(),
            ));
        }
        let id = worker_id(principal, &reg.name);
        let text = serde_json::to_string(reg).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        self.meta
            .put_worker(&id, principal, &text, &reg.platform, reg.simulated)
            .await?;
        let row = self
            .meta
            .worker(&id)
            .await?
            .ok_or_else(|| RegistryError::Corrupt(format!("worker {id} vanished")))?;
        tracing::info!(worker = %id, name = %reg.name, principal, platform = ?reg.platform, "verifier registered");
        worker_of(&row)
    }

    /// Registered workers: all of them, or only those of `principal`.
    pub async fn workers(&self, principal: Option<&str>) -> Result<Vec<Worker>> {
        self.meta
            .workers()
            .await?
            .iter()
            .filter(|w| principal.is_none_or(|p| w.principal == p))
            .map(worker_of)
            .collect()
    }

    /// The worker `id`, which must belong to `principal` (`None`: anyone's, auth is off).
    pub async fn own_worker(&self, id: &str, principal: Option<&str>) -> Result<ClaimingWorker> {
        let row = self
            .meta
            .worker(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("worker {id}")))?;
        if principal.is_some_and(|p| row.principal != p) {
            return Err(RegistryError::Forbidden(format!(
                "worker {id} belongs to another principal"
            )));
        }
        let registration = registration_of(&row)?;
        Ok(ClaimingWorker { row, registration })
    }

    /// The next job `worker` can run in a repository `may_verify` allows, waiting up to `wait`
    /// (at most [`MAX_CLAIM_WAIT`]) for one; `None` when none came.
    pub async fn claim_job(
        &self,
        worker: &ClaimingWorker,
        may_verify: impl Fn(&str) -> bool,
        wait: Duration,
    ) -> Result<Option<Assignment>> {
        let filter = claim_filter(&worker.registration);
        let lease_secs = self.lease_secs();
        let lease_secs_db = i64::try_from(lease_secs).unwrap_or(60);
        let deadline = Instant::now() + wait.min(MAX_CLAIM_WAIT);
        let worker_id = &worker.row.id;
        self.meta.touch_worker(worker_id).await?;
        loop {
            // Register interest before looking, so a job queued meanwhile wakes us.
            let woken = self.verify_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let expired = self.meta.expire_jobs().await?;
            if expired > 0 {
                tracing::warn!(
                    count = expired,
                    "verification jobs gave up: workers stopped sending heartbeats"
                );
            }
            // Page through every claimable job: jobs of repositories this worker may not
            // verify must not hide the ones it may.
            let mut after = 0;
            loop {
                let page = self
                    .meta
                    .claim_candidates(&filter, after, CLAIM_PAGE)
                    .await?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = *last;
                let full = page.len() as i64 == CLAIM_PAGE;
                for (id, repo) in page {
                    if !may_verify(&repo) {
                        continue;
                    }
                    let lease = uuid::Uuid::new_v4().to_string();
                    if let Some(job) = self
                        .meta
                        .try_claim(id, &lease, worker_id, lease_secs_db)
                        .await?
                    {
                        tracing::info!(job = id, worker = %worker_id, attempt = job.attempts, "verification job claimed");
                        return Ok(Some(Assignment {
                            id: job.id,
                            repository: job.repository.clone(),
                            digest: job.digest.clone(),
                            index_digest: job.index_digest.clone(),
                            platform: job.platform.clone(),
                            isolation: job.isolation,
                            host_build: job.host_build.clone(),
                            probe: job.probe.clone(),
                            timeout_secs: u64::try_from(job.timeout_secs).unwrap_or(0),
                            attempt: u32::try_from(job.attempts).unwrap_or(0),
                            lease,
                            lease_secs,
                        }));
                    }
                }
                if !full {
                    break;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = (deadline - now).min(POLL);
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// The job `id`, when `may_see` allows its repository: a job the caller may not see
    /// answers like a missing one (no existence oracle).
    pub async fn job(&self, id: i64, may_see: impl Fn(&str) -> bool) -> Result<JobRow> {
        self.meta
            .job(id)
            .await?
            .filter(|j| may_see(&j.repository))
            .ok_or_else(|| RegistryError::NotFound(format!("job {id}")))
    }

    /// Jobs, newest first, of repositories `may_see` allows.
    pub async fn jobs(
        &self,
        repo: Option<&str>,
        state: Option<JobState>,
        limit: i64,
        may_see: impl Fn(&str) -> bool,
    ) -> Result<Vec<JobRow>> {
        let rows = self.meta.list_jobs(repo, state, limit).await?;
        Ok(rows
            .into_iter()
            .filter(|j| may_see(&j.repository))
            .collect())
    }

    /// Extends the lease of a running job; returns the lease length in seconds.
    pub async fn heartbeat(&self, job: &JobRow, hb: &Heartbeat) -> Result<u64> {
        let secs = self.lease_secs();
        if !self
            .meta
            .heartbeat_job(job.id, &hb.lease, i64::try_from(secs).unwrap_or(60))
            .await?
        {
            return Err(RegistryError::LeaseLost(job.id));
        }
        if let Some(w) = &job.lease_worker {
            self.meta.touch_worker(w).await?;
        }
        tracing::debug!(job = job.id, phase = %hb.phase, "heartbeat");
        Ok(secs)
    }

    /// A worker's report on `job`. `passed`, `failed` and `incompatible` are final (and
    /// attached to the image as a referrer); `error` (infrastructure) is retried with
    /// exponential backoff. Repeating a report is harmless.
    pub async fn report(&self, job: &JobRow, rep: &Report) -> Result<JobRow> {
        let id = job.id;
        let log_tail = tail(&rep.log_tail, MAX_LOG);
        let message: String = rep.message.chars().take(MAX_MESSAGE).collect();
        let outcome = match rep.status {
            JobState::Passed | JobState::Failed | JobState::Incompatible => {
                let timings = serde_json::to_string(&rep.timings)
                    .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
                let host = serde_json::to_string(&rep.host)
                    .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
                let finish = Finish {
                    state: rep.status,
                    exit_code: rep.exit_code,
                    message: &message,
                    log_tail: &log_tail,
                    timings: &timings,
                    runner: &rep.runner,
                    host: &host,
                    simulated: rep.simulated || self.lease_holder_is_simulated(job).await?,
                };
                self.meta.finish_job(id, &rep.lease, &finish).await?
            }
            JobState::Error => {
                let base = self.settings.verify.config().retry_backoff_secs;
                let shift = u32::try_from(job.attempts.saturating_sub(1).clamp(0, 10)).unwrap_or(0);
                let backoff = i64::try_from(base.saturating_mul(1 << shift)).unwrap_or(i64::MAX);
                self.meta
                    .retry_job(id, &rep.lease, backoff, &message)
                    .await?
            }
            JobState::Queued | JobState::Running => {
                return Err(RegistryError::RequestInvalid(
                    "status must be passed, failed, incompatible or error".into(),
                ))
            }
        };
        match outcome {
            Finished::Stored(j) => {
                tracing::info!(job = id, state = j.state.as_str(), exit_code = ?j.exit_code, simulated = j.simulated, "verification result");
                if j.state.is_final() {
                    self.attach(j, false).await
                } else {
                    // Back in the queue: wake waiting workers once the backoff has passed
                    // (they poll anyway).
                    self.verify_wake.notify_waiters();
                    Ok(j)
                }
            }
            Finished::Repeated(j) => self.attach(j, true).await,
            Finished::LeaseLost => Err(RegistryError::LeaseLost(id)),
            Finished::Unknown => Err(RegistryError::NotFound(format!("job {id}"))),
        }
    }

    /// A report is simulated if the worker holding the lease registered as a test double.
    async fn lease_holder_is_simulated(&self, job: &JobRow) -> Result<bool> {
        let Some(w) = &job.lease_worker else {
            return Ok(false);
        };
        Ok(self
            .meta
            .worker(w)
            .await?
            .and_then(|w| registration_of(&w).ok())
            .is_some_and(|r| r.simulated))
    }

    /// Attaches a final result as a referrer. A repeated report (`repeat`) attaches only when
    /// the first attempt failed to (no result digest yet); a fresh result always does, since a
    /// re-queued job still carries its previous run's digest.
    async fn attach(&self, j: JobRow, repeat: bool) -> Result<JobRow> {
        if !j.state.is_final() || (repeat && j.result_digest.is_some()) {
            return Ok(j);
        }
        let id = j.id;
        match self.record_result(&j).await {
            Ok(_) => Ok(self.meta.job(id).await?.unwrap_or(j)),
            Err(e) => {
                tracing::warn!(job = id, error = %e, "could not attach the result as a referrer");
                Ok(j)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        // "é" is two bytes: a cut inside it moves forward.
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
        assert_eq!(tail("aéb", 3), "éb");
    }

    #[test]
    fn worker_ids_are_stable_per_principal_and_name() {
        assert_eq!(worker_id("robot:a", "w1"), worker_id("robot:a", "w1"));
        assert_ne!(worker_id("robot:a", "w1"), worker_id("robot:b", "w1"));
        assert_ne!(worker_id("robot:a", "w1"), worker_id("robot:a", "w2"));
        assert_eq!(worker_id("robot:a", "w1").len(), 16);
    }
}
