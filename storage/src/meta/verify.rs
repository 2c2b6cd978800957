//! Verification tables: registered workers and the job queue.
//!
//! Claiming is two portable statements: a read of a few candidates, then a conditional
//! `UPDATE … WHERE id = $1 AND <still claimable>` that only one claimer can win. SQLite
//! serialises writers; on PostgreSQL the candidate read becomes `SELECT … FOR UPDATE SKIP
//! LOCKED` so replicas do not queue behind each other. The caller filters candidates by
//! permission between the two steps.

use super::{Meta, WriteTx};
use crate::{now_secs, Error, Result};
use berth_oci::platform::{Isolation, Platform};
use berth_oci::worker_protocol::{isolation_str, parse_isolation, JobState};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// Id.
    pub id: i64,
    /// Repository.
    pub repository: String,
    /// Variant manifest digest.
    pub digest: String,
    /// Index it came with, if any.
    pub index_digest: Option<String>,
    /// Variant platform.
    pub platform: Platform,
    /// Isolation mode.
    pub isolation: Isolation,
    /// Required host build (major.minor.build), if any.
    pub host_build: Option<String>,
    /// Name of the policy that asked for it.
    pub policy: String,
    /// Probe command, `None` for the entrypoint.
    pub probe: Option<Vec<String>>,
    /// Probe timeout.
    pub timeout_secs: i64,
    /// State.
    pub state: JobState,
    /// Attempts started.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Not claimable before (unix seconds; retry backoff).
    pub not_before: i64,
    /// Current lease token.
    pub lease: Option<String>,
    /// Worker holding the lease.
    pub lease_worker: Option<String>,
    /// Lease expiry (unix seconds).
    pub lease_expires: Option<i64>,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Last change (unix seconds).
    pub updated_at: i64,
    /// Final result time.
    pub finished_at: Option<i64>,
    /// Probe exit code.
    pub exit_code: Option<i64>,
    /// Message.
    pub message: String,
    /// Log tail.
    pub log_tail: String,
    /// Timings (JSON).
    pub timings: Option<String>,
    /// Runner.
    pub runner: Option<String>,
    /// Host (JSON).
    pub host: Option<String>,
    /// From a test double.
    pub simulated: bool,
    /// Digest of the result referrer.
    pub result_digest: Option<String>,
    /// While a re-queued job runs again: the state its previous run ended in (with its
    /// `simulated`, `exit_code` and `result_digest`, which stay until the new result).
    pub last_state: Option<JobState>,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Repository.
    pub repository: String,
    /// Variant manifest digest.
    pub digest: String,
    /// Index it came with.
    pub index_digest: Option<String>,
    /// Variant platform.
    pub platform: Platform,
    /// Isolation.
    pub isolation: Isolation,
    /// Host build.
    pub host_build: Option<String>,
    /// Policy name.
    pub policy: String,
    /// Probe.
    pub probe: Option<Vec<String>>,
    /// Timeout.
    pub timeout_secs: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// `Queued`, or `Incompatible` when the rules already say the pair cannot run.
    pub state: JobState,
    /// Why, for a job created final.
    pub message: String,
}

/// What a worker can take.
#[derive(Debug, Clone)]
pub struct ClaimFilter {
    /// Host os.
    pub os: String,
    /// Host architecture.
    pub architecture: String,
    /// Isolation modes it runs.
    pub isolation: Vec<Isolation>,
    /// Host build (major.minor.build), Windows only.
    pub host_build: Option<String>,
}

/// A worker row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    /// Id.
    pub id: String,
    /// Who registered it (token subject), empty when auth is off.
    pub principal: String,
    /// The registration document (JSON).
    pub registration: String,
    /// Registered (unix seconds).
    pub registered_at: i64,
    /// Last seen (unix seconds).
    pub last_seen: i64,
}

/// The final fields of a report.
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    /// `Passed`, `Failed` or `Incompatible`.
    pub state: JobState,
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Message.
    pub message: &'a str,
    /// Log tail.
    pub log_tail: &'a str,
    /// Timings JSON.
    pub timings: &'a str,
    /// Runner.
    pub runner: &'a str,
    /// Host JSON.
    pub host: &'a str,
    /// Simulated.
    pub simulated: bool,
}

/// What became of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Stored now.
    Stored(JobRow),
    /// The same lease already finished the job: nothing changed (idempotent repeat).
    Repeated(JobRow),
    /// The lease is not (or no longer) the job's.
    LeaseLost,
    /// No such job.
    Unknown,
}

const JOB_COLS: &str = "id, repository, digest, index_digest, platform, isolation, host_build, \
    policy, probe, timeout_secs, state, attempts, max_attempts, not_before, lease, lease_worker, \
    lease_expires, created_at, updated_at, finished_at, exit_code, message, log_tail, timings, \
    runner, host, simulated, result_digest, last_state";

/// The claimable condition, with `$now` bound at the given position.
fn claimable(now: &str) -> String {
    format!(
        "((state = 'queued' AND not_before <= {now}) OR (state = 'running' AND lease_expires < {now} AND attempts < max_attempts))"
    )
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("verify_jobs.{what}: {e}"))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn job_from_row(r: &SqliteRow) -> Result<JobRow> {
    let platform: String = r.try_get("platform")?;
    let isolation: String = r.try_get("isolation")?;
    let state: String = r.try_get("state")?;
    let probe: Option<String> = r.try_get("probe")?;
    Ok(JobRow {
        id: r.try_get("id")?,
        repository: r.try_get("repository")?,
        digest: r.try_get("digest")?,
        index_digest: non_empty(r.try_get("index_digest")?),
        platform: serde_json::from_str(&platform).map_err(|e| corrupt("platform", e))?,
        isolation: parse_isolation(&isolation).ok_or_else(|| corrupt("isolation", &isolation))?,
        host_build: non_empty(r.try_get("host_build")?),
        policy: r.try_get("policy")?,
        probe: probe
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| corrupt("probe", e))?,
        timeout_secs: r.try_get("timeout_secs")?,
        state: JobState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        not_before: r.try_get("not_before")?,
        lease: r.try_get("lease")?,
        lease_worker: r.try_get("lease_worker")?,
        lease_expires: r.try_get("lease_expires")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
        exit_code: r.try_get("exit_code")?,
        message: r.try_get("message")?,
        log_tail: r.try_get("log_tail")?,
        timings: r.try_get("timings")?,
        runner: r.try_get("runner")?,
        host: r.try_get("host")?,
        simulated: r.try_get::<i64, _>("simulated")? != 0,
        result_digest: r.try_get("result_digest")?,
        last_state: {
            let s: Option<String> = r.try_get("last_state")?;
            s.map(|s| JobState::parse(&s).ok_or_else(|| corrupt("last_state", &s)))
                .transpose()?
        },
    })
}

impl Meta {
    /// Inserts jobs. An existing job for the same (repository, digest, isolation, host build)
    /// is kept as it is, unless `requeue` asks to run it again (never while it runs).
    /// Returns the ids of the jobs now queued by this call.
    pub async fn enqueue_jobs(&self, jobs: &[NewJob], requeue: bool) -> Result<Vec<i64>> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        let mut queued = Vec::new();
        for j in jobs {
            let platform =
                serde_json::to_string(&j.platform).map_err(|e| corrupt("platform", e))?;
            let probe = j
                .probe
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| corrupt("probe", e))?;
            let finished = j.state.is_final().then_some(now);
            let conflict = if requeue {
                "ON CONFLICT (repository, digest, isolation, host_build) DO UPDATE SET \
                 state = excluded.state, attempts = 0, not_before = excluded.not_before, \
                 probe = excluded.probe, timeout_secs = excluded.timeout_secs, policy = excluded.policy, \
                 max_attempts = excluded.max_attempts, lease = NULL, lease_worker = NULL, \
                 lease_expires = NULL, finished_at = excluded.finished_at, message = excluded.message, \
                 updated_at = excluded.updated_at, \
                 last_state = CASE WHEN excluded.state <> 'queued' THEN NULL \
                   WHEN verify_jobs.state IN ('passed', 'failed', 'error', 'incompatible') THEN verify_jobs.state \
                   ELSE verify_jobs.last_state END \
                 WHERE verify_jobs.state <> 'running'"
            } else {
                "ON CONFLICT (repository, digest, isolation, host_build) DO NOTHING"
            };
            let sql = format!(
                "INSERT INTO verify_jobs (repository, digest, index_digest, os, architecture, platform, \
                 isolation, host_build, policy, probe, timeout_secs, state, max_attempts, not_before, \
                 created_at, updated_at, finished_at, message) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $14, $15, $16) \
                 {conflict} RETURNING id"
            );
            let id: Option<i64> = sqlx::query_scalar(&sql)
                .bind(&j.repository)
                .bind(&j.digest)
                .bind(j.index_digest.as_deref().unwrap_or(""))
                .bind(&j.platform.os)
                .bind(&j.platform.architecture)
                .bind(&platform)
                .bind(isolation_str(j.isolation))
                .bind(j.host_build.as_deref().unwrap_or(""))
                .bind(&j.policy)
                .bind(probe)
                .bind(j.timeout_secs)
                .bind(j.state.as_str())
                .bind(j.max_attempts)
                .bind(now)
                .bind(finished)
                .bind(&j.message)
                .fetch_optional(&mut *tx)
                .await?;
            if let (Some(id), JobState::Queued) = (id, j.state) {
                queued.push(id);
            }
        }
        tx.commit().await?;
        Ok(queued)
    }

    /// Gives up on jobs whose lease expired on their last attempt.
    pub async fn expire_jobs(&self) -> Result<u64> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        let n = sqlx::query(
            "UPDATE verify_jobs SET state = 'error', finished_at = $1, updated_at = $1, last_state = NULL, \
             message = 'the worker stopped sending heartbeats on every attempt' \
             WHERE state = 'running' AND lease_expires < $1 AND attempts >= max_attempts",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Up to `limit` claimable jobs a worker could take with an id above `after`, oldest
    /// first: (id, repository).
    pub async fn claim_candidates(
        &self,
        f: &ClaimFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        if f.isolation.is_empty() {
            return Ok(vec![]);
        }
        let mut isolation: Vec<&str> = f.isolation.iter().map(|i| isolation_str(*i)).collect();
        isolation.sort_unstable();
        isolation.dedup();
        let iso: Vec<String> = (0..isolation.len())
            .map(|i| format!("${}", i + 7))
            .collect();
        let sql = format!(
            "SELECT id, repository FROM verify_jobs WHERE os = $1 AND architecture = $2 \
             AND (host_build = '' OR host_build = $3) AND {} AND id > $6 AND isolation IN ({}) \
             ORDER BY id LIMIT $5",
            claimable("$4"),
            iso.join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(&f.os)
            .bind(&f.architecture)
            .bind(f.host_build.as_deref().unwrap_or(""))
            .bind(now_secs())
            .bind(limit)
            .bind(after);
        for i in isolation {
            q = q.bind(i);
        }
        let rows = q.fetch_all(&self.write).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("repository")?)))
            .collect()
    }

    /// Takes a job if it is still claimable; `None` when someone else was faster.
    pub async fn try_claim(
        &self,
        id: i64,
        lease: &str,
        worker: &str,
        lease_secs: i64,
    ) -> Result<Option<JobRow>> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        let sql = format!(
            "UPDATE verify_jobs SET state = 'running', lease = $2, lease_worker = $3, \
             lease_expires = $4, attempts = attempts + 1, updated_at = $1, message = '' \
             WHERE id = $5 AND {} RETURNING {JOB_COLS}",
            claimable("$1")
        );
        let row = sqlx::query(&sql)
            .bind(now)
            .bind(lease)
            .bind(worker)
            .bind(now + lease_secs)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let job = row.as_ref().map(job_from_row).transpose()?;
        tx.commit().await?;
        Ok(job)
    }

    /// Extends a lease. False when the lease is no longer the job's.
    pub async fn heartbeat_job(&self, id: i64, lease: &str, lease_secs: i64) -> Result<bool> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        let n = sqlx::query(
            "UPDATE verify_jobs SET lease_expires = $1, updated_at = $2 \
             WHERE id = $3 AND lease = $4 AND state = 'running' AND lease_expires >= $2",
        )
        .bind(now + lease_secs)
        .bind(now)
        .bind(id)
        .bind(lease)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Stores a final result. Repeating the report of the lease that finished the job
    /// changes nothing.
    pub async fn finish_job(&self, id: i64, lease: &str, f: &Finish<'_>) -> Result<Finished> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        let sql = format!(
            "UPDATE verify_jobs SET state = $1, exit_code = $2, message = $3, log_tail = $4, \
             timings = $5, runner = $6, host = $7, simulated = $8, finished_at = $9, updated_at = $9, \
             lease_expires = NULL, last_state = NULL \
             WHERE id = $10 AND lease = $11 AND state = 'running' \
             AND lease_expires >= $9 RETURNING {JOB_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(f.state.as_str())
            .bind(f.exit_code)
            .bind(f.message)
            .bind(f.log_tail)
            .bind(f.timings)
            .bind(f.runner)
            .bind(f.host)
            .bind(i64::from(f.simulated))
            .bind(now)
            .bind(id)
            .bind(lease)
            .fetch_optional(&mut *tx)
            .await?;
        let out = match row {
            Some(r) => Finished::Stored(job_from_row(&r)?),
            None => {
                let sql = format!("SELECT {JOB_COLS} FROM verify_jobs WHERE id = $1");
                match sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
                    None => Finished::Unknown,
                    Some(r) => {
                        let j = job_from_row(&r)?;
                        if j.lease.as_deref() == Some(lease) && j.state == f.state {
                            Finished::Repeated(j)
                        } else {
                            Finished::LeaseLost
                        }
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(out)
    }

    /// An attempt failed for reasons outside the image: queue it again after `backoff_secs`,
    /// or give up with `error` after the last attempt.
    pub async fn retry_job(
        &self,
        id: i64,
        lease: &str,
        backoff_secs: i64,
        message: &str,
    ) -> Result<Finished> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        let sql = format!(
            "UPDATE verify_jobs SET \
             state = CASE WHEN attempts >= max_attempts THEN 'error' ELSE 'queued' END, \
             finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END, \
             last_state = CASE WHEN attempts >= max_attempts THEN NULL ELSE last_state END, \
             not_before = $2, message = $3, updated_at = $1, lease_expires = NULL \
             WHERE id = $4 AND lease = $5 AND state = 'running' AND lease_expires >= $1 \
             RETURNING {JOB_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(now)
            .bind(now + backoff_secs)
            .bind(message)
            .bind(id)
            .bind(lease)
            .fetch_optional(&mut *tx)
            .await?;
        let out = match row {
            Some(r) => Finished::Stored(job_from_row(&r)?),
            None => {
                let sql = format!("SELECT {JOB_COLS} FROM verify_jobs WHERE id = $1");
                match sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
                    None => Finished::Unknown,
                    Some(r) => {
                        let j = job_from_row(&r)?;
                        // A running job whose lease ran out is lost, not repeated.
                        if j.lease.as_deref() == Some(lease)
                            && j.message == message
                            && j.state != JobState::Running
                        {
                            Finished::Repeated(j)
                        } else {
                            Finished::LeaseLost
                        }
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(out)
    }

    /// Records the referrer that carries a job's result.
    pub async fn set_job_result_digest(&self, id: i64, digest: &str) -> Result<()> {
        let mut tx = WriteTx::begin(&self.write).await?;
        sqlx::query("UPDATE verify_jobs SET result_digest = $1 WHERE id = $2")
            .bind(digest)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One job.
    pub async fn job(&self, id: i64) -> Result<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLS} FROM verify_jobs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs of one manifest digest in a repository.
    pub async fn jobs_for_digest(&self, repo: &str, digest: &str) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLS} FROM verify_jobs WHERE repository = $1 AND digest = $2 ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(repo)
            .bind(digest)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Jobs, newest first, optionally of one repository and/or state.
    pub async fn list_jobs(
        &self,
        repo: Option<&str>,
        state: Option<JobState>,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLS} FROM verify_jobs WHERE ($1 = '' OR repository = $1) \
             AND ($2 = '' OR state = $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(repo.unwrap_or(""))
            .bind(state.map(JobState::as_str).unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Registers (or re-registers) a worker.
    pub async fn put_worker(
        &self,
        id: &str,
        principal: &str,
        registration: &str,
        platform: &Platform,
        simulated: bool,
    ) -> Result<()> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        sqlx::query(
            "INSERT INTO verify_workers (id, name, principal, os, architecture, variant, os_version, \
             registration, simulated, registered_at, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (id) DO UPDATE SET registration = excluded.registration, last_seen = excluded.last_seen",
        )
        .bind(id)
        .bind(serde_json::from_str::<serde_json::Value>(registration)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_owned))
            .unwrap_or_default())
        .bind(principal)
        .bind(&platform.os)
        .bind(&platform.architecture)
        .bind(platform.variant.as_deref().unwrap_or(""))
        .bind(platform.os_version.as_deref().unwrap_or(""))
        .bind(registration)
        .bind(i64::from(simulated))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A worker by id.
    pub async fn worker(&self, id: &str) -> Result<Option<WorkerRow>> {
        let row = sqlx::query(
            "SELECT id, principal, registration, registered_at, last_seen FROM verify_workers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| worker_from_row(&r)).transpose()
    }

    /// Every worker, most recently seen first.
    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        let rows = sqlx::query(
            "SELECT id, principal, registration, registered_at, last_seen FROM verify_workers ORDER BY last_seen DESC",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(worker_from_row).collect()
    }

    /// Notes that a worker is alive.
    pub async fn touch_worker(&self, id: &str) -> Result<()> {
        let mut tx = WriteTx::begin(&self.write).await?;
        sqlx::query("UPDATE verify_workers SET last_seen = $1 WHERE id = $2")
            .bind(now_secs())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn worker_from_row(r: &SqliteRow) -> Result<WorkerRow> {
    Ok(WorkerRow {
        id: r.try_get("id")?,
        principal: r.try_get("principal")?,
        registration: r.try_get("registration")?,
        registered_at: r.try_get("registered_at")?,
        last_seen: r.try_get("last_seen")?,
    })
}
