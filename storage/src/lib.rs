//! Everything berth keeps: blob bytes (`blob`), upload sessions and metadata (`meta`).
//!
//! Uses `berth-oci` for its types; knows nothing of HTTP. The registry rules that join blobs
//! and metadata (linking, manifest validation) live in the server's `registry` module.
#![warn(missing_docs)]

pub mod blob;
pub mod gc;
pub mod meta;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

use std::io;

/// Errors from the store. "Not found" is left to callers to name (blob, manifest, upload).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object or row does not exist.
    #[error("not found")]
    NotFound,
    /// The incoming byte stream failed (a dropped connection): the client's problem, not the
    /// store's. The upload is left as it was before the chunk.
    #[error("request body: {0}")]
    Body(io::Error),
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
    /// A manifest names a blob or child manifest the repository does not hold (checked in
    /// the transaction that would commit it).
    #[error("{0} is not in the repository")]
    Missing(berth_oci::Digest),
    /// A garbage-collection run is removing this blob's bytes; retry once it has.
    #[error("blob {0} is being removed by garbage collection")]
    Deleting(berth_oci::Digest),
    /// Another process holds a lease (a GC run elsewhere).
    #[error("{0}")]
    Busy(String),
    /// Linking a blob (or committing a manifest) would take a namespace over its byte quota.
    #[error(
        "quota {pattern} exceeded: {used} of {limit} bytes are used ({} of {}); {what}",
        human(*used), human(*limit)
    )]
    Quota {
        /// The quota's repository pattern.
        pattern: String,
        /// Bytes counted against it now.
        used: u64,
        /// Its limit in bytes.
        limit: u64,
        /// What was refused and why: `blob sha256:... would add 12 MiB`.
        what: String,
    },
    /// A write would move or remove an immutable tag (checked in the transaction that would
    /// make it, so of racing writers exactly one creates the tag).
    #[error("tag {tag} is immutable ({rule}) and points at {target}")]
    Immutable {
        /// The tag.
        tag: String,
        /// What it points at now.
        target: berth_oci::Digest,
        /// The rule that makes it immutable, as the caller described it.
        rule: String,
    },
}

/// A byte count for people: `1.5 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Error {
    /// Whether the store ran out of space (disk or database full).
    pub fn is_storage_full(&self) -> bool {
        match self {
            Error::Io(e) => e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28),
            Error::Db(sqlx::Error::Database(d)) => d.code().as_deref() == Some("13"),
            Error::Db(sqlx::Error::Io(e)) => e.kind() == io::ErrorKind::StorageFull,
            _ => false,
        }
    }
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
