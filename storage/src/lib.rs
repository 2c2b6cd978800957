//! Everything berth keeps: blob bytes (`blob`), upload sessions and metadata (`meta`).
//!
//! Uses `berth-oci` for its types; knows nothing of HTTP. The registry rules that join blobs
//! and metadata (linking, manifest validation) live in the server's `registry` module.
#![warn(missing_docs)]

pub mod blob;
pub mod meta;

use std::io;

/// Errors from the store. "Not found" is left to callers to name (blob, manifest, upload).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object or row does not exist.
    #[error("not found")]
    NotFound,
    /// A filesystem error.
    #[error("storage i/o: {0}")]
    Io(#[from] io::Error),
    /// A database error.
    #[error("metadata: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data that makes no sense (a bad digest in a row, say).
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

/// Result with the storage error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Seconds since the Unix epoch, the time unit of every timestamp column.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
