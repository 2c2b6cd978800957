//! The mirror admin API under `/berth/v1/mirrors` (admins only; open when auth is off):
//! definitions, runs started on demand, and run reports.

use super::admin::{bad, json_body, not_found, Admin};
use crate::error::{ApiError, Refusal};
use crate::mirror::def::MirrorDef;
use crate::mirror::{DefError, Source};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// A definition as the API shows it: passwords hidden, with its source and last run.
fn shown(def: &MirrorDef, source: Source, last: Option<Value>) -> Value {
    let mut d = def.clone();
    d.auth = d.auth.redacted();
    let mut v = serde_json::to_value(&d).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("source".into(), json!(source));
        o.insert("last_run".into(), last.unwrap_or(Value::Null));
    }
    v
}

fn def_error(e: DefError) -> ApiError {
    match e {
        DefError::Invalid(m) => bad(anyhow::anyhow!(m)),
        DefError::FromConfig(_) => Refusal::Conflict(e.to_string()).into(),
        DefError::Storage(e) => e.into(),
    }
}

async fn last_run(st: &AppState, name: &str) -> Result<Option<Value>, ApiError> {
    let mut runs = st.mirrors.runs(Some(name), 1).await?;
    Ok(runs.pop().map(|mut r| {
        r.items.clear();
        json!(r)
    }))
}

/// `GET /berth/v1/mirrors`
pub async fn list(State(st): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    for (d, src) in st.mirrors.list().await? {
        let last = last_run(&st, &d.name).await?;
        out.push(shown(&d, src, last));
    }
    Ok(Json(json!({ "mirrors": out })).into_response())
}

/// `GET /berth/v1/mirrors/{name}`
pub async fn get(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (d, src) = st
        .mirrors
        .get(&name)
        .await?
        .ok_or_else(|| not_found("mirror"))?;
    let last = last_run(&st, &name).await?;
    Ok(Json(shown(&d, src, last)).into_response())
}

/// `PUT /berth/v1/mirrors/{name}`: create or replace (the body's `name`, if any, must agree).
pub async fn put(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut v: Value = json_body(&body)?;
    if let Some(o) = v.as_object_mut() {
        match o.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(bad(anyhow::anyhow!(
                    "the body names mirror {n:?}, the path {name:?}"
                )))
            }
            _ => {
                o.insert("name".into(), json!(name));
            }
        }
    }
    let def: MirrorDef = serde_json::from_value(v)
        .map_err(|e| bad(anyhow::anyhow!("invalid mirror definition: {e}")))?;
    let existed = st.mirrors.get(&name).await?.is_some();
    st.mirrors.put(def.clone()).await.map_err(def_error)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(shown(&def, Source::Api, None))).into_response())
}

/// `DELETE /berth/v1/mirrors/{name}` (API-defined mirrors only; what it copied stays).
pub async fn delete(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if st.mirrors.delete(&name).await.map_err(def_error)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found("mirror"))
    }
}

/// `POST /berth/v1/mirrors/{name}/runs`: start a run now (202 with its id).
pub async fn run(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if st.mirrors.get(&name).await?.is_none() {
        return Err(not_found("mirror"));
    }
    match st.mirrors.start(&name, "api").await {
        Ok(id) => Ok((
            StatusCode::ACCEPTED,
            [(
                axum::http::header::LOCATION,
                format!("/berth/v1/mirrors/{name}/runs/{id}"),
            )],
            Json(json!({ "id": id, "mirror": name, "state": "running" })),
        )
            .into_response()),
        Err(e) => Err(Refusal::Conflict(format!("{e:#}")).into()),
    }
}

/// Query of `GET .../runs`.
#[derive(Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    n: Option<i64>,
}

/// `GET /berth/v1/mirrors/{name}/runs`: newest first, with reports.
pub async fn runs(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::api::bad_query)?;
    let n = q.n.unwrap_or(20).clamp(1, 1000);
    let runs = st.mirrors.runs(Some(&name), n).await?;
    Ok(Json(json!({ "runs": runs })).into_response())
}

/// `GET /berth/v1/mirrors/{name}/runs/{id}`: one run; live counters while it runs.
pub async fn run_report(
    State(st): State<AppState>,
    _admin: Admin,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    match st.mirrors.report(id).await? {
        Some(r) if r.mirror == name => Ok(Json(r).into_response()),
        _ => Err(not_found("run")),
    }
}
