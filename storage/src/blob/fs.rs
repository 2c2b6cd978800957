//! The filesystem blob store: `blobs/<alg>/<hex[0:2]>/<hex>` for complete blobs,
//! `uploads/<uuid>` for uploads in progress.
//!
//! Durability: an upload becomes a blob by fsync of the file, rename into place and fsync of
//! the directory, so after a crash a blob path holds either nothing or the whole verified blob.

use super::{BlobBody, BlobRef, BlobStore, ByteRange, ByteStream, StoredObject};
use crate::{Error, Result};
use async_trait::async_trait;
use berth_oci::{Digest, Hasher};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Bytes gathered before one write call.
const WRITE_BATCH: usize = 1 << 20;
/// Buffers per `writev` (the kernel's IOV_MAX is 1024).
const MAX_IOV: usize = 512;
/// Dirty bytes after which the writer flushes to disk, so the final fsync stays short.
const SYNC_EVERY: u64 = 64 << 20;
/// Blobs up to this size are read in one go; larger ones are streamed in `READ_CHUNK`s.
const SMALL_BLOB: u64 = 1 << 20;
const READ_CHUNK: usize = 512 << 10;

/// A blob store in a local directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    sync: bool,
}

fn io_err(e: tokio::task::JoinError) -> Error {
    Error::Io(io::Error::other(e))
}

impl FsStore {
    /// Opens (creating) the store under `root`, with fsync on commit.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Self::with_sync(root, true)
    }

    /// Opens the store; `sync = false` skips every fsync. Faster on slow disks, but a power
    /// loss (not a process crash) can then lose blobs the client was told are stored.
    pub fn with_sync(root: impl Into<PathBuf>, sync: bool) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        Ok(Self { root, sync })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: Uuid) -> PathBuf {
        self.root.join("uploads").join(id.to_string())
    }
}

/// Writes every buffer, in order, with as few `writev` calls as the kernel allows.
fn write_all_vectored(file: &mut std::fs::File, bufs: &[Bytes]) -> io::Result<u64> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total as u64)
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

/// Streams `file` from its current position for `len` bytes.
fn file_stream(file: std::fs::File, len: u64) -> ByteStream {
    let state = (file, len);
    futures::stream::unfold(state, |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = (left as usize).min(READ_CHUNK);
        let res = tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(want);
            let r = file.read_exact(&mut buf).map(|_| buf.freeze());
            (file, r)
        })
        .await;
        match res {
            Ok((file, Ok(b))) => Some((Ok(b), (file, left - want as u64))),
            Ok((file, Err(e))) => Some((Err(e), (file, 0))),
            Err(e) => Some((
                Err(io::Error::other(e)),
                (std::fs::File::open("/dev/null").ok()?, 0),
            )),
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for FsStore {
    async fn stat(&self, blob: &BlobRef) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(&blob.digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(&self, blob: &BlobRef, range: Option<ByteRange>) -> Result<BlobBody> {
        let path = self.blob_path(&blob.digest);
        tokio::task::spawn_blocking(move || -> Result<BlobBody> {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound),
                Err(e) => return Err(e.into()),
            };
            let total = file.metadata()?.len();
            let r = range.unwrap_or(ByteRange {
                start: 0,
                end: total,
            });
            let len = r.end.min(total).saturating_sub(r.start);
            if len <= SMALL_BLOB {
                let mut buf = BytesMut::zeroed(len as usize);
                file.seek(SeekFrom::Start(r.start))?;
                file.read_exact(&mut buf)?;
                let b: Bytes = buf.freeze();
                return Ok(BlobBody {
                    len,
                    stream: futures::stream::once(async move { Ok(b) }).boxed(),
                });
            }
            file.seek(SeekFrom::Start(r.start))?;
            Ok(BlobBody {
                len,
                stream: file_stream(file, len),
            })
        })
        .await
        .map_err(io_err)?
    }

    async fn delete(&self, blob: &BlobRef) -> Result<()> {
        match tokio::fs::remove_file(self.blob_path(&blob.digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn begin(&self, id: Uuid) -> Result<()> {
        tokio::fs::File::create(self.upload_path(id)).await?;
        Ok(())
    }

    async fn upload_len(&self, id: Uuid) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.upload_path(id)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn append(
        &self,
        id: Uuid,
        offset: u64,
        mut body: ByteStream,
        hasher: &mut Hasher,
    ) -> Result<u64> {
        let path = self.upload_path(id);
        let sync = self.sync;
        // The writer runs on a blocking thread while this task receives and hashes, so
        // hashing and disk writes overlap. The bounded channel keeps memory to a few batches.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(8);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            if len != offset {
                return Err(io::Error::other(format!(
                    "upload is {len} bytes, append expected {offset}"
                )));
            }
            file.seek(SeekFrom::Start(offset))?;
            let mut written = offset;
            let mut dirty = 0u64;
            let res = (|| {
                while let Some(batch) = rx.blocking_recv() {
                    let n = write_all_vectored(&mut file, &batch)?;
                    written += n;
                    dirty += n;
                    if sync && dirty >= SYNC_EVERY {
                        file.sync_data()?;
                        dirty = 0;
                    }
                }
                Ok(written)
            })();
            if res.is_err() {
                let _ = file.set_len(offset);
            }
            res
        });
        // Chunks are passed on as received (no copy) and written with one writev per batch.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0usize;
        let mut recv_err: Option<io::Error> = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    batch_len += chunk.len();
                    batch.push(chunk);
                    if (batch_len >= WRITE_BATCH || batch.len() >= MAX_IOV)
                        && tx.send(std::mem::take(&mut batch)).await.is_err()
                    {
                        break;
                    }
                    if batch.is_empty() {
                        batch_len = 0;
                    }
                }
                Err(e) => {
                    recv_err = Some(e);
                    break;
                }
            }
        }
        if recv_err.is_none() && !batch.is_empty() {
            let _ = tx.send(batch).await;
        }
        drop(tx);
        let written = writer.await.map_err(io_err);
        match (recv_err, written) {
            (None, Ok(Ok(n))) => Ok(n),
            (Some(e), _) => {
                // The writer finished what it got; cut the file back to where it was.
                let path = self.upload_path(id);
                let _ = tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_len(offset))
                })
                .await;
                Err(Error::Body(e))
            }
            (None, Ok(Err(e))) => Err(Error::Io(e)),
            (None, Err(e)) => Err(e),
        }
    }

    async fn read_upload(&self, id: Uuid) -> Result<BlobBody> {
        let path = self.upload_path(id);
        tokio::task::spawn_blocking(move || -> Result<BlobBody> {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound),
                Err(e) => return Err(e.into()),
            };
            let len = file.metadata()?.len();
            Ok(BlobBody {
                len,
                stream: file_stream(file, len),
            })
        })
        .await
        .map_err(io_err)?
    }

    async fn commit(&self, id: Uuid, digest: &Digest) -> Result<Option<String>> {
        let from = self.upload_path(id);
        let to = self.blob_path(digest);
        let sync = self.sync;
        tokio::task::spawn_blocking(move || -> Result<Option<String>> {
            let file = match std::fs::File::open(&from) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound),
                Err(e) => return Err(e.into()),
            };
            if to.exists() {
                // Same digest, same bytes: another upload got there first.
                drop(file);
                std::fs::remove_file(&from)?;
                return Ok(None);
            }
            // The orphan pass judges age by mtime: the bytes become a blob now, however
            // long ago their last chunk arrived.
            file.set_modified(std::time::SystemTime::now())?;
            if sync {
                file.sync_all()?;
            }
            drop(file);
            let dir = to
                .parent()
                .ok_or_else(|| Error::Corrupt("blob path".into()))?;
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&from, &to)?;
            if sync {
                fsync_dir(dir)?;
            }
            Ok(None)
        })
        .await
        .map_err(io_err)?
    }

    async fn abort(&self, id: Uuid) -> Result<()> {
        match tokio::fs::remove_file(self.upload_path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_uploads(&self) -> Result<Vec<Uuid>> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(self.root.join("uploads")).await?;
        while let Some(e) = rd.next_entry().await? {
            if let Some(id) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    async fn list_blobs(&self) -> Result<Vec<StoredObject>> {
        let root = self.root.join("blobs");
        tokio::task::spawn_blocking(move || -> Result<Vec<StoredObject>> {
            let mut out = Vec::new();
            let read = |p: &Path| match std::fs::read_dir(p) {
                Ok(rd) => Ok(Some(rd)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
            // blobs/<algorithm>/<first two hex digits>/<hex>; anything else is not ours to
            // judge and is left alone.
            let Some(algs) = read(&root)? else {
                return Ok(out);
            };
            for alg in algs {
                let alg = alg?;
                let Some(fans) = read(&alg.path())? else {
                    continue;
                };
                for fan in fans {
                    let Some(files) = read(&fan?.path())? else {
                        continue;
                    };
                    for f in files {
                        let f = f?;
                        let name = format!(
                            "{}:{}",
                            alg.file_name().to_string_lossy(),
                            f.file_name().to_string_lossy()
                        );
                        let Ok(digest) = name.parse::<Digest>() else {
                            continue;
                        };
                        let m = f.metadata()?;
                        if !m.is_file() {
                            continue;
                        }
                        let modified = m
                            .modified()?
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64);
                        out.push(StoredObject {
                            digest: Some(digest),
                            location: None,
                            size: m.len(),
                            modified,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))?
    }

    async fn delete_objects(&self, objects: &[StoredObject]) -> Result<()> {
        for o in objects {
            if let Some(d) = &o.digest {
                self.delete(&BlobRef::at_digest(d)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::Algorithm;

    fn stream_of(parts: Vec<&'static [u8]>) -> ByteStream {
        futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))).boxed()
    }

    async fn collect(b: BlobBody) -> Vec<u8> {
        let mut s = b.stream;
        let mut v = Vec::new();
        while let Some(c) = s.next().await {
            v.extend_from_slice(&c.unwrap());
        }
        v
    }

    #[tokio::test]
    async fn upload_commit_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path()).unwrap();
        let id = Uuid::new_v4();
        s.begin(id).await.unwrap();
        let mut h = Hasher::new(Algorithm::Sha256);
        let n = s
            .append(id, 0, stream_of(vec![b"hello ", b"wor"]), &mut h)
            .await
            .unwrap();
        assert_eq!(n, 9);
        let n = s
            .append(id, 9, stream_of(vec![b"ld"]), &mut h)
            .await
            .unwrap();
        assert_eq!(n, 11);
        let d = h.finish();
        assert_eq!(d, Digest::sha256(b"hello world"));
        s.commit(id, &d).await.unwrap();
        assert_eq!(s.stat(&BlobRef::at_digest(&d)).await.unwrap(), Some(11));
        assert_eq!(s.upload_len(id).await.unwrap(), None);
        let body = s
            .read(
                &BlobRef::at_digest(&d),
                Some(ByteRange { start: 6, end: 11 }),
            )
            .await
            .unwrap();
        assert_eq!(collect(body).await, b"world");
    }

    #[tokio::test]
    async fn failed_append_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path()).unwrap();
        let id = Uuid::new_v4();
        s.begin(id).await.unwrap();
        let mut h = Hasher::new(Algorithm::Sha256);
        s.append(id, 0, stream_of(vec![b"abc"]), &mut h)
            .await
            .unwrap();
        let broken: ByteStream = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"zzz")),
            Err(io::Error::other("connection dropped")),
        ])
        .boxed();
        let mut h2 = h.clone();
        assert!(s.append(id, 3, broken, &mut h2).await.is_err());
        assert_eq!(s.upload_len(id).await.unwrap(), Some(3));
        // Wrong offset is refused and changes nothing.
        assert!(s
            .append(id, 1, stream_of(vec![b"x"]), &mut h.clone())
            .await
            .is_err());
        assert_eq!(s.upload_len(id).await.unwrap(), Some(3));
    }

    #[tokio::test]
    async fn large_stream_is_read_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path()).unwrap();
        let id = Uuid::new_v4();
        s.begin(id).await.unwrap();
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<io::Result<Bytes>> = data
            .chunks(70_001)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut h = Hasher::new(Algorithm::Sha256);
        s.append(id, 0, futures::stream::iter(chunks).boxed(), &mut h)
            .await
            .unwrap();
        let d = h.finish();
        assert_eq!(d, Digest::sha256(&data));
        s.commit(id, &d).await.unwrap();
        let body = s.read(&BlobRef::at_digest(&d), None).await.unwrap();
        assert_eq!(body.len, data.len() as u64);
        assert_eq!(collect(body).await, data);
    }
}
