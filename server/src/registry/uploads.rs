//! Blob uploads: POST → PATCH* → PUT, monolithic POST, cancel, expiry.
//!
//! Each session has a row in the metadata (so any replica can find it) and a file in the
//! store. The running hash lives in memory next to a lock that serialises requests on one
//! session; if it is missing (a restart, another replica) it is rebuilt by re-reading the
//! stored bytes, so the state on disk is always the truth.

use super::{Registry, RegistryError, Result};
use berth_oci::{Algorithm, Digest, Hasher};
use berth_storage::blob::{BlobRef, ByteStream};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The in-memory half of a session.
#[derive(Default)]
pub(super) struct SessionState {
    /// sha256 of the first `offset` bytes, when known.
    hasher: Option<(u64, Hasher)>,
}

type Session = Arc<tokio::sync::Mutex<SessionState>>;

/// Sessions by id.
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<Uuid, Session>>,
}

impl Sessions {
    /// The in-memory state of a session already known here.
    fn known(&self, id: Uuid) -> Option<Session> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&id).cloned()
    }

    /// The in-memory state of a session the caller has checked exists. Only ids that named a
    /// live session are ever inserted: made-up ids must not grow the map.
    fn insert_checked(&self, id: Uuid) -> Session {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id).or_default().clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn remove(&self, id: Uuid) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&id);
    }
}

/// Where an upload stands.
#[derive(Debug, Clone, Copy)]
pub struct UploadStatus {
    /// The session id.
    pub id: Uuid,
    /// Bytes stored.
    pub offset: u64,
}

/// A chunk's declared position (`Content-Range: start-end`, inclusive).
#[derive(Debug, Clone, Copy)]
pub struct ChunkRange {
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
}

/// A chunk as a client sent it: its declared range and length, and its bytes.
pub struct Chunk {
    /// `Content-Range`, when sent.
    pub range: Option<ChunkRange>,
    /// `Content-Length`, when sent.
    pub content_length: Option<u64>,
    /// The bytes.
    pub body: ByteStream,
}

impl Chunk {
    /// A chunk with no declared range or length (streamed, or copied by a mirror).
    pub fn streamed(body: ByteStream) -> Self {
        Self {
            range: None,
            content_length: None,
            body,
        }
    }

    /// Checks the declared range against the upload's `offset` before a byte is written, and
    /// returns the body, cut to fail if it carries other than the declared length. A refused
    /// chunk's bytes are read and dropped (up to [`DRAIN_LIMIT`]) before the refusal is
    /// answered: a client still sending them would otherwise see its connection reset and
    /// never read the answer.
    async fn checked_body(self, offset: u64) -> Result<ByteStream> {
        match self.declared_len(offset) {
            Ok(None) => Ok(self.body),
            Ok(Some(len)) => Ok(exact_len(self.body, len)),
            Err(e) => {
                drain(self.body, DRAIN_LIMIT).await;
                Err(e)
            }
        }
    }

    /// The length the declared range gives, when it continues an upload of `offset` bytes.
    fn declared_len(&self, offset: u64) -> Result<Option<u64>> {
        let Some(r) = self.range else {
            return Ok(None);
        };
        let Some(len) = r.end.checked_sub(r.start).and_then(|n| n.checked_add(1)) else {
            return Err(RegistryError::UploadInvalid(format!(
                "Content-Range {}-{} is not a valid range",
                r.start, r.end
            )));
        };
        if r.start != offset {
            return Err(RegistryError::OutOfOrder {
                want: offset,
                got: r.start,
            });
        }
        if let Some(cl) = self.content_length {
            if cl != len {
                return Err(RegistryError::UploadInvalid(format!(
                    "Content-Range covers {len} bytes but Content-Length is {cl}"
                )));
            }
        }
        // A chunked body must carry exactly the declared range, or the chunk is refused.
        Ok(Some(len))
    }
}

/// How much of a refused chunk is read and dropped; past it the connection is closed.
const DRAIN_LIMIT: u64 = 16 << 20;

/// Reads and drops `body` until it ends, fails or passes `limit` bytes.
async fn drain(mut body: ByteStream, limit: u64) {
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = body.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            return;
        }
    }
}

/// Passes `body` through, failing it if it carries more or fewer than `len` bytes.
fn exact_len(mut body: ByteStream, len: u64) -> ByteStream {
    let mut seen = 0u64;
    let mut ended = false;
    futures::stream::poll_fn(move |cx| {
        use std::task::Poll;
        if ended {
            return Poll::Ready(None);
        }
        match futures::ready!(body.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                seen += chunk.len() as u64;
                if seen > len {
                    ended = true;
                    return Poll::Ready(Some(Err(std::io::Error::other(format!(
                        "body is longer than the {len} bytes of its Content-Range"
                    )))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(e)) => {
                ended = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                ended = true;
                if seen < len {
                    return Poll::Ready(Some(Err(std::io::Error::other(format!(
                        "body ended after {seen} of the {len} bytes of its Content-Range"
                    )))));
                }
                Poll::Ready(None)
            }
        }
    })
    .boxed()
}

/// A failed append: the client's body broke (BLOB_UPLOAD_INVALID) or the store did (5xx).
fn append_error(e: berth_storage::Error, what: &str) -> RegistryError {
    match e {
        berth_storage::Error::Body(e) => {
            RegistryError::UploadInvalid(format!("{what} not received: {e}"))
        }
        e => e.into(),
    }
}

impl Registry {
    /// Starts an upload session in `repo`.
    pub async fn start_upload(&self, repo: &str) -> Result<UploadStatus> {
        let id = Uuid::new_v4();
        self.store.begin(id).await?;
        if let Err(e) = self.meta.create_upload(id, repo).await {
            let _ = self.store.abort(id).await;
            return Err(e.into());
        }
        Ok(UploadStatus { id, offset: 0 })
    }

    /// Checks that `id` is a live session of `repo`; returns its stored length.
    async fn session_len(&self, repo: &str, id: Uuid) -> Result<u64> {
        let unknown = || RegistryError::UploadUnknown(id.to_string());
        let row = self.meta.upload(id).await?.ok_or_else(unknown)?;
        if row.repo != repo {
            return Err(unknown());
        }
        self.store.upload_len(id).await?.ok_or_else(unknown)
    }

    /// The locked in-memory state of a live session of `repo`, and its stored length. An id
    /// that names no session of `repo` is refused before anything is kept for it.
    async fn lock_session(
        &self,
        repo: &str,
        id: Uuid,
    ) -> Result<(tokio::sync::OwnedMutexGuard<SessionState>, u64)> {
        let session = match self.uploads.known(id) {
            Some(s) => s,
            None => {
                self.session_len(repo, id).await?;
                self.uploads.insert_checked(id)
            }
        };
        let st = session.lock_owned().await;
        // Checked again under the lock: another request may have finished or cancelled it.
        let len = self.session_len(repo, id).await?;
        Ok((st, len))
    }

    /// Where the upload stands.
    pub async fn upload_status(&self, repo: &str, id: Uuid) -> Result<UploadStatus> {
        let offset = self.session_len(repo, id).await?;
        Ok(UploadStatus { id, offset })
    }

    /// The sha256 state after `len` bytes, from memory or by re-reading the upload.
    async fn hasher_at(&self, st: &mut SessionState, id: Uuid, len: u64) -> Result<Hasher> {
        if let Some((at, h)) = &st.hasher {
            if *at == len {
                return Ok(h.clone());
            }
        }
        let h = if len == 0 {
            if self.store.rereads_uploads() {
                Hasher::new(Algorithm::Sha256)
            } else {
                Hasher::both()
            }
        } else {
            match self.rehash(id, Algorithm::Sha256).await {
                Ok(h) => h,
                // A store that cannot read an unfinished upload back (S3) after a restart:
                // the session is lost and the client starts again.
                Err(RegistryError::Storage(berth_storage::Error::NotFound)) => {
                    return Err(RegistryError::UploadUnknown(id.to_string()))
                }
                Err(e) => return Err(e),
            }
        };
        st.hasher = Some((len, h.clone()));
        Ok(h)
    }

    async fn rehash(&self, id: Uuid, alg: Algorithm) -> Result<Hasher> {
        let body = self.store.read_upload(id).await?;
        let mut h = Hasher::new(alg);
        let mut s = body.stream;
        while let Some(chunk) = s.next().await {
            h.update(&chunk.map_err(berth_storage::Error::Io)?);
        }
        Ok(h)
    }

    /// Appends a chunk. All or nothing: a failed chunk leaves the upload as it was.
    pub async fn patch_upload(&self, repo: &str, id: Uuid, chunk: Chunk) -> Result<UploadStatus> {
        let (mut st, offset) = self.lock_session(repo, id).await?;
        let body = chunk.checked_body(offset).await?;
        let mut hasher = self.hasher_at(&mut st, id, offset).await?;
        match self.store.append(id, offset, body, &mut hasher).await {
            Ok(new_len) => {
                st.hasher = Some((new_len, hasher));
                self.meta.touch_upload(id, new_len).await?;
                Ok(UploadStatus {
                    id,
                    offset: new_len,
                })
            }
            Err(e) => {
                // The store cut the file back to `offset`; the kept hasher still matches it.
                tracing::info!(upload.id = %id, error = %e, "chunk not stored");
                Err(append_error(e, "chunk"))
            }
        }
    }

    /// Closes an upload: appends the last chunk (if any), verifies the digest and publishes
    /// the blob. A digest mismatch discards the upload.
    pub async fn finish_upload(
        &self,
        repo: &str,
        id: Uuid,
        digest: &Digest,
        last: Option<Chunk>,
    ) -> Result<u64> {
        let (mut st, mut len) = self.lock_session(repo, id).await?;
        // The last chunk's range is checked as PATCH checks it, before anything is written.
        let body = match last {
            Some(c) => Some(c.checked_body(len).await?),
            None => None,
        };
        let mut hasher = self.hasher_at(&mut st, id, len).await?;
        if let Some(body) = body {
            len = self
                .store
                .append(id, len, body, &mut hasher)
                .await
                .map_err(|e| append_error(e, "last chunk"))?;
            st.hasher = Some((len, hasher.clone()));
        }
        let got = match hasher.finish_as(digest.algorithm()) {
            Some(d) => d,
            None => match self.rehash(id, digest.algorithm()).await {
                Ok(h) => h.finish(),
                Err(RegistryError::Storage(berth_storage::Error::NotFound)) => {
                    // Only after a restart lost the in-memory state of an S3 upload.
                    self.drop_upload(id).await?;
                    return Err(RegistryError::UploadUnknown(id.to_string()));
                }
                Err(e) => return Err(e),
            },
        };
        if &got != digest {
            self.drop_upload(id).await?;
            return Err(RegistryError::DigestMismatch {
                want: digest.clone(),
                got,
            });
        }
        self.publish(repo, id, digest, len, Some(id)).await?;
        self.uploads.remove(id);
        tracing::info!(repo.name = repo, blob.digest = %digest, size_bytes = len, "blob stored");
        Ok(len)
    }

    /// A whole blob in one request (`POST ?digest=`).
    pub async fn monolithic_upload(
        &self,
        repo: &str,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        let id = Uuid::new_v4();
        self.store.begin(id).await?;
        let mut hasher = Hasher::new(digest.algorithm());
        let len = match self.store.append(id, 0, body, &mut hasher).await {
            Ok(n) => n,
            Err(e) => {
                let _ = self.store.abort(id).await;
                return Err(append_error(e, "blob"));
            }
        };
        let got = hasher.finish();
        if &got != digest {
            self.store.abort(id).await?;
            return Err(RegistryError::DigestMismatch {
                want: digest.clone(),
                got,
            });
        }
        self.publish(repo, id, digest, len, None).await?;
        tracing::info!(repo.name = repo, blob.digest = %digest, size_bytes = len, "blob stored");
        Ok(len)
    }

    /// Makes a verified upload a blob: store first (durable), then metadata (visible).
    async fn publish(
        &self,
        repo: &str,
        id: Uuid,
        digest: &Digest,
        len: u64,
        row: Option<Uuid>,
    ) -> Result<()> {
        self.reserve_blob(digest).await?;
        let location = self.store.commit(id, digest).await?;
        let (recorded, linked) = self
            .meta
            .commit_blob(repo, digest, len, row, location.as_deref())
            .await?;
        if location.is_some() && recorded != location {
            // Another upload of the same bytes was recorded first: drop ours.
            let ours = BlobRef {
                digest: digest.clone(),
                location,
            };
            if let Err(e) = self.store.delete(&ours).await {
                tracing::warn!(blob.digest = %digest, error = %e, "duplicate upload not removed");
            }
        }
        Ok(linked?)
    }

    /// Stores a small blob the registry itself knows the bytes of.
    pub(super) async fn put_small_blob(&self, repo: &str, bytes: &'static [u8]) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        let body =
            futures::stream::once(async move { Ok(bytes::Bytes::from_static(bytes)) }).boxed();
        self.monolithic_upload(repo, &digest, body).await?;
        Ok(digest)
    }

    /// Stores a small blob the registry made itself (verification results).
    pub(super) async fn put_blob_bytes(&self, repo: &str, bytes: Vec<u8>) -> Result<Digest> {
        let digest = Digest::sha256(&bytes);
        let body = futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) }).boxed();
        self.monolithic_upload(repo, &digest, body).await?;
        Ok(digest)
    }

    /// Cancels an upload.
    pub async fn cancel_upload(&self, repo: &str, id: Uuid) -> Result<()> {
        let (_st, _) = self.lock_session(repo, id).await?;
        self.drop_upload(id).await
    }

    async fn drop_upload(&self, id: Uuid) -> Result<()> {
        self.meta.delete_upload(id).await?;
        self.store.abort(id).await?;
        self.uploads.remove(id);
        Ok(())
    }

    /// Removes uploads untouched for longer than the TTL. Returns how many.
    pub async fn purge_stale_uploads(&self) -> Result<usize> {
        let before = berth_storage::now_secs() - self.settings.upload_ttl.as_secs() as i64;
        let stale = self.meta.stale_uploads(before).await?;
        let mut n = 0;
        for id in stale {
            // A request in flight holds the lock: leave that session for the next round.
            let session = self.uploads.known(id);
            let held = session.as_ref().map(|s| s.try_lock());
            if matches!(held, Some(Err(_))) {
                continue;
            }
            self.drop_upload(id).await?;
            n += 1;
        }
        Ok(n)
    }

    /// At start-up: removes upload files that have no session row (a crash between the two).
    pub async fn sweep_orphan_uploads(&self) -> Result<usize> {
        let mut n = 0;
        for id in self.store.list_uploads().await? {
            if self.meta.upload(id).await?.is_none() {
                self.store.abort(id).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_registry;

    fn chunk(bytes: &'static [u8]) -> Chunk {
        Chunk::streamed(
            futures::stream::once(async move { Ok(bytes::Bytes::from_static(bytes)) }).boxed(),
        )
    }

    /// Requests with made-up upload ids (or ids of another repository's session) are refused
    /// and leave nothing behind in memory.
    #[tokio::test]
    async fn unknown_upload_ids_keep_no_state() {
        let (_dir, reg) = test_registry().await;
        let live = reg.start_upload("a").await.unwrap();
        for _ in 0..100 {
            let id = Uuid::new_v4();
            assert!(matches!(
                reg.patch_upload("a", id, chunk(b"x")).await,
                Err(RegistryError::UploadUnknown(_))
            ));
            let d = Digest::sha256(b"x");
            assert!(matches!(
                reg.finish_upload("a", id, &d, None).await,
                Err(RegistryError::UploadUnknown(_))
            ));
            assert!(matches!(
                reg.cancel_upload("a", id).await,
                Err(RegistryError::UploadUnknown(_))
            ));
        }
        assert!(matches!(
            reg.patch_upload("b", live.id, chunk(b"x")).await,
            Err(RegistryError::UploadUnknown(_))
        ));
        assert_eq!(reg.uploads.len(), 0, "refused ids must not be kept");
        // A live session is kept while it is open and dropped when it closes.
        reg.patch_upload("a", live.id, chunk(b"x")).await.unwrap();
        assert_eq!(reg.uploads.len(), 1);
        reg.finish_upload("a", live.id, &Digest::sha256(b"x"), None)
            .await
            .unwrap();
        assert_eq!(reg.uploads.len(), 0);
    }
}
