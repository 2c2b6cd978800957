//! The garbage collection API under `/berth/v1/gc` (admins only; open when auth is off):
//! start a run (or a dry run), list runs, read one run's report or live progress.

use super::admin::{json_body, not_found, Admin};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

/// Body of `POST /berth/v1/gc/runs` (optional): `{"dry_run": bool, "orphans": bool}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    orphans: bool,
}

/// `POST /berth/v1/gc/runs`: starts a run now (202 with its id; 409 while one is running).
pub async fn start(
    State(st): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: StartBody = if body.is_empty() {
        StartBody::default()
    } else {
        json_body(&body)?
    };
    let mode = crate::registry::gc::GcMode {
        dry_run: b.dry_run,
        orphans: b.orphans,
    };
    let id = st.registry.start_gc("api", mode).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(
            axum::http::header::LOCATION,
            format!("/berth/v1/gc/runs/{id}"),
        )],
        Json(json!({ "id": id, "dry_run": b.dry_run, "state": "running" })),
    )
        .into_response())
}

/// Query of `GET /berth/v1/gc/runs`.
#[derive(Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    n: Option<i64>,
}

/// `GET /berth/v1/gc/runs`: newest first, with reports.
pub async fn runs(
    State(st): State<AppState>,
    _admin: Admin,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::api::bad_query)?;
    let n = q.n.unwrap_or(20).clamp(1, 1000);
    let runs = st.registry.gc_runs(n).await?;
    Ok(Json(json!({ "runs": runs })).into_response())
}

/// `GET /berth/v1/gc/runs/{id}`: one run; its progress while it runs.
pub async fn run(
    State(st): State<AppState>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    match st.registry.gc_run(id).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(not_found("run")),
    }
}
