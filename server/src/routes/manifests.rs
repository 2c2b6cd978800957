//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>` (spec end-3, end-7, end-9).

use super::{header_str, query_pairs};
use crate::error::{ApiError, Refusal};
use crate::registry::PutMode;
use crate::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Reference, RepoName};
use http_body_util::BodyExt;

/// GET or HEAD: the exact bytes, with the media type they were pushed with.
pub async fn get(
    st: &AppState,
    name: RepoName,
    reference: Reference,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let accepts = accepted_types(req.headers());
    let m = st
        .registry
        .pull_manifest(name.as_str(), &reference, &accepts)
        .await?;
    let ct = HeaderValue::from_str(&m.media_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let digest =
        HeaderValue::from_str(m.digest.as_str()).map_err(|e| ApiError::Internal(e.into()))?;
    let headers = [
        (header::CONTENT_TYPE, ct),
        (
            HeaderName::from_static("docker-content-digest"),
            digest.clone(),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(m.content.len())),
        (
            header::ETAG,
            HeaderValue::from_str(&format!("\"{}\"", m.digest)).unwrap_or(digest),
        ),
    ];
    if req.method() == Method::HEAD {
        return Ok((StatusCode::OK, headers).into_response());
    }
    Ok((StatusCode::OK, headers, Body::from(m.content.clone())).into_response())
}

/// Every `Accept` header of the request (values that are not text are skipped).
fn accepted_types(h: &HeaderMap) -> berth_oci::accept::Accept {
    berth_oci::accept::Accept::parse(
        h.get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// PUT: validate, store byte-exact, tag.
pub async fn put(
    st: &AppState,
    name: RepoName,
    reference: Reference,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let max = st.registry.settings.manifest_max_bytes;
    let too_big = || ApiError::from(Refusal::ManifestTooLarge(max));
    if super::content_length(req.headers()).is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let content_type = header_str(req.headers(), "content-type").map(str::to_owned);
    let q = query_pairs(&req);
    let tags: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let limited = http_body_util::Limited::new(req.into_body(), max as usize);
    let body = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(too_big())
        }
        Err(e) => return Err(Refusal::ManifestNotReceived(e.to_string()).into()),
    };
    let put = st
        .registry
        .put_manifest(
            name.as_str(),
            &reference,
            content_type.as_deref(),
            &body,
            &tags,
            PutMode::CLIENT,
        )
        .await?;
    let mut r = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                format!("/v2/{name}/manifests/{}", put.digest),
            ),
            (
                HeaderName::from_static("docker-content-digest"),
                put.digest.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
        .into_response();
    if let Some(s) = &put.subject {
        if let Ok(v) = HeaderValue::from_str(s.as_str()) {
            r.headers_mut().insert("oci-subject", v);
        }
    }
    for w in &put.warnings {
        // RFC 7234 warn-code 299, as the spec allows; each value at most 4096 bytes.
        let text: String = w.replace('"', "'").chars().take(4000).collect();
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    if matches!(reference, Reference::Digest(_)) {
        for t in &put.tags {
            if let Ok(v) = HeaderValue::from_str(t) {
                r.headers_mut().append("oci-tag", v);
            }
        }
    }
    Ok(r)
}

/// DELETE by digest (manifest and its tags) or by tag (the tag only).
pub async fn delete(
    st: &AppState,
    name: RepoName,
    reference: Reference,
) -> Result<Response, ApiError> {
    st.registry
        .delete_manifest(name.as_str(), &reference)
        .await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_become_media_ranges() {
        let mut h = HeaderMap::new();
        assert!(!accepted_types(&h).present);
        h.append(header::ACCEPT, HeaderValue::from_static("a/b, c/d;q=0.5"));
        h.append(header::ACCEPT, HeaderValue::from_static(" */* ;q=0.1,,"));
        let a = accepted_types(&h);
        let got: Vec<(&str, u16)> = a.ranges.iter().map(|r| (r.range.as_str(), r.q)).collect();
        assert_eq!(got, [("a/b", 1000), ("c/d", 500), ("*/*", 100)]);
    }
}
