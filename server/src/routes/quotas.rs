//! The quota API under `/berth/v1/quotas` (admins only; open when auth is off): usage per
//! quota, and a recount from the links.

use super::admin::{json_body, Admin};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

/// `GET /berth/v1/quotas`: each configured quota with its limit and usage.
pub async fn list(State(st): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let quotas = st.registry.quotas().await?;
    Ok(Json(json!({ "quotas": quotas })).into_response())
}

/// Body of `POST /berth/v1/quotas/recount` (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RecountBody {
    #[serde(default)]
    fix: bool,
}

/// `POST /berth/v1/quotas/recount`: counts every quota again from the links and shows it
/// beside the running counter; with `{"fix": true}` a counter that differs is replaced.
pub async fn recount(
    State(st): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: RecountBody = if body.is_empty() {
        RecountBody::default()
    } else {
        json_body(&body)?
    };
    let quotas = st.registry.quota_recount(b.fix).await?;
    Ok(Json(json!({ "quotas": quotas })).into_response())
}
