//! The retention API under `/berth/v1/retention` (admins only; open when auth is off):
//! start a run (or a dry run), list runs, read one run's report.

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

/// Body of `POST /berth/v1/retention/runs` (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /berth/v1/retention/runs`: starts a run now (202 with its id; 409 while one runs).
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
    let id = st.registry.start_retention("api", b.dry_run).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(
            axum::http::header::LOCATION,
            format!("/berth/v1/retention/runs/{id}"),
        )],
        Json(json!({ "id": id, "dry_run": b.dry_run, "state": "running" })),
    )
        .into_response())
}

/// Query of `GET /berth/v1/retention/runs`.
#[derive(Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    n: Option<i64>,
}

/// `GET /berth/v1/retention/runs`: newest first, with reports.
pub async fn runs(
    State(st): State<AppState>,
    _admin: Admin,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::api::bad_query)?;
    let n = q.n.unwrap_or(20).clamp(1, 1000);
    let runs = st.registry.retention_runs(n).await?;
    Ok(Json(json!({ "runs": runs })).into_response())
}

/// `GET /berth/v1/retention/runs/{id}`: one run.
pub async fn run(
    State(st): State<AppState>,
    _admin: Admin,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    match st.registry.retention_run(id).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(not_found("run")),
    }
}
