//! The only place that turns errors into HTTP responses, in the spec's error format.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::ErrorCode;
use serde::Serialize;
use std::borrow::Cow;

/// An error on its way to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A spec error with its code, at the code's usual status (or `status` when set).
    #[error("{code:?}: {message}")]
    Oci {
        /// Spec code.
        code: ErrorCode,
        /// Human-readable message.
        message: Cow<'static, str>,
        /// Optional structured detail.
        detail: Option<serde_json::Value>,
        /// Status override (413, 416 ...).
        status: Option<StatusCode>,
        /// Extra headers (Range on 416, Content-Range ...).
        headers: Vec<(&'static str, HeaderValue)>,
    },
    /// The disk or database is full: 507, nothing half-written is kept.
    #[error("storage full: {0}")]
    StorageFull(anyhow::Error),
    /// Something broke inside; the cause is logged, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A spec error.
    pub fn oci(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::Oci {
            code,
            message: message.into(),
            detail: None,
            status: None,
            headers: Vec::new(),
        }
    }

    /// Adds a detail object.
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        if let ApiError::Oci { detail, .. } = &mut self {
            *detail = Some(d);
        }
        self
    }

    /// Overrides the status.
    pub fn status(mut self, s: StatusCode) -> Self {
        if let ApiError::Oci { status, .. } = &mut self {
            *status = Some(s);
        }
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: String) -> Self {
        if let (ApiError::Oci { headers, .. }, Ok(v)) = (&mut self, HeaderValue::try_from(value)) {
            headers.push((name, v));
        }
        self
    }
}

/// The status a code answers with, unless overridden.
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

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
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
                let status = status.unwrap_or(status_of(code));
                tracing::debug!(error.code = code.as_str(), error.message = %message, "request refused");
                let mut r = json_response(status, body);
                for (k, v) in headers {
                    r.headers_mut().insert(k, v);
                }
                r
            }
            ApiError::StorageFull(e) => {
                tracing::error!(error = format!("{e:#}"), "storage full");
                json_response(
                    StatusCode::INSUFFICIENT_STORAGE,
                    br#"{"errors":[{"code":"UNKNOWN","message":"registry storage is full"}]}"#
                        .to_vec(),
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    br#"{"errors":[{"code":"UNKNOWN","message":"internal server error"}]}"#
                        .to_vec(),
                )
            }
        }
    }
}

impl From<berth_storage::Error> for ApiError {
    // Only for errors that are internal wherever they happen; "not found" is named by the
    // caller before it gets here (see registry::RegistryError).
    fn from(e: berth_storage::Error) -> Self {
        if e.is_storage_full() {
            return ApiError::StorageFull(anyhow::Error::new(e));
        }
        ApiError::Internal(anyhow::Error::new(e))
    }
}
