//! Blob bytes under content addresses, and the upload files that become them.
//!
//! No OCI rules and no SQL here: a store keeps bytes, streams them, and turns a finished
//! upload into a blob atomically. Digests are verified by the caller, which hashes the stream
//! as it passes through [`BlobStore::append`].

pub mod fs;

use crate::Result;
use async_trait::async_trait;
use berth_oci::{Digest, Hasher};
use bytes::Bytes;
use futures::stream::BoxStream;
use std::io;
use uuid::Uuid;

/// A stream of bytes, as request and response bodies are.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// A readable blob or part of one.
pub struct BlobBody {
    /// Number of bytes the stream yields.
    pub len: u64,
    /// The bytes.
    pub stream: ByteStream,
}

/// A half-open byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Where blob bytes live. Object-safe: the server holds an `Arc<dyn BlobStore>`.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a stored blob, or `None`.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Streams a blob, or part of one. `NotFound` when absent.
    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobBody>;
    /// Removes a blob's bytes (garbage collection only; callers check nothing references it).
    async fn delete(&self, digest: &Digest) -> Result<()>;

    /// Starts an empty upload.
    async fn begin(&self, id: Uuid) -> Result<()>;
    /// Bytes stored so far for an upload, or `None` when it does not exist.
    async fn upload_len(&self, id: Uuid) -> Result<Option<u64>>;
    /// Appends `body` at `offset` (which must be the current length), feeding every byte to
    /// `hasher`. All or nothing: on error the upload is cut back to `offset`, and the caller
    /// must restore its hasher. Memory stays bounded whatever the length. Returns the new length.
    async fn append(
        &self,
        id: Uuid,
        offset: u64,
        body: ByteStream,
        hasher: &mut Hasher,
    ) -> Result<u64>;
    /// Re-reads an upload's bytes (to rebuild a hash state lost with a restart).
    async fn read_upload(&self, id: Uuid) -> Result<BlobBody>;
    /// Makes the upload durable and visible as blob `digest`. The caller has verified the
    /// digest. If the blob already exists, the upload is simply dropped.
    async fn commit(&self, id: Uuid, digest: &Digest) -> Result<()>;
    /// Drops an upload and its bytes. Absent uploads are not an error.
    async fn abort(&self, id: Uuid) -> Result<()>;
    /// Every upload the store holds, for sweeping orphans after a crash.
    async fn list_uploads(&self) -> Result<Vec<Uuid>>;
}
