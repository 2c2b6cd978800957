//! HTTP only: parse the path and headers, call `registry`, shape the response.
//!
//! Repository names contain `/`, so every `/v2/<name>/...` request goes through one catch-all
//! route and [`OciPath::parse`] reads the path from the right, where the reference, digest and
//! upload id never contain `/`. Routes call `registry`; `registry` never calls routes.

pub mod admin;
pub mod api;
mod blobs;
mod catalog;
pub mod gc;
mod manifests;
pub mod mirrors;
pub mod quotas;
mod referrers;
pub mod retention;
pub mod token;
mod uploads;
pub mod verify;

use crate::auth::{Caller, Need};
use crate::error::{ApiError, Refusal};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request};
use axum::response::{IntoResponse, Response};
use berth_auth::Action;
use berth_oci::{Digest, Reference};
use uuid::Uuid;

pub use catalog::catalog;

pub use berth_oci::OciPath;

fn not_found() -> ApiError {
    Refusal::NoEndpoint.into()
}

/// Parses a digest from a request, as DIGEST_INVALID on failure.
pub fn digest(s: &str) -> Result<Digest, ApiError> {
    s.parse()
        .map_err(|e: berth_oci::DigestError| Refusal::DigestInvalid(e.to_string()).into())
}

pub(crate) fn reference(s: &str) -> Result<Reference, ApiError> {
    s.parse().map_err(|e| match e {
        berth_oci::reference::ReferenceError::Digest(d) => {
            Refusal::DigestInvalid(d.to_string()).into()
        }
        berth_oci::reference::ReferenceError::Tag(t) => bad_tag(t.to_string()),
    })
}

fn bad_tag(why: String) -> ApiError {
    Refusal::TagInvalid(why).into()
}

/// [`OciPath::parse`] with its refusals as the spec's errors: NAME_UNKNOWN for no endpoint,
/// NAME_INVALID, DIGEST_INVALID.
pub fn parse_path(rest: &str) -> Result<OciPath, ApiError> {
    OciPath::parse(rest).map_err(|e| match e {
        berth_oci::PathError::NoEndpoint => not_found(),
        berth_oci::PathError::NameInvalid(m) => Refusal::NameInvalid(m).into(),
        berth_oci::PathError::DigestInvalid(m) => Refusal::DigestInvalid(m).into(),
    })
}

fn unsupported() -> ApiError {
    Refusal::MethodNotAllowed.into()
}

/// `GET /v2/`: the API version check (and, under token auth, the login probe).
pub async fn base(State(st): State<AppState>, req: Request<Body>) -> Result<Response, ApiError> {
    if let Some(a) = &st.auth {
        a.check(req.headers(), req.extensions(), &Need::Base)?;
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response())
}

/// What a request on `path` with `method` needs.
fn need(method: &Method, path: &OciPath) -> Need {
    let (repo, action) = match path {
        OciPath::Manifest { name, .. }
        | OciPath::ManifestBadTag { name, .. }
        | OciPath::Blob { name, .. } => (
            name,
            match *method {
                Method::PUT | Method::POST | Method::PATCH => Action::Push,
                Method::DELETE => Action::Delete,
                _ => Action::Pull,
            },
        ),
        OciPath::UploadStart { name } | OciPath::Upload { name, .. } => (name, Action::Push),
        OciPath::Tags { name } | OciPath::Referrers { name, .. } => (name, Action::Pull),
    };
    Need::Repo(repo.as_str().to_owned(), action)
}

/// The text after `/v2/`, percent-decoded. Bytes that are not UTF-8 become U+FFFD, which no
/// name, tag, digest or upload id may contain, so such a path is refused by the rule of the part
/// it is in (NAME_INVALID, MANIFEST_UNKNOWN, ...) with the spec's JSON body, where axum's own
/// `Path` extractor would answer plain text.
fn v2_rest(req: &Request<Body>) -> String {
    let raw = req.uri().path();
    let raw = raw.strip_prefix("/v2/").unwrap_or(raw);
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// Every `/v2/<name>/...` request.
pub async fn dispatch(
    State(st): State<AppState>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let path = parse_path(&v2_rest(&req))?;
    let method = req.method().clone();
    let caller = match &st.auth {
        Some(a) => a.check(req.headers(), req.extensions(), &need(&method, &path))?,
        None => Caller::Open,
    };
    match (method, path) {
        (Method::GET | Method::HEAD, OciPath::Manifest { name, reference }) => {
            st.mirrors
                .ensure_manifest(name.as_str(), &reference)
                .await?;
            manifests::get(&st, name, reference, req).await
        }
        (Method::PUT, OciPath::Manifest { name, reference }) => {
            manifests::put(&st, name, reference, req).await
        }
        (Method::DELETE, OciPath::Manifest { name, reference }) => {
            manifests::delete(&st, name, reference).await
        }
        (Method::GET | Method::HEAD | Method::DELETE, OciPath::ManifestBadTag { why, .. }) => {
            Err(Refusal::ReferenceUnknown(why).into())
        }
        (Method::PUT, OciPath::ManifestBadTag { why, .. }) => Err(bad_tag(why)),
        (ref m @ (Method::GET | Method::HEAD), OciPath::Blob { name, digest }) => {
            let whole_get = *m == Method::GET && !req.headers().contains_key("range");
            if let Some(b) = st
                .mirrors
                .stream_blob_miss(name.as_str(), &digest, whole_get)
                .await?
            {
                return blobs::streamed(&digest, b);
            }
            st.mirrors.ensure_blob(name.as_str(), &digest).await?;
            blobs::get(&st, name, digest, req).await
        }
        (Method::DELETE, OciPath::Blob { name, digest }) => blobs::delete(&st, name, digest).await,
        (Method::POST, OciPath::UploadStart { name }) => {
            uploads::start(&st, name, &caller, req).await
        }
        (Method::GET, OciPath::Upload { name, id }) => uploads::status(&st, name, &id).await,
        (Method::PATCH, OciPath::Upload { name, id }) => uploads::patch(&st, name, &id, req).await,
        (Method::PUT, OciPath::Upload { name, id }) => uploads::put(&st, name, &id, req).await,
        (Method::DELETE, OciPath::Upload { name, id }) => uploads::cancel(&st, name, &id).await,
        (Method::GET, OciPath::Tags { name }) => catalog::tags(&st, name, req).await,
        (Method::GET, OciPath::Referrers { name, digest }) => {
            referrers::list(&st, name, digest, req).await
        }
        _ => Err(unsupported()),
    }
}

/// Parses an upload id; anything that is not one of ours is an unknown upload.
fn upload_id(s: &str) -> Result<Uuid, ApiError> {
    s.parse::<Uuid>()
        .map_err(|_| Refusal::UploadIdUnknown.into())
}

/// Query parameters, repeated keys kept in order.
fn query_pairs(req: &Request<Body>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    header_str(h, "content-length").and_then(|v| v.trim().parse().ok())
}

/// The request body as a byte stream for the store.
fn body_stream(req: Request<Body>) -> berth_storage::blob::ByteStream {
    use futures::TryStreamExt;
    Box::pin(
        req.into_body()
            .into_data_stream()
            .map_err(std::io::Error::other),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::ErrorCode;

    fn code(r: Result<OciPath, ApiError>) -> Option<ErrorCode> {
        r.err().and_then(|e| e.code())
    }

    #[test]
    fn maps_bad_parts_to_codes() {
        assert_eq!(
            code(parse_path("A/manifests/v1")),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(
            code(parse_path("a//b/manifests/v1")),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(
            code(parse_path("a/blobs/sha256:zz")),
            Some(ErrorCode::DigestInvalid)
        );
        assert_eq!(
            code(parse_path("a/manifests/sha256:zz")),
            Some(ErrorCode::DigestInvalid)
        );
        assert!(matches!(
            parse_path("a/manifests/-bad"),
            Ok(OciPath::ManifestBadTag { .. })
        ));
        assert!(matches!(
            parse_path("a/manifests/.INVALID_MANIFEST_NAME"),
            Ok(OciPath::ManifestBadTag { .. })
        ));
        assert_eq!(
            code(parse_path("a/whatever/x")),
            Some(ErrorCode::NameUnknown)
        );
        let long = format!("{}/manifests/v1", "a".repeat(256));
        assert_eq!(code(parse_path(&long)), Some(ErrorCode::NameInvalid));
    }
}
