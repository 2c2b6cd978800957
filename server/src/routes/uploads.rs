//! Blob uploads (spec end-4a/4b/5/6/11/13/14): POST, PATCH, GET status, PUT, DELETE.

use super::{body_stream, content_length, digest, header_str, query_get, query_pairs, upload_id};
use crate::auth::Caller;
use crate::error::upload_range;
use crate::error::{ApiError, Refusal};
use crate::registry::{Chunk, ChunkRange, UploadStatus};
use crate::AppState;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::RepoName;

fn upload_location(name: &RepoName, id: &uuid::Uuid) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn accepted(name: &RepoName, s: UploadStatus) -> Response {
    accepted_with(name, s, None)
}

fn accepted_with(name: &RepoName, s: UploadStatus, min_chunk: Option<u64>) -> Response {
    let mut r = (
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, upload_location(name, &s.id)),
            (header::RANGE, upload_range(s.offset)),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                s.id.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
        .into_response();
    if let Some(n) = min_chunk {
        r.headers_mut().insert("oci-chunk-min-length", n.into());
    }
    r
}

fn created(name: &RepoName, d: &berth_oci::Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/{d}")),
            (
                header::HeaderName::from_static("docker-content-digest"),
                d.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
        .into_response()
}

/// POST: start an upload, or mount (`?mount=&from=`), or upload whole (`?digest=`).
pub async fn start(
    st: &AppState,
    name: RepoName,
    caller: &Caller,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let q = query_pairs(&req);
    if let Some(m) = query_get(&q, "mount") {
        let d = digest(m)?;
        if let Some(from) = query_get(&q, "from") {
            // An invalid source name simply cannot hold the blob, and a mount also needs pull
            // on the source: in both cases fall back to an upload.
            let may = |f: &RepoName| {
                st.auth
                    .as_ref()
                    .is_none_or(|a| a.may(caller, f.as_str(), berth_auth::Action::Pull))
            };
            if let Some(from) = from.parse::<RepoName>().ok().filter(may) {
                if st
                    .registry
                    .mount_blob(name.as_str(), &d, from.as_str())
                    .await?
                {
                    return Ok(created(&name, &d));
                }
            }
        }
        let s = st.registry.start_upload(name.as_str()).await?;
        return Ok(accepted_with(&name, s, st.registry.chunk_min_length()));
    }
    if let Some(dg) = query_get(&q, "digest") {
        let d = digest(dg)?;
        st.registry
            .monolithic_upload(name.as_str(), &d, body_stream(req))
            .await?;
        return Ok(created(&name, &d));
    }
    let s = st.registry.start_upload(name.as_str()).await?;
    Ok(accepted_with(&name, s, st.registry.chunk_min_length()))
}

/// GET: where the upload stands.
pub async fn status(st: &AppState, name: RepoName, id: &str) -> Result<Response, ApiError> {
    let id = upload_id(id)?;
    let s = st.registry.upload_status(name.as_str(), id).await?;
    let mut r = accepted(&name, s);
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// Parses `Content-Range: <start>-<end>` ([`berth_oci::range::parse_content_range`]).
fn chunk_range(h: &str) -> Result<ChunkRange, ApiError> {
    let (start, end) = berth_oci::range::parse_content_range(h).ok_or_else(|| {
        Refusal::ContentRangeInvalid(format!(
            "malformed Content-Range {h:?}: expected <start>-<end>"
        ))
    })?;
    Ok(ChunkRange { start, end })
}

/// The request's body with its `Content-Range` and `Content-Length`.
fn chunk(req: Request<Body>) -> Result<Chunk, ApiError> {
    let range = match req.headers().get("content-range") {
        None => None,
        Some(v) => Some(chunk_range(v.to_str().map_err(|_| {
            Refusal::ContentRangeInvalid("Content-Range is not ASCII".into())
        })?)?),
    };
    Ok(Chunk {
        range,
        content_length: content_length(req.headers()),
        body: body_stream(req),
    })
}

/// PATCH: append a chunk.
pub async fn patch(
    st: &AppState,
    name: RepoName,
    id: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let id = upload_id(id)?;
    let s = st
        .registry
        .patch_upload(name.as_str(), id, chunk(req)?)
        .await?;
    Ok(accepted(&name, s))
}

/// PUT `?digest=`: close the upload, with an optional last chunk.
pub async fn put(
    st: &AppState,
    name: RepoName,
    id: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let id = upload_id(id)?;
    let q = query_pairs(&req);
    let d = match query_get(&q, "digest").map(digest) {
        Some(Ok(d)) => d,
        bad => {
            // A closing PUT without a usable digest ends the session (CONTRACT.md).
            st.registry.cancel_upload(name.as_str(), id).await?;
            return Err(match bad {
                Some(Err(e)) => e,
                _ => Refusal::DigestRequired.into(),
            });
        }
    };
    let has_body = content_length(req.headers()).map_or_else(
        || header_str(req.headers(), "transfer-encoding").is_some(),
        |n| n > 0,
    );
    let last = if has_body { Some(chunk(req)?) } else { None };
    st.registry
        .finish_upload(name.as_str(), id, &d, last)
        .await?;
    Ok(created(&name, &d))
}

/// DELETE: cancel the upload.
pub async fn cancel(st: &AppState, name: RepoName, id: &str) -> Result<Response, ApiError> {
    let id = upload_id(id)?;
    st.registry.cancel_upload(name.as_str(), id).await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        // The rule's table is in `berth_oci::range`; this checks the mapping.
        let r = chunk_range("bytes 10-20/*").unwrap();
        assert_eq!((r.start, r.end), (10, 20));
        assert!(chunk_range("1-").is_err());
    }
}
