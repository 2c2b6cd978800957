//! The verification API under `/berth/v1/verify/`: worker registration, claiming jobs with a
//! lease (long-poll), heartbeats, results, the job list, on-demand verification and the
//! gate's status of a reference. docs/VERIFY.md describes the protocol.
//!
//! Workers authenticate like any API caller (Basic or a berth token) and see only the jobs of
//! repositories where they hold `verify`; people need `pull` to read results and `push` (or
//! `verify`) to queue a verification.

use super::admin::{bad, json_body, not_found, who, Who};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_auth::{Action, Principal};
use berth_oci::platform::Platform;
use berth_oci::worker_protocol::{
    build_of, isolation_str, Assignment, ClaimRequest, Heartbeat, JobState, Report, Worker,
    WorkerRegistration,
};
use berth_oci::{ErrorCode, Reference, RepoName};
use berth_storage::meta::{ClaimFilter, Finish, Finished, JobRow, WorkerRow};
use serde::Deserialize;
use serde_json::json;
use sha2::Digest as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Longest long-poll of a claim.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Claimable jobs read per query while a claim looks for one it may take.
const CLAIM_PAGE: i64 = 50;
/// How often a waiting claim looks again without a wake-up (other replicas, expired leases,
/// backoffs running out).
const POLL: Duration = Duration::from_secs(2);

fn worker_id(principal: &str, name: &str) -> String {
    let h = sha2::Sha256::digest(format!("{principal}\0{name}").as_bytes());
    hex::encode(&h[..8])
}

fn worker_json(w: &WorkerRow) -> Result<Worker, ApiError> {
    let registration: WorkerRegistration = serde_json::from_str(&w.registration)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored worker registration: {e}")))?;
    Ok(Worker {
        id: w.id.clone(),
        registration,
        registered_at: w.registered_at,
        last_seen: w.last_seen,
    })
}

/// A job as the API shows it.
pub fn job_json(j: &JobRow) -> serde_json::Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    json!({
        "id": j.id,
        "repository": j.repository,
        "digest": j.digest,
        "index_digest": j.index_digest,
        "platform": j.platform,
        "isolation": isolation_str(j.isolation),
        "host_build": j.host_build,
        "policy": j.policy,
        "probe": j.probe,
        "timeout_secs": j.timeout_secs,
        "state": j.state.as_str(),
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "worker": j.lease_worker,
        "lease_expires": j.lease_expires,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
        "finished_at": j.finished_at,
        "exit_code": j.exit_code,
        "message": j.message,
        "log_tail": j.log_tail,
        "timings": parse(&j.timings),
        "runner": j.runner,
        "host": parse(&j.host),
        "simulated": j.simulated,
        "result": j.result_digest,
    })
}

/// `POST /berth/v1/verify/workers`: registers (or re-registers) a worker.
pub async fn register(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = who(&st, &h, peer).await?;
    if who.principal == Some(Principal::Anonymous) {
        return Err(ApiError::oci(
            ErrorCode::Denied,
            "workers must authenticate",
        ));
    }
    let reg: WorkerRegistration = json_body(&body)?;
    if reg.name.is_empty() || reg.name.len() > 128 {
        return Err(bad(anyhow::anyhow!(
            "worker name must be 1 to 128 characters"
        )));
    }
    if reg.platform.os.is_empty() || reg.platform.architecture.is_empty() {
        return Err(bad(anyhow::anyhow!(
            "worker platform needs os and architecture"
        )));
    }
    if reg.isolation.is_empty() {
        return Err(bad(anyhow::anyhow!("worker offers no isolation mode")));
    }
    let subject = who.subject();
    let id = worker_id(&subject, &reg.name);
    let text = serde_json::to_string(&reg).map_err(|e| ApiError::Internal(e.into()))?;
    let m = &st.registry.meta;
    m.put_worker(&id, &subject, &text, &reg.platform, reg.simulated)
        .await?;
    let row = m
        .worker(&id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("worker {id} vanished")))?;
    tracing::info!(worker = %id, name = %reg.name, principal = %subject, platform = ?reg.platform, "verifier registered");
    Ok((StatusCode::CREATED, Json(worker_json(&row)?)).into_response())
}

/// `GET /berth/v1/verify/workers`: every worker for admins, a principal's own workers for
/// it; refused to anonymous callers.
pub async fn workers(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let who = who(&st, &h, peer).await?;
    if who.principal == Some(Principal::Anonymous) {
        return Err(ApiError::oci(
            ErrorCode::Denied,
            "the worker list needs an authenticated caller",
        ));
    }
    // Admins see every worker; others only the ones registered under their own name.
    let all = who.is_admin();
    let subject = who.subject();
    let rows = st.registry.meta.workers().await?;
    let out: Result<Vec<Worker>, ApiError> = rows
        .iter()
        .filter(|w| all || w.principal == subject)
        .map(worker_json)
        .collect();
    Ok(Json(json!({ "workers": out? })).into_response())
}

async fn own_worker(
    st: &AppState,
    who: &Who,
    id: &str,
) -> Result<(WorkerRow, WorkerRegistration), ApiError> {
    let row = st
        .registry
        .meta
        .worker(id)
        .await?
        .ok_or_else(|| not_found(&format!("worker {id}")))?;
    if who.principal.is_some() && row.principal != who.subject() {
        return Err(ApiError::oci(
            ErrorCode::Denied,
            format!("worker {id} belongs to another principal"),
        ));
    }
    let reg: WorkerRegistration = serde_json::from_str(&row.registration)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored worker registration: {e}")))?;
    Ok((row, reg))
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

/// `POST /berth/v1/verify/claim`: the next job this worker can run, waiting up to
/// `wait_secs` (at most 60) for one; 204 when none came.
pub async fn claim(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = who(&st, &h, peer).await?;
    let req: ClaimRequest = json_body(&body)?;
    let (row, reg) = own_worker(&st, &who, &req.worker).await?;
    let filter = claim_filter(&reg);
    let reg_meta = &st.registry.meta;
    let cfg = st.registry.settings.verify.config();
    let lease_secs = i64::try_from(cfg.lease_secs).unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(req.wait_secs).min(MAX_WAIT);
    reg_meta.touch_worker(&row.id).await?;
    loop {
        // Register interest before looking, so a job queued meanwhile wakes us.
        let woken = st.registry.verify_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let expired = reg_meta.expire_jobs().await?;
        if expired > 0 {
            tracing::warn!(
                count = expired,
                "verification jobs gave up: workers stopped sending heartbeats"
            );
        }
        // Page through every claimable job: jobs of repositories this worker may not verify
        // must not hide the ones it may.
        let mut after = 0;
        loop {
            let page = reg_meta
                .claim_candidates(&filter, after, CLAIM_PAGE)
                .await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            let full = page.len() as i64 == CLAIM_PAGE;
            for (id, repo) in page {
                if !who.may(&repo, Action::Verify) {
                    continue;
                }
                let lease = uuid::Uuid::new_v4().to_string();
                if let Some(job) = reg_meta.try_claim(id, &lease, &row.id, lease_secs).await? {
                    tracing::info!(job = id, worker = %row.id, attempt = job.attempts, "verification job claimed");
                    let a = Assignment {
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
                        lease_secs: cfg.lease_secs,
                    };
                    return Ok((StatusCode::OK, Json(a)).into_response());
                }
            }
            if !full {
                break;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let nap = (deadline - now).min(POLL);
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

async fn job_for_worker(st: &AppState, who: &Who, id: i64) -> Result<JobRow, ApiError> {
    let job = st
        .registry
        .meta
        .job(id)
        .await?
        // A job on a repository the caller may not even pull answers like a missing one.
        .filter(|j| who.may(&j.repository, Action::Pull))
        .ok_or_else(|| not_found(&format!("job {id}")))?;
    who.require(&job.repository, Action::Verify)?;
    Ok(job)
}

fn lease_lost(id: i64) -> ApiError {
    ApiError::oci(
        ErrorCode::Denied,
        format!("job {id}: the lease is no longer yours (it expired and the job went to another worker, or it finished)"),
    )
    .status(StatusCode::CONFLICT)
}

/// `POST /berth/v1/verify/jobs/{id}/heartbeat`: extends the lease; 409 when it is lost.
pub async fn heartbeat(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = who(&st, &h, peer).await?;
    let hb: Heartbeat = json_body(&body)?;
    let job = job_for_worker(&st, &who, id).await?;
    let secs = st.registry.settings.verify.config().lease_secs;
    if !st
        .registry
        .meta
        .heartbeat_job(id, &hb.lease, i64::try_from(secs).unwrap_or(60))
        .await?
    {
        return Err(lease_lost(id));
    }
    if let Some(w) = &job.lease_worker {
        st.registry.meta.touch_worker(w).await?;
    }
    tracing::debug!(job = id, phase = %hb.phase, "heartbeat");
    Ok(Json(json!({"lease_secs": secs})).into_response())
}

/// `POST /berth/v1/verify/jobs/{id}/result`: a worker's report. `passed`, `failed` and
/// `incompatible` are final; `error` (infrastructure) is retried with backoff. Repeating a
/// report is harmless.
pub async fn result(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = who(&st, &h, peer).await?;
    let rep: Report = json_body(&body)?;
    let job = job_for_worker(&st, &who, id).await?;
    let meta = &st.registry.meta;
    const MAX_LOG: usize = 16 << 10;
    let log_tail = berth_tail(&rep.log_tail, MAX_LOG);
    let message: String = rep.message.chars().take(2000).collect();
    let outcome = match rep.status {
        JobState::Passed | JobState::Failed | JobState::Incompatible => {
            let timings =
                serde_json::to_string(&rep.timings).map_err(|e| ApiError::Internal(e.into()))?;
            let host =
                serde_json::to_string(&rep.host).map_err(|e| ApiError::Internal(e.into()))?;
            // A worker's report is simulated if it says so or registered as a double.
            let simulated = rep.simulated
                || match &job.lease_worker {
                    Some(w) => meta
                        .worker(w)
                        .await?
                        .and_then(|w| {
                            serde_json::from_str::<WorkerRegistration>(&w.registration).ok()
                        })
                        .is_some_and(|r| r.simulated),
                    None => false,
                };
            meta.finish_job(
                id,
                &rep.lease,
                &Finish {
                    state: rep.status,
                    exit_code: rep.exit_code,
                    message: &message,
                    log_tail: &log_tail,
                    timings: &timings,
                    runner: &rep.runner,
                    host: &host,
                    simulated,
                },
            )
            .await?
        }
        JobState::Error => {
            let base = st.registry.settings.verify.config().retry_backoff_secs;
            let shift = u32::try_from(job.attempts.saturating_sub(1).clamp(0, 10)).unwrap_or(0);
            let backoff = i64::try_from(base.saturating_mul(1 << shift)).unwrap_or(i64::MAX);
            meta.retry_job(id, &rep.lease, backoff, &message).await?
        }
        JobState::Queued | JobState::Running => {
            return Err(bad(anyhow::anyhow!(
                "status must be passed, failed, incompatible or error"
            )))
        }
    };
    match outcome {
        Finished::Stored(j) => {
            tracing::info!(job = id, state = j.state.as_str(), exit_code = ?j.exit_code, simulated = j.simulated, "verification result");
            let j = if j.state.is_final() {
                attach(&st, id, j, false).await?
            } else {
                // Back in the queue: wake waiting workers once the backoff has passed
                // (they poll anyway).
                st.registry.verify_wake.notify_waiters();
                j
            };
            Ok(Json(job_json(&j)).into_response())
        }
        Finished::Repeated(j) => {
            Ok(Json(job_json(&attach(&st, id, j, true).await?)).into_response())
        }
        Finished::LeaseLost => Err(lease_lost(id)),
        Finished::Unknown => Err(not_found(&format!("job {id}"))),
    }
}

/// Attaches a final result as a referrer. A repeated report (`repeat`) attaches only when
/// the first attempt failed to (no result digest yet); a fresh result always does, since a
/// re-queued job still carries its previous run's digest.
async fn attach(st: &AppState, id: i64, j: JobRow, repeat: bool) -> Result<JobRow, ApiError> {
    if !j.state.is_final() || (repeat && j.result_digest.is_some()) {
        return Ok(j);
    }
    match st.registry.record_result(&j).await {
        Ok(_) => Ok(st.registry.meta.job(id).await?.unwrap_or(j)),
        Err(e) => {
            tracing::warn!(job = id, error = %e, "could not attach the result as a referrer");
            Ok(j)
        }
    }
}

fn berth_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// `?repository=&state=&limit=`
#[derive(Deserialize)]
pub struct JobsQuery {
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /berth/v1/verify/jobs`: newest first, only of repositories the caller may pull.
pub async fn jobs(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::api::bad_query)?;
    let who = who(&st, &h, peer).await?;
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            Some(JobState::parse(s).ok_or_else(|| bad(anyhow::anyhow!("unknown state {s:?}")))?)
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = st
        .registry
        .meta
        .list_jobs(q.repository.as_deref(), state, limit)
        .await?;
    let out: Vec<_> = rows
        .iter()
        .filter(|j| who.may(&j.repository, Action::Pull))
        .map(job_json)
        .collect();
    Ok(Json(json!({ "jobs": out })).into_response())
}

/// `GET /berth/v1/verify/jobs/{id}`: 404 alike for a missing job and one the caller may not
/// pull.
pub async fn job(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let who = who(&st, &h, peer).await?;
    // A job the caller may not see answers like a missing one: no existence oracle.
    let j = st
        .registry
        .meta
        .job(id)
        .await?
        .filter(|j| who.may(&j.repository, Action::Pull))
        .ok_or_else(|| not_found(&format!("job {id}")))?;
    Ok(Json(job_json(&j)).into_response())
}

fn parse_ref(s: &str) -> Result<(RepoName, Reference), ApiError> {
    let (repo, r) = if let Some((repo, d)) = s.split_once('@') {
        (repo, d.to_owned())
    } else {
        match s.rsplit_once(':') {
            Some((repo, t)) if !t.contains('/') => (repo, t.to_owned()),
            _ => (s, "latest".to_owned()),
        }
    };
    let name: RepoName = repo
        .parse()
        .map_err(|e: berth_oci::NameError| ApiError::oci(ErrorCode::NameInvalid, e.to_string()))?;
    Ok((name, super::reference(&r)?))
}

/// `{"reference": "repo:tag"}`
#[derive(Deserialize)]
pub struct VerifyRequest {
    reference: String,
}

/// `POST /berth/v1/verify/jobs`: queues (again) every check of a reference.
pub async fn verify_now(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = who(&st, &h, peer).await?;
    let req: VerifyRequest = json_body(&body)?;
    let (name, r) = parse_ref(&req.reference)?;
    let repo = name.as_str();
    if !who.may(repo, Action::Push) {
        who.require(repo, Action::Verify)?;
    }
    if st.registry.verify_policy(repo).is_none() {
        return Err(bad(anyhow::anyhow!(
            "no verification policy covers repository {repo}"
        )));
    }
    let digest = st.registry.resolve(repo, &r).await?;
    let queued = st
        .registry
        .enqueue_verification(repo, &digest, true)
        .await?;
    let status = st.registry.verification_status(repo, &digest).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"queued": queued, "status": status})),
    )
        .into_response())
}

/// `?reference=repo:tag`
#[derive(Deserialize)]
pub struct StatusQuery {
    reference: String,
}

/// `GET /berth/v1/verify/status?reference=`: every required check of a reference.
pub async fn status(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::api::bad_query)?;
    let who = who(&st, &h, peer).await?;
    let (name, r) = parse_ref(&q.reference)?;
    who.require(name.as_str(), Action::Pull)?;
    let digest = st.registry.resolve(name.as_str(), &r).await?;
    let status = st
        .registry
        .verification_status(name.as_str(), &digest)
        .await?;
    Ok(Json(status).into_response())
}
