//! Spec types and pure rules of the OCI Distribution and Image specs, as berth uses them.
//!
//! This crate does no I/O and knows nothing of HTTP or storage: every other berth crate
//! depends on it, and it depends on none of them. One module is berth's own rather than a spec's:
//! [`worker_protocol`], the pure types of berth's registry–verifier protocol.
#![warn(missing_docs)]

pub mod accept;
pub mod digest;
pub mod error_code;
pub mod image_config;
pub mod manifest;
pub mod media_type;
pub mod name;
pub mod path;
pub mod pattern;
pub mod platform;
pub mod range;
pub mod reference;
pub mod worker_protocol;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error_code::ErrorCode;
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use name::{NameError, RepoName};
pub use path::{OciPath, PathError};
pub use pattern::RepoPattern;
pub use reference::{Reference, Tag, TagError};
