//! The only place that turns errors into HTTP responses, in the spec's error format.
//!
//! Handlers and the layers below them speak in domain errors: [`RegistryError`] (the registry's
//! rules), [`CacheError`] (the pull-through cache's upstream) and [`Refusal`] (what the HTTP
//! layer itself refuses: a malformed request, missing credentials, a denied action). The
//! tables below give each its wire code, status, message and headers; nothing else builds an
//! error body. `snapshots/errors.txt` pins every one (see the test at the end).

use crate::mirror::proxy::CacheError;
use crate::registry::RegistryError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_auth::Action;
use berth_oci::ErrorCode;
use serde::Serialize;
use serde_json::json;
use std::borrow::Cow;

/// What the HTTP layer refuses on its own, before or beside the registry's rules.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No route has this path.
    #[error("no such endpoint")]
    NoEndpoint,
    /// The path exists, the method does not.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// A repository name that breaks the naming rules.
    #[error("{0}")]
    NameInvalid(String),
    /// A digest that does not parse.
    #[error("{0}")]
    DigestInvalid(String),
    /// A PUT to a reference that is neither a tag nor a digest.
    #[error("{0}")]
    TagInvalid(String),
    /// A GET, HEAD or DELETE of a reference that is neither a tag nor a digest: no manifest
    /// can have it.
    #[error("manifest unknown: {0}")]
    ReferenceUnknown(String),
    /// A malformed request to berth's own API or the token endpoint (query, JSON body,
    /// platform, page size, service, grant type ...).
    #[error("{0}")]
    BadRequest(String),
    /// A manifest larger than `limits.manifest_max_bytes`.
    #[error("manifest larger than the {0} bytes this registry accepts")]
    ManifestTooLarge(u64),
    /// A manifest body that broke off.
    #[error("manifest body not received: {0}")]
    ManifestNotReceived(String),
    /// A blob `Range` that starts past its end.
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable {
        /// The blob's length.
        total: u64,
    },
    /// A malformed `Content-Range` on an upload.
    #[error("{0}")]
    ContentRangeInvalid(String),
    /// An upload id that is not one of ours.
    #[error("upload unknown")]
    UploadIdUnknown,
    /// A closing upload PUT without `?digest=`.
    #[error("the closing PUT needs a ?digest= parameter")]
    DigestRequired,
    /// No (valid) credentials: the challenge tells the client where to get them.
    #[error("{message}")]
    Unauthenticated {
        /// What is wrong.
        message: &'static str,
        /// The `WWW-Authenticate` value.
        challenge: String,
    },
    /// Credentials or a refresh token that do not check out (at the token endpoint).
    #[error("{0}")]
    BadCredentials(&'static str),
    /// The caller may not do `action` on the repository.
    #[error("requested access to the resource is denied: {} on {repo}", action.as_str())]
    AccessDenied {
        /// Repository.
        repo: String,
        /// What was asked.
        action: Action,
    },
    /// The caller may not do this (admin rights, anonymous workers ...).
    #[error("{0}")]
    Denied(Cow<'static, str>),
    /// The request conflicts with the state of a berth object (a running mirror, a mirror
    /// defined in the configuration file).
    #[error("{0}")]
    Conflict(String),
    /// Too many failed logins from this client.
    #[error("too many failed logins; try again later")]
    TooManyFailedLogins {
        /// Seconds until the next attempt is allowed.
        retry_after: u64,
    },
    /// Every password-verification slot is taken.
    #[error("too many logins in progress; try again shortly")]
    LoginsBusy,
    /// A berth API object (user, robot, mirror, run ...) that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// `/auth/token` on a registry without token auth.
    #[error("token authentication is not enabled")]
    TokenAuthDisabled,
}

/// An error on its way to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A spec error with its code, status, message and extra headers.
    #[error("{code:?}: {message}")]
    Oci {
        /// Spec code.
        code: ErrorCode,
        /// Human-readable message.
        message: String,
        /// Optional structured detail.
        detail: Option<serde_json::Value>,
        /// The status it answers with.
        status: StatusCode,
        /// Extra headers (Range on 416, Content-Range, WWW-Authenticate, Retry-After ...).
        headers: Vec<(&'static str, HeaderValue)>,
    },
    /// The pull-through cache's upstream failed: 502 (the cause is logged where it happened).
    #[error("upstream: {0}")]
    Upstream(String),
    /// The disk or database is full: 507, nothing half-written is kept.
    #[error("storage full: {0}")]
    StorageFull(anyhow::Error),
    /// Something broke inside; the cause is logged, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn oci(code: ErrorCode, message: String) -> Self {
        ApiError::Oci {
            code,
            message,
            detail: None,
            status: status_of(code),
            headers: Vec::new(),
        }
    }

    fn detail(mut self, d: serde_json::Value) -> Self {
        if let ApiError::Oci { detail, .. } = &mut self {
            *detail = Some(d);
        }
        self
    }

    fn status(mut self, s: StatusCode) -> Self {
        if let ApiError::Oci { status, .. } = &mut self {
            *status = s;
        }
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Self {
        if let (ApiError::Oci { headers, .. }, Ok(v)) = (&mut self, HeaderValue::try_from(value)) {
            headers.push((name, v));
        }
        self
    }

    /// The spec code, for errors that have one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Oci { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The status a code answers with, unless its row in a table below says otherwise.
pub const fn status_of(c: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match c {
        BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown => StatusCode::NOT_FOUND,
        BlobUploadInvalid | DigestInvalid | ManifestBlobUnknown | ManifestInvalid | NameInvalid
        | SizeInvalid => StatusCode::BAD_REQUEST,
        Unauthorized => StatusCode::UNAUTHORIZED,
        Denied => StatusCode::FORBIDDEN,
        Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// The `Range` value of an upload holding `len` bytes (`0-0` when empty, as distribution).
pub fn upload_range(len: u64) -> String {
    if len == 0 {
        "0-0".into()
    } else {
        format!("0-{}", len - 1)
    }
}

impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> Self {
        use ErrorCode as C;
        use Refusal as R;
        let msg = e.to_string();
        // Exhaustive on purpose: a new variant must choose its wire code.
        match e {
            R::NoEndpoint => ApiError::oci(C::NameUnknown, msg),
            R::MethodNotAllowed => ApiError::oci(C::Unsupported, msg),
            R::NameInvalid(_) => ApiError::oci(C::NameInvalid, msg),
            R::DigestInvalid(_) | R::DigestRequired => ApiError::oci(C::DigestInvalid, msg),
            R::TagInvalid(_) | R::ManifestNotReceived(_) => ApiError::oci(C::ManifestInvalid, msg),
            R::ReferenceUnknown(_) => ApiError::oci(C::ManifestUnknown, msg),
            R::BadRequest(_) => ApiError::oci(C::Unsupported, msg).status(StatusCode::BAD_REQUEST),
            R::ManifestTooLarge(_) => {
                ApiError::oci(C::SizeInvalid, msg).status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            R::RangeNotSatisfiable { total } => ApiError::oci(C::BlobUnknown, msg)
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("content-range", format!("bytes */{total}")),
            R::ContentRangeInvalid(_) => ApiError::oci(C::BlobUploadInvalid, msg),
            R::UploadIdUnknown => ApiError::oci(C::BlobUploadUnknown, msg),
            R::Unauthenticated { challenge, .. } => {
                ApiError::oci(C::Unauthorized, msg).header("www-authenticate", challenge)
            }
            R::BadCredentials(_) => ApiError::oci(C::Unauthorized, msg),
            R::AccessDenied { repo, action } => ApiError::oci(C::Denied, msg)
                .detail(json!({"name": repo, "action": action.as_str()})),
            R::Denied(_) => ApiError::oci(C::Denied, msg),
            R::Conflict(_) => ApiError::oci(C::Denied, msg).status(StatusCode::CONFLICT),
            R::TooManyFailedLogins { retry_after } => ApiError::oci(C::TooManyRequests, msg)
                .header("retry-after", retry_after.to_string()),
            R::LoginsBusy => {
                ApiError::oci(C::TooManyRequests, msg).header("retry-after", "1".into())
            }
            R::NotFound(_) => ApiError::oci(C::NameUnknown, msg),
            R::TokenAuthDisabled => {
                ApiError::oci(C::Unsupported, msg).status(StatusCode::NOT_FOUND)
            }
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use ErrorCode as C;
        use RegistryError as E;
        let msg = e.to_string();
        // Exhaustive on purpose: a new variant must choose its wire code.
        match e {
            E::BlobUnknown(d) => ApiError::oci(C::BlobUnknown, msg).detail(json!({ "digest": d })),
            E::ManifestUnknown(r) => {
                ApiError::oci(C::ManifestUnknown, msg).detail(json!({ "reference": r }))
            }
            E::NameUnknown(n) => ApiError::oci(C::NameUnknown, msg).detail(json!({ "name": n })),
            E::UploadUnknown(_) => ApiError::oci(C::BlobUploadUnknown, msg),
            E::DigestMismatch { .. } => ApiError::oci(C::DigestInvalid, msg),
            E::OutOfOrder { want, .. } => ApiError::oci(C::BlobUploadInvalid, msg)
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("range", upload_range(want)),
            E::UploadInvalid(_) => ApiError::oci(C::BlobUploadInvalid, msg),
            // docker prints `manifest invalid: <message>`: the message does not say it again.
            E::ManifestInvalid(m) => ApiError::oci(C::ManifestInvalid, m),
            E::ManifestBlobUnknown(d) => {
                ApiError::oci(C::ManifestBlobUnknown, msg).detail(json!({ "digest": d }))
            }
            // The spec answers a manifest whose layers the registry will not accept with
            // MANIFEST_BLOB_UNKNOWN.
            E::ForeignLayerRefused { digest, .. } => {
                ApiError::oci(C::ManifestBlobUnknown, msg).detail(json!({ "digest": digest }))
            }
            E::DeleteDisabled => ApiError::oci(C::Unsupported, msg),
            E::Unverified { missing, .. } => {
                ApiError::oci(C::Denied, msg).detail(json!({ "missing": missing }))
            }
            E::NotFound(_) => ApiError::oci(C::NameUnknown, msg),
            E::Forbidden(_) => ApiError::oci(C::Denied, msg),
            E::Immutable { tag, target, .. } => {
                ApiError::oci(C::Denied, msg).detail(json!({ "tag": tag, "digest": target }))
            }
            E::LeaseLost(_) => ApiError::oci(C::Denied, msg).status(StatusCode::CONFLICT),
            E::Conflict(_) => ApiError::oci(C::Denied, msg).status(StatusCode::CONFLICT),
            E::RequestInvalid(_) => {
                ApiError::oci(C::Unsupported, msg).status(StatusCode::BAD_REQUEST)
            }
            E::Corrupt(m) => ApiError::Internal(anyhow::anyhow!(m)),
            E::Storage(berth_storage::Error::Quota { .. }) => ApiError::oci(C::Denied, msg),
            E::Storage(s) if s.is_storage_full() => ApiError::StorageFull(anyhow::Error::new(s)),
            E::Storage(s) => ApiError::Internal(anyhow::Error::new(s)),
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        let msg = e.to_string();
        match e {
            CacheError::RateLimited { retry_after } => {
                let e = ApiError::oci(ErrorCode::TooManyRequests, msg);
                match retry_after {
                    Some(r) => e.header("retry-after", r),
                    None => e,
                }
            }
            CacheError::NotFoundUpstream => ApiError::oci(ErrorCode::ManifestUnknown, msg),
            // No spec code says "bad gateway"; UNKNOWN is what 5xx answers carry.
            CacheError::Unavailable | CacheError::Failed => ApiError::Upstream(msg),
            CacheError::Registry(e) => e.into(),
        }
    }
}

impl From<berth_storage::Error> for ApiError {
    /// Storage failures of the services beside the registry (accounts, token records, the
    /// mirror's bookkeeping): always internal (or 507), as the registry's own are.
    fn from(e: berth_storage::Error) -> Self {
        RegistryError::Storage(e).into()
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    errors: [Item<'a>; 1],
}

#[derive(Serialize)]
struct Item<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

fn json_response(status: StatusCode, code: &str, message: &str) -> Response {
    let env = Envelope {
        errors: [Item {
            code,
            message,
            detail: None,
        }],
    };
    let mut r = (status, serde_json::to_vec(&env).unwrap_or_default()).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Oci {
                code,
                message,
                detail,
                status,
                headers,
            } => {
                let env = Envelope {
                    errors: [Item {
                        code: code.as_str(),
                        message: &message,
                        detail: detail.as_ref(),
                    }],
                };
                let body = serde_json::to_vec(&env).unwrap_or_default();
                tracing::debug!(error.code = code.as_str(), error.message = %message, "request refused");
                let mut r = (status, body).into_response();
                r.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                for (k, v) in headers {
                    r.headers_mut().insert(k, v);
                }
                r
            }
            ApiError::Upstream(message) => {
                json_response(StatusCode::BAD_GATEWAY, "UNKNOWN", &message)
            }
            ApiError::StorageFull(e) => {
                tracing::error!(error = format!("{e:#}"), "storage full");
                json_response(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "UNKNOWN",
                    "registry storage is full",
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::Digest;

    fn samples() -> Vec<(&'static str, ApiError)> {
        let d = Digest::sha256(b"x");
        let r = |e: Refusal| ApiError::from(e);
        let g = |e: RegistryError| ApiError::from(e);
        vec![
            ("Refusal::NoEndpoint", r(Refusal::NoEndpoint)),
            ("Refusal::MethodNotAllowed", r(Refusal::MethodNotAllowed)),
            (
                "Refusal::NameInvalid",
                r(Refusal::NameInvalid("invalid repository name \"A\"".into())),
            ),
            (
                "Refusal::DigestInvalid",
                r(Refusal::DigestInvalid(
                    "unsupported digest algorithm \"md5\"".into(),
                )),
            ),
            (
                "Refusal::TagInvalid",
                r(Refusal::TagInvalid("invalid tag \"-x\"".into())),
            ),
            (
                "Refusal::ReferenceUnknown",
                r(Refusal::ReferenceUnknown("invalid tag \"-x\"".into())),
            ),
            (
                "Refusal::BadRequest",
                r(Refusal::BadRequest("invalid page size n=-1".into())),
            ),
            (
                "Refusal::ManifestTooLarge",
                r(Refusal::ManifestTooLarge(4 << 20)),
            ),
            (
                "Refusal::ManifestNotReceived",
                r(Refusal::ManifestNotReceived("connection reset".into())),
            ),
            (
                "Refusal::RangeNotSatisfiable",
                r(Refusal::RangeNotSatisfiable { total: 10 }),
            ),
            (
                "Refusal::ContentRangeInvalid",
                r(Refusal::ContentRangeInvalid(
                    "Content-Range is not ASCII".into(),
                )),
            ),
            ("Refusal::UploadIdUnknown", r(Refusal::UploadIdUnknown)),
            ("Refusal::DigestRequired", r(Refusal::DigestRequired)),
            (
                "Refusal::Unauthenticated",
                r(Refusal::Unauthenticated {
                    message: "authentication required",
                    challenge: "Bearer realm=\"https://r.example/auth/token\",service=\"berth\""
                        .into(),
                }),
            ),
            (
                "Refusal::BadCredentials",
                r(Refusal::BadCredentials("invalid username or password")),
            ),
            (
                "Refusal::AccessDenied",
                r(Refusal::AccessDenied {
                    repo: "team/app".into(),
                    action: Action::Push,
                }),
            ),
            (
                "Refusal::Denied",
                r(Refusal::Denied("admin rights required".into())),
            ),
            (
                "Refusal::Conflict",
                r(Refusal::Conflict("mirror m is running".into())),
            ),
            (
                "Refusal::TooManyFailedLogins",
                r(Refusal::TooManyFailedLogins { retry_after: 30 }),
            ),
            ("Refusal::LoginsBusy", r(Refusal::LoginsBusy)),
            ("Refusal::NotFound", r(Refusal::NotFound("user bob".into()))),
            ("Refusal::TokenAuthDisabled", r(Refusal::TokenAuthDisabled)),
            (
                "RegistryError::BlobUnknown",
                g(RegistryError::BlobUnknown(d.clone())),
            ),
            (
                "RegistryError::ManifestUnknown",
                g(RegistryError::ManifestUnknown("v1".into())),
            ),
            (
                "RegistryError::NameUnknown",
                g(RegistryError::NameUnknown("team/app".into())),
            ),
            (
                "RegistryError::UploadUnknown",
                g(RegistryError::UploadUnknown("0f9e".into())),
            ),
            (
                "RegistryError::DigestMismatch",
                g(RegistryError::DigestMismatch {
                    want: d.clone(),
                    got: Digest::sha256(b"y"),
                }),
            ),
            (
                "RegistryError::OutOfOrder",
                g(RegistryError::OutOfOrder { want: 5, got: 7 }),
            ),
            (
                "RegistryError::OutOfOrder (empty)",
                g(RegistryError::OutOfOrder { want: 0, got: 7 }),
            ),
            (
                "RegistryError::UploadInvalid",
                g(RegistryError::UploadInvalid(
                    "chunk not received: reset".into(),
                )),
            ),
            (
                "RegistryError::ManifestInvalid",
                g(RegistryError::ManifestInvalid(
                    "missing field `layers`".into(),
                )),
            ),
            (
                "RegistryError::ManifestBlobUnknown",
                g(RegistryError::ManifestBlobUnknown(d.clone())),
            ),
            (
                "RegistryError::ForeignLayerRefused",
                g(RegistryError::ForeignLayerRefused {
                    what: "layers[0]".into(),
                    digest: d.clone(),
                    why: "http://x/ is not https".into(),
                }),
            ),
            (
                "RegistryError::DeleteDisabled",
                g(RegistryError::DeleteDisabled),
            ),
            (
                "RegistryError::Unverified",
                g(RegistryError::Unverified {
                    what: "tag prod".into(),
                    missing: vec!["linux/amd64 process: missing".into()],
                }),
            ),
            (
                "RegistryError::NotFound",
                g(RegistryError::NotFound("job 7".into())),
            ),
            (
                "RegistryError::Forbidden",
                g(RegistryError::Forbidden(
                    "worker 1 belongs to another principal".into(),
                )),
            ),
            (
                "RegistryError::Immutable",
                g(RegistryError::Immutable {
                    action: format!(
                        "cannot move tag v1 of release/app to {}",
                        Digest::sha256(b"y")
                    ),
                    tag: "v1".into(),
                    target: d.clone(),
                    rule: "rule tags.immutable[0]: pattern = \"release/**\", tags = [\"v*\"]"
                        .into(),
                }),
            ),
            ("RegistryError::LeaseLost", g(RegistryError::LeaseLost(7))),
            (
                "RegistryError::Conflict",
                g(RegistryError::Conflict(
                    "garbage collection run 3 is in progress".into(),
                )),
            ),
            (
                "RegistryError::RequestInvalid",
                g(RegistryError::RequestInvalid(
                    "worker offers no isolation mode".into(),
                )),
            ),
            (
                "RegistryError::Corrupt",
                g(RegistryError::Corrupt(
                    "stored worker registration: eof".into(),
                )),
            ),
            (
                "RegistryError::Storage",
                g(RegistryError::Storage(berth_storage::Error::NotFound)),
            ),
            (
                "RegistryError::Storage (disk full)",
                g(RegistryError::Storage(berth_storage::Error::Io(
                    std::io::Error::from(std::io::ErrorKind::StorageFull),
                ))),
            ),
            (
                "CacheError::RateLimited",
                ApiError::from(CacheError::RateLimited {
                    retry_after: Some("7".into()),
                }),
            ),
            (
                "CacheError::RateLimited (no Retry-After)",
                ApiError::from(CacheError::RateLimited { retry_after: None }),
            ),
            (
                "CacheError::NotFoundUpstream",
                ApiError::from(CacheError::NotFoundUpstream),
            ),
            (
                "CacheError::Unavailable",
                ApiError::from(CacheError::Unavailable),
            ),
            ("CacheError::Failed", ApiError::from(CacheError::Failed)),
            (
                "CacheError::Registry",
                ApiError::from(CacheError::Registry(RegistryError::ManifestUnknown(
                    "not found upstream".into(),
                ))),
            ),
        ]
    }

    async fn render(name: &str, e: ApiError) -> String {
        let r = e.into_response();
        let mut out = format!("== {name}\n{}\n", r.status());
        let mut headers: Vec<_> = r
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str() != "content-length")
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        headers.sort();
        for h in headers {
            out.push_str(&h);
            out.push('\n');
        }
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        out.push_str(std::str::from_utf8(&body).unwrap());
        out.push_str("\n\n");
        out
    }

    /// The wire form of every error berth answers. Regenerate with
    /// `BERTH_UPDATE_SNAPSHOTS=1 cargo test --release --workspace -- every_error_renders` and
    /// review the diff.
    #[tokio::test]
    async fn every_error_renders_as_pinned() {
        let mut got = String::new();
        for (name, e) in samples() {
            got.push_str(&render(name, e).await);
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/snapshots/errors.txt");
        if std::env::var_os("BERTH_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            got == want,
            "error bodies changed; review and regenerate {path}:\n{}",
            diff(&want, &got)
        );
        // Every spec code berth uses is pinned at least once.
        for c in ErrorCode::ALL {
            assert!(
                got.contains(&format!("\"code\":\"{}\"", c.as_str())),
                "{c:?} is in no snapshot"
            );
        }
    }

    fn diff(want: &str, got: &str) -> String {
        let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
        let mut out = String::new();
        for i in 0..w.len().max(g.len()) {
            let (a, b) = (w.get(i).copied(), g.get(i).copied());
            if a != b {
                out.push_str(&format!(
                    "line {}:\n- {}\n+ {}\n",
                    i + 1,
                    a.unwrap_or(""),
                    b.unwrap_or("")
                ));
            }
        }
        out
    }
}
