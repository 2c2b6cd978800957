//! Blob bytes under content addresses, and the upload files that become them.
//!
//! No OCI rules and no SQL here: a store keeps bytes, streams them, and turns a finished
//! upload into a blob atomically. Digests are verified by the caller, which hashes the stream
//! as it passes through [`BlobStore::append`].

pub mod fs;
pub mod s3;

use crate::Result;
use async_trait::async_trait;
use berth_oci::{Digest, Hasher};
use bytes::Bytes;
use futures::stream::BoxStream;
use std::io;
use uuid::Uuid;

/// The most keys one S3 DeleteObjects call takes.
pub const DELETE_BATCH: usize = 1000;

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

/// A stored blob: its digest, and where it lives if not at the store's place for that digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// The content digest.
    pub digest: Digest,
    /// A store-specific location returned by [`BlobStore::commit`], if any.
    pub location: Option<String>,
}

impl BlobRef {
    /// A blob at its digest's own place.
    pub fn at_digest(digest: &Digest) -> Self {
        Self {
            digest: digest.clone(),
            location: None,
        }
    }
}

/// A blob object as the store lists it, for the orphan pass of garbage collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The digest, when the object sits at a digest's own place.
    pub digest: Option<Digest>,
    /// The store-specific location, when it sits somewhere of its own (an S3 multipart
    /// upload's key), as [`BlobStore::commit`] returned it.
    pub location: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Last modified, Unix seconds.
    pub modified: i64,
}

/// Where blob bytes live. Object-safe: the server holds an `Arc<dyn BlobStore>`.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a stored blob, or `None`.
    async fn stat(&self, blob: &BlobRef) -> Result<Option<u64>>;
    /// Streams a blob, or part of one. `NotFound` when absent.
    async fn read(&self, blob: &BlobRef, range: Option<ByteRange>) -> Result<BlobBody>;
    /// A URL the client may fetch the blob from directly (a presigned S3 URL), when the store
    /// is configured to redirect. `None`: serve the bytes through berth.
    async fn redirect_url(&self, _blob: &BlobRef) -> Result<Option<String>> {
        Ok(None)
    }
    /// Removes a blob's bytes (garbage collection only; callers check nothing references it).
    /// Absent blobs are not an error.
    async fn delete(&self, blob: &BlobRef) -> Result<()>;
    /// Removes many blobs' bytes, as [`BlobStore::delete`] does each. S3 sends one
    /// DeleteObjects per [`DELETE_BATCH`] keys.
    async fn delete_many(&self, blobs: &[BlobRef]) -> Result<()> {
        for b in blobs {
            self.delete(b).await?;
        }
        Ok(())
    }
    /// The smallest chunk worth sending, advertised as `OCI-Chunk-Min-Length`.
    fn chunk_min_length(&self) -> Option<u64> {
        None
    }

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
    /// Whether [`BlobStore::read_upload`] works. A store that cannot read an unfinished upload
    /// back (S3) has every upload hashed by sha256 and sha512 as it arrives instead.
    fn rereads_uploads(&self) -> bool {
        true
    }
    /// Makes the upload durable and readable as blob `digest` (verified by the caller).
    /// Returns the location to record when the bytes stay somewhere of their own (`None`:
    /// at the digest's place). If the blob already exists there, the upload is dropped.
    async fn commit(&self, id: Uuid, digest: &Digest) -> Result<Option<String>>;
    /// Drops an upload and its bytes. Absent uploads are not an error.
    async fn abort(&self, id: Uuid) -> Result<()>;
    /// Every upload the store holds, for sweeping orphans after a crash.
    async fn list_uploads(&self) -> Result<Vec<Uuid>>;
    /// Every blob object the store holds (not uploads in progress): the orphan pass's
    /// listing, the only place garbage collection lists the store.
    async fn list_blobs(&self) -> Result<Vec<StoredObject>>;
    /// Removes listed objects (absent ones are not an error); S3 sends one DeleteObjects per
    /// [`DELETE_BATCH`] keys.
    async fn delete_objects(&self, objects: &[StoredObject]) -> Result<()>;
}
