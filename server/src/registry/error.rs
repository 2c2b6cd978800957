//! Registry errors, in OCI terms; `crate::error` maps them onto the wire.

use crate::error::ApiError;
use axum::http::StatusCode;
use berth_oci::{Digest, ErrorCode};
use serde_json::json;

/// What can go wrong in a registry operation.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The blob is not in this repository.
    #[error("blob {0} unknown")]
    BlobUnknown(Digest),
    /// No such manifest or tag.
    #[error("manifest {0} unknown")]
    ManifestUnknown(String),
    /// No such repository.
    #[error("repository {0} unknown")]
    NameUnknown(String),
    /// No such upload (or not in this repository).
    #[error("upload {0} unknown")]
    UploadUnknown(String),
    /// The content does not hash to the digest given.
    #[error("digest mismatch: client said {want}, content is {got}")]
    DigestMismatch {
        /// Claimed.
        want: Digest,
        /// Computed.
        got: Digest,
    },
    /// A chunk that does not start where the upload ends.
    #[error("chunk starts at {got}, but the upload holds {want} bytes")]
    OutOfOrder {
        /// Bytes stored.
        want: u64,
        /// Start of the chunk.
        got: u64,
    },
    /// A malformed upload request.
    #[error("{0}")]
    UploadInvalid(String),
    /// A manifest refused by validation.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// A manifest referencing something that is not there.
    #[error("manifest references unknown blob or manifest {0}")]
    ManifestBlobUnknown(Digest),
    /// A non-distributable layer whose URLs the foreign-layer policy refuses. The spec answers
    /// a manifest whose layers the registry will not accept with MANIFEST_BLOB_UNKNOWN.
    #[error("{what}: foreign layer {digest}: {why}")]
    ForeignLayerRefused {
        /// Which descriptor (`layers[0]`).
        what: String,
        /// The layer.
        digest: Digest,
        /// Which rule refused which URL.
        why: String,
    },
    /// Deletes are switched off.
    #[error("deletes are disabled on this registry")]
    DeleteDisabled,
    /// A verification gate refused: required checks are missing or did not pass.
    #[error("{what}: required verifications have not passed: {}", missing.join("; "))]
    Unverified {
        /// What was refused (`tag prod`, `pull of prod`).
        what: String,
        /// One line per missing check.
        missing: Vec<String>,
    },
    /// The store or the database failed.
    #[error(transparent)]
    Storage(#[from] berth_storage::Error),
}

pub(crate) fn range_header(len: u64) -> String {
    if len == 0 {
        "0-0".into()
    } else {
        format!("0-{}", len - 1)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use RegistryError as E;
        let msg = e.to_string();
        // Exhaustive on purpose: a new variant must choose its wire code.
        match e {
            E::BlobUnknown(d) => {
                ApiError::oci(ErrorCode::BlobUnknown, msg).detail(json!({ "digest": d }))
            }
            E::ManifestUnknown(r) => {
                ApiError::oci(ErrorCode::ManifestUnknown, msg).detail(json!({ "reference": r }))
            }
            E::NameUnknown(n) => {
                ApiError::oci(ErrorCode::NameUnknown, msg).detail(json!({ "name": n }))
            }
            E::UploadUnknown(_) => ApiError::oci(ErrorCode::BlobUploadUnknown, msg),
            E::DigestMismatch { .. } => ApiError::oci(ErrorCode::DigestInvalid, msg),
            E::OutOfOrder { want, .. } => ApiError::oci(ErrorCode::BlobUploadInvalid, msg)
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("range", range_header(want)),
            E::UploadInvalid(_) => ApiError::oci(ErrorCode::BlobUploadInvalid, msg),
            E::ManifestInvalid(_) => ApiError::oci(ErrorCode::ManifestInvalid, msg),
            E::ManifestBlobUnknown(d) => {
                ApiError::oci(ErrorCode::ManifestBlobUnknown, msg).detail(json!({ "digest": d }))
            }
            E::ForeignLayerRefused { digest, .. } => {
                ApiError::oci(ErrorCode::ManifestBlobUnknown, msg)
                    .detail(json!({ "digest": digest }))
            }
            E::DeleteDisabled => ApiError::oci(ErrorCode::Unsupported, msg),
            E::Unverified { missing, .. } => {
                ApiError::oci(ErrorCode::Denied, msg).detail(json!({ "missing": missing }))
            }
            E::Storage(s) if s.is_storage_full() => ApiError::StorageFull(anyhow::Error::new(s)),
            E::Storage(s) => ApiError::Internal(anyhow::Error::new(s)),
        }
    }
}

pub(crate) use range_header as upload_range;
