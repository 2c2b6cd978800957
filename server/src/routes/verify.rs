//! The verification API under `/berth/v1/verify/`: worker registration, claiming jobs with a
//! lease (long-poll), heartbeats, results, the job list, on-demand verification and the
//! gate's status of a reference. docs/VERIFY.md describes the protocol.
//!
//! Workers authenticate like any API caller (Basic or a berth token) and see only the jobs of
//! repositories where they hold `verify`; people need `pull` to read results and `push` (or
//! `verify`) to queue a verification.

use super::admin::{bad, json_body, Who};
use crate::error::{ApiError, Refusal};
use crate::registry::ClaimingWorker;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_auth::{Action, Principal};
use berth_oci::worker_protocol::{
    isolation_str, ClaimRequest, Heartbeat, JobState, Report, WorkerRegistration,
};
use berth_oci::{Reference, RepoName};
use berth_storage::meta::JobRow;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

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
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    if who.principal == Some(Principal::Anonymous) {
        return Err(Refusal::Denied("workers must authenticate".into()).into());
    }
    let reg: WorkerRegistration = json_body(&body)?;
    let worker = st.registry.register_worker(&who.subject(), &reg).await?;
    Ok((StatusCode::CREATED, Json(worker)).into_response())
}

/// `GET /berth/v1/verify/workers`: every worker for admins, a principal's own workers for
/// it; refused to anonymous callers.
pub async fn workers(State(st): State<AppState>, who: Who) -> Result<Response, ApiError> {
    if who.principal == Some(Principal::Anonymous) {
        return Err(Refusal::Denied("the worker list needs an authenticated caller".into()).into());
    }
    // Admins see every worker; others only the ones registered under their own name.
    let subject = who.subject();
    let workers = st
        .registry
        .workers((!who.is_admin()).then_some(subject.as_str()))
        .await?;
    Ok(Json(json!({ "workers": workers })).into_response())
}

/// The caller's own worker `id` (anyone's when auth is off).
async fn own_worker(st: &AppState, who: &Who, id: &str) -> Result<ClaimingWorker, ApiError> {
    let subject = who.subject();
    let owner = who.principal.is_some().then_some(subject.as_str());
    Ok(st.registry.own_worker(id, owner).await?)
}

/// `POST /berth/v1/verify/claim`: the next job this worker can run, waiting up to
/// `wait_secs` (at most 60) for one; 204 when none came.
pub async fn claim(
    State(st): State<AppState>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ClaimRequest = json_body(&body)?;
    let worker = own_worker(&st, &who, &req.worker).await?;
    let wait = Duration::from_secs(req.wait_secs);
    match st
        .registry
        .claim_job(&worker, |repo| who.may(repo, Action::Verify), wait)
        .await?
    {
        Some(a) => Ok((StatusCode::OK, Json(a)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// A job the caller works on: 404 like a missing job unless it may pull the repository,
/// then it must hold `verify` there.
async fn job_for_worker(st: &AppState, who: &Who, id: i64) -> Result<JobRow, ApiError> {
    let job = st
        .registry
        .job(id, |repo| who.may(repo, Action::Pull))
        .await?;
    who.require(&job.repository, Action::Verify)?;
    Ok(job)
}

/// `POST /berth/v1/verify/jobs/{id}/heartbeat`: extends the lease; 409 when it is lost.
pub async fn heartbeat(
    State(st): State<AppState>,
    who: Who,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hb: Heartbeat = json_body(&body)?;
    let job = job_for_worker(&st, &who, id).await?;
    let secs = st.registry.heartbeat(&job, &hb).await?;
    Ok(Json(json!({"lease_secs": secs})).into_response())
}

/// `POST /berth/v1/verify/jobs/{id}/result`: a worker's report. `passed`, `failed` and
/// `incompatible` are final; `error` (infrastructure) is retried with backoff. Repeating a
/// report is harmless.
pub async fn result(
    State(st): State<AppState>,
    who: Who,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rep: Report = json_body(&body)?;
    let job = job_for_worker(&st, &who, id).await?;
    let j = st.registry.report(&job, &rep).await?;
    Ok(Json(job_json(&j)).into_response())
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
    who: Who,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::api::bad_query)?;
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            Some(JobState::parse(s).ok_or_else(|| bad(anyhow::anyhow!("unknown state {s:?}")))?)
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = st
        .registry
        .jobs(q.repository.as_deref(), state, limit, |repo| {
            who.may(repo, Action::Pull)
        })
        .await?;
    let out: Vec<_> = rows.iter().map(job_json).collect();
    Ok(Json(json!({ "jobs": out })).into_response())
}

/// `GET /berth/v1/verify/jobs/{id}`: 404 alike for a missing job and one the caller may not
/// pull.
pub async fn job(
    State(st): State<AppState>,
    who: Who,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    // A job the caller may not see answers like a missing one: no existence oracle.
    let j = st
        .registry
        .job(id, |repo| who.may(repo, Action::Pull))
        .await?;
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
        .map_err(|e: berth_oci::NameError| Refusal::NameInvalid(e.to_string()))?;
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
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
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
/// Anonymous callers as on `/v2/`: public repositories without a token, others get a Bearer
/// challenge.
pub async fn status(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    h: axum::http::HeaderMap,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::api::bad_query)?;
    let (name, r) = parse_ref(&q.reference)?;
    super::admin::who_may_pull(&st, &h, peer, name.as_str())
        .await?
        .require(name.as_str(), Action::Pull)?;
    let digest = st.registry.resolve(name.as_str(), &r).await?;
    let status = st
        .registry
        .verification_status(name.as_str(), &digest)
        .await?;
    Ok(Json(status).into_response())
}
