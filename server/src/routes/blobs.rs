//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>` (spec end-2, end-10).

use super::header_str;
use crate::error::{ApiError, Refusal};
use crate::mirror::proxy::StreamedBlob;
use crate::AppState;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Digest, RepoName};
use berth_storage::blob::ByteRange;

/// A `Range` header's meaning for a blob of `total` bytes (the rule is `berth_oci::range`).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// Serve everything.
    Full,
    /// One satisfiable range.
    Part(ByteRange),
    /// A range that starts past the end.
    Unsatisfiable,
}

/// [`berth_oci::range::parse_range`] in the blob store's terms.
pub fn parse_range(h: Option<&str>, total: u64) -> RangeReq {
    use berth_oci::range::RangeRequest;
    match berth_oci::range::parse_range(h, total) {
        RangeRequest::Full => RangeReq::Full,
        RangeRequest::Part { start, end } => RangeReq::Part(ByteRange { start, end }),
        RangeRequest::Unsatisfiable => RangeReq::Unsatisfiable,
    }
}

fn digest_header(d: &Digest) -> HeaderValue {
    HeaderValue::from_str(d.as_str()).unwrap_or(HeaderValue::from_static(""))
}

/// GET or HEAD of a blob, with Range support.
pub async fn get(
    st: &AppState,
    name: RepoName,
    digest: Digest,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (total, blob) = st.registry.blob(name.as_str(), &digest).await?;
    let range = parse_range(header_str(req.headers(), "range"), total);
    let (status, part) = match range {
        RangeReq::Full => (StatusCode::OK, None),
        RangeReq::Part(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeReq::Unsatisfiable => {
            return Err(Refusal::RangeNotSatisfiable { total }.into());
        }
    };
    let len = part.map_or(total, |r| r.end - r.start);
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("docker-content-digest", digest_header(&digest))
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CACHE_CONTROL, "max-age=31536000");
    if let Some(r) = part {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{total}", r.start, r.end - 1),
        );
    }
    if req.method() == Method::HEAD {
        return builder
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.into()));
    }
    if let Some(url) = st.registry.redirect_url(&blob).await? {
        // The client fetches the bytes from the store itself (Range included).
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, url)
            .header("docker-content-digest", digest_header(&digest))
            .header(header::CONTENT_LENGTH, 0)
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.into()));
    }
    let body = st.registry.read_blob(&blob, part).await?;
    builder
        .body(Body::from_stream(body.stream))
        .map_err(|e| ApiError::Internal(e.into()))
}

/// A whole blob the pull-through cache streams from its upstream while it stores it.
pub fn streamed(digest: &Digest, b: StreamedBlob) -> Result<Response, ApiError> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, b.len)
        .header("docker-content-digest", digest_header(digest))
        .header(header::ETAG, format!("\"{digest}\""))
        .body(Body::from_stream(b.body))
        .map_err(|e| ApiError::Internal(e.into()))
}

/// DELETE of a blob: unlinks it from the repository.
pub async fn delete(st: &AppState, name: RepoName, digest: Digest) -> Result<Response, ApiError> {
    st.registry.delete_blob(name.as_str(), &digest).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule's table is in `berth_oci::range`; this checks the mapping.
    #[test]
    fn maps_the_rule() {
        assert_eq!(parse_range(None, 10), RangeReq::Full);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            RangeReq::Part(ByteRange { start: 0, end: 5 })
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeReq::Unsatisfiable);
    }
}
