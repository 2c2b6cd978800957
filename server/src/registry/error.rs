//! Registry errors, in OCI terms; `crate::error` maps them onto the wire.

use berth_oci::Digest;

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
    /// A berth API object (worker, job, mirror, user ...) that does not exist, or that the
    /// caller may not see.
    #[error("{0} not found")]
    NotFound(String),
    /// The caller may not do this to an object that exists.
    #[error("{0}")]
    Forbidden(String),
    /// A verification worker reported on, or extended, a lease it no longer holds.
    #[error("job {0}: the lease is no longer yours (it expired and the job went to another worker, or it finished)")]
    LeaseLost(i64),
    /// A write that would move or remove an immutable tag (`[[tags.immutable]]`).
    #[error("{action}: tag {tag} is immutable ({rule}); it points at {target}")]
    Immutable {
        /// What was refused (`cannot move tag v1 of app to sha256:…`).
        action: String,
        /// The immutable tag.
        tag: String,
        /// What it points at.
        target: Digest,
        /// The rule that makes it immutable.
        rule: String,
    },
    /// The operation conflicts with one in progress (a garbage collection run).
    #[error("{0}")]
    Conflict(String),
    /// A malformed berth API request (`/berth/v1/`).
    #[error("{0}")]
    RequestInvalid(String),
    /// Something berth stored itself cannot be read back.
    #[error("{0}")]
    Corrupt(String),
    /// The store or the database failed.
    #[error(transparent)]
    Storage(#[from] berth_storage::Error),
}
