//! `GET /v2/<name>/referrers/<digest>` (spec end-12a/12b), with the `artifactType` filter.

use super::{query_get, query_pairs};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::media_type::OCI_INDEX;
use berth_oci::{Digest, RepoName};
use serde_json::{json, Map, Value};

/// The referrers of `digest`, as an OCI index. Never 404: no referrers is an empty list.
pub async fn list(
    st: &AppState,
    name: RepoName,
    digest: Digest,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let q = query_pairs(&req);
    let filter = query_get(&q, "artifactType").filter(|s| !s.is_empty());
    let refs = st
        .registry
        .referrers(name.as_str(), &digest, filter)
        .await?;
    let manifests: Vec<Value> = refs
        .into_iter()
        .map(|r| {
            let mut d = Map::new();
            d.insert("mediaType".into(), json!(r.media_type));
            d.insert("digest".into(), json!(r.digest));
            d.insert("size".into(), json!(r.size));
            if let Some(a) = r.artifact_type {
                d.insert("artifactType".into(), json!(a));
            }
            if let Some(a) = r
                .annotations
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                d.insert("annotations".into(), a);
            }
            Value::Object(d)
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, OCI_INDEX)],
        body.to_string(),
    )
        .into_response();
    if filter.is_some() {
        r.headers_mut().insert(
            "oci-filters-applied",
            header::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}
