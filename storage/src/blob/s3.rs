//! The S3 blob store (aws-sdk-s3), for AWS S3 and S3-compatible servers (MinIO, Ceph RGW).
//!
//! Small blobs are one PutObject at their digest's key. Larger uploads become S3 multipart
//! uploads: bytes are buffered until a part fills (16 MiB by default, at least 5 MiB, doubled
//! every 1,000 parts so that a 100 GiB blob stays far below 10,000 parts) and each full part is
//! sent as it fills, so memory stays near one part whatever the blob size. The upload is
//! completed at a key of its own (`objects/<upload id>`), which is recorded as the blob's
//! location: no server-side copy, however large the blob. A marker object per multipart
//! upload (`_uploads/<id>`) lets expiry abort uploads that a restart left behind.
//!
//! The running part list and buffer live in memory: after a restart an S3 upload in progress
//! is unknown (the client starts it again) and its parts are aborted when it expires.

use super::{BlobBody, BlobRef, BlobStore, ByteRange, ByteStream, StoredObject};
use crate::{Error, Result};
use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use berth_oci::{Digest, Hasher};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// S3's smallest part (all but the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
const MAX_PART: u64 = 5 << 30;
/// S3's part count limit.
const MAX_PARTS: usize = 10_000;

/// How to reach the bucket: the `[storage.s3]` section of berth's configuration as it is.
/// Credentials are never here: they come from the standard AWS chain (AWS_* variables,
/// profiles, instance roles).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix (a trailing `/` is added).
    pub prefix: String,
    /// Region; the standard AWS chain decides when `None`.
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible servers.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), as most S3-compatible servers need.
    pub force_path_style: bool,
    /// Part size for multipart uploads (at least 5 MiB).
    pub part_size: u64,
    /// Answer blob GETs with a redirect to a presigned URL.
    pub redirect: bool,
    /// Lifetime of presigned URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// Create the bucket at start if it does not exist (development and tests).
    pub create_bucket: bool,
}

struct Upload {
    key: String,
    multipart: Option<String>,
    parts: Vec<CompletedPart>,
    buf: BytesMut,
    size: u64,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            force_path_style: false,
            part_size: 16 << 20,
            redirect: true,
            presign_ttl_secs: 900,
            create_bucket: false,
        }
    }
}

/// The S3 store.
pub struct S3Store {
    client: aws_sdk_s3::Client,
    s: S3Settings,
    prefix: String,
    uploads: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Upload>>>>,
}

fn s3_err<E, R>(op: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    Error::Io(io::Error::other(format!(
        "S3 {op}: {}",
        DisplayErrorContext(&e)
    )))
}

impl S3Store {
    /// Connects with credentials from the standard AWS chain (environment, profile, IMDS...).
    pub async fn connect(s: S3Settings) -> Result<Self> {
        if s.part_size < MIN_PART {
            return Err(Error::Io(io::Error::other(format!(
                "S3 part size {} is below the 5 MiB S3 minimum",
                s.part_size
            ))));
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &s.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &s.endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        let shared = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(s.force_path_style)
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        if s.create_bucket {
            if let Err(e) = client.create_bucket().bucket(&s.bucket).send().await {
                let owned = e.as_service_error().is_some_and(|x| {
                    x.is_bucket_already_owned_by_you() || x.is_bucket_already_exists()
                });
                if !owned {
                    return Err(s3_err("CreateBucket", e));
                }
            }
        }
        let prefix = match s.prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(Self {
            client,
            s,
            prefix,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    fn blob_key(&self, d: &Digest) -> String {
        let hex = d.hex();
        format!(
            "{}blobs/{}/{}/{}",
            self.prefix,
            d.algorithm().as_str(),
            &hex[..2],
            hex
        )
    }

    fn key_of(&self, b: &BlobRef) -> String {
        b.location
            .clone()
            .unwrap_or_else(|| self.blob_key(&b.digest))
    }

    /// Removes keys with one DeleteObjects per [`super::DELETE_BATCH`].
    async fn delete_keys(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(super::DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Io(io::Error::other(format!("S3 DeleteObjects: {e}"))))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::Io(io::Error::other(format!("S3 DeleteObjects: {e}"))))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.s.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3_err("DeleteObjects", e))?;
            // Quiet mode lists only the keys that failed; an absent key is not one of them.
            if let Some(e) = out.errors().first() {
                return Err(Error::Io(io::Error::other(format!(
                    "S3 DeleteObjects: {} of {} keys failed, first {}: {} {}",
                    out.errors().len(),
                    batch.len(),
                    e.key().unwrap_or_default(),
                    e.code().unwrap_or_default(),
                    e.message().unwrap_or_default()
                ))));
            }
        }
        Ok(())
    }

    fn marker_key(&self, id: Uuid) -> String {
        format!("{}_uploads/{id}", self.prefix)
    }

    /// Part `n` (1-based) size: the base size, doubled every 1,000 parts, at most 5 GiB.
    fn part_size_for(&self, n: usize) -> usize {
        let shift = ((n.saturating_sub(1)) / 1000).min(20) as u32;
        self.s.part_size.saturating_mul(1u64 << shift).min(MAX_PART) as usize
    }

    fn session(&self, id: Uuid) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    async fn send_part(&self, u: &mut Upload, part: Bytes) -> Result<()> {
        if u.parts.len() >= MAX_PARTS {
            return Err(Error::Io(io::Error::other(
                "blob exceeds S3's 10,000 parts",
            )));
        }
        let mp = match &u.multipart {
            Some(m) => m.clone(),
            None => {
                let out = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.s.bucket)
                    .key(&u.key)
                    .send()
                    .await
                    .map_err(|e| s3_err("CreateMultipartUpload", e))?;
                let mp = out
                    .upload_id()
                    .ok_or_else(|| Error::Io(io::Error::other("S3 gave no upload id")))?
                    .to_owned();
                // The marker lets a later process abort this upload.
                let marker = serde_json::json!({ "key": u.key, "upload_id": mp }).to_string();
                self.client
                    .put_object()
                    .bucket(&self.s.bucket)
                    .key(self.marker_key(upload_id_of(&u.key)))
                    .body(S3Body::from(Bytes::from(marker)))
                    .send()
                    .await
                    .map_err(|e| s3_err("PutObject (upload marker)", e))?;
                u.multipart = Some(mp.clone());
                mp
            }
        };
        let n = u.parts.len() as i32 + 1;
        let len = part.len() as i64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.s.bucket)
            .key(&u.key)
            .upload_id(&mp)
            .part_number(n)
            .content_length(len)
            .body(S3Body::from(part))
            .send()
            .await
            .map_err(|e| s3_err("UploadPart", e))?;
        u.parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    async fn abort_remote(&self, key: &str, mp: &str) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.s.bucket)
            .key(key)
            .upload_id(mp)
            .send()
            .await
            .map_err(|e| s3_err("AbortMultipartUpload", e))?;
        Ok(())
    }

    async fn delete_key(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.s.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_err("DeleteObject", e))?;
        Ok(())
    }
}

/// The upload id from an `objects/<id>` key.
fn upload_id_of(key: &str) -> Uuid {
    key.rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

fn body_stream(body: S3Body) -> ByteStream {
    futures::stream::unfold(body, |mut b| async move {
        match b.next().await {
            Some(Ok(x)) => Some((Ok(x), b)),
            Some(Err(e)) => Some((Err(io::Error::other(e)), b)),
            None => None,
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for S3Store {
    async fn stat(&self, blob: &BlobRef) -> Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.s.bucket)
            .key(self.key_of(blob))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_not_found()) => Ok(None),
            Err(e) => Err(s3_err("HeadObject", e)),
        }
    }

    async fn read(&self, blob: &BlobRef, range: Option<ByteRange>) -> Result<BlobBody> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.s.bucket)
            .key(self.key_of(blob));
        if let Some(r) = range {
            if r.end <= r.start {
                return Ok(BlobBody {
                    len: 0,
                    stream: futures::stream::empty().boxed(),
                });
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        match req.send().await {
            Ok(o) => Ok(BlobBody {
                len: o.content_length().unwrap_or(0).max(0) as u64,
                stream: body_stream(o.body),
            }),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_no_such_key()) => {
                Err(Error::NotFound)
            }
            Err(e) => Err(s3_err("GetObject", e)),
        }
    }

    async fn redirect_url(&self, blob: &BlobRef) -> Result<Option<String>> {
        if !self.s.redirect {
            return Ok(None);
        }
        let cfg = PresigningConfig::expires_in(Duration::from_secs(self.s.presign_ttl_secs))
            .map_err(|e| Error::Io(io::Error::other(format!("presigning: {e}"))))?;
        let p = self
            .client
            .get_object()
            .bucket(&self.s.bucket)
            .key(self.key_of(blob))
            .presigned(cfg)
            .await
            .map_err(|e| s3_err("presign GetObject", e))?;
        Ok(Some(p.uri().to_string()))
    }

    async fn delete(&self, blob: &BlobRef) -> Result<()> {
        self.delete_key(&self.key_of(blob)).await
    }

    async fn delete_many(&self, blobs: &[BlobRef]) -> Result<()> {
        let keys: Vec<String> = blobs.iter().map(|b| self.key_of(b)).collect();
        self.delete_keys(&keys).await
    }

    async fn list_blobs(&self) -> Result<Vec<StoredObject>> {
        let mut out = Vec::new();
        for dir in ["blobs/", "objects/"] {
            let prefix = format!("{}{dir}", self.prefix);
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.s.bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| s3_err("ListObjectsV2", e))?;
                for o in page.contents() {
                    let Some(key) = o.key() else { continue };
                    let rest = key.get(prefix.len()..).unwrap_or_default();
                    let (digest, location) = if dir == "blobs/" {
                        // blobs/<algorithm>/<fan>/<hex>; anything else is left alone.
                        let mut parts = rest.split('/');
                        let (Some(alg), Some(_), Some(hex), None) =
                            (parts.next(), parts.next(), parts.next(), parts.next())
                        else {
                            continue;
                        };
                        match format!("{alg}:{hex}").parse::<Digest>() {
                            Ok(d) => (Some(d), None),
                            Err(_) => continue,
                        }
                    } else {
                        (None, Some(key.to_owned()))
                    };
                    out.push(StoredObject {
                        digest,
                        location,
                        size: o.size().unwrap_or(0).max(0) as u64,
                        modified: o.last_modified().map_or(0, |t| t.secs()),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn delete_objects(&self, objects: &[StoredObject]) -> Result<()> {
        let keys: Vec<String> = objects
            .iter()
            .filter_map(|o| {
                o.location
                    .clone()
                    .or_else(|| o.digest.as_ref().map(|d| self.blob_key(d)))
            })
            .collect();
        self.delete_keys(&keys).await
    }

    fn chunk_min_length(&self) -> Option<u64> {
        Some(self.s.part_size)
    }

    async fn begin(&self, id: Uuid) -> Result<()> {
        let u = Upload {
            key: format!("{}objects/{id}", self.prefix),
            multipart: None,
            parts: Vec::new(),
            buf: BytesMut::new(),
            size: 0,
        };
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(tokio::sync::Mutex::new(u)));
        Ok(())
    }

    async fn upload_len(&self, id: Uuid) -> Result<Option<u64>> {
        match self.session(id) {
            Some(s) => Ok(Some(s.lock().await.size)),
            None => Ok(None),
        }
    }

    async fn append(
        &self,
        id: Uuid,
        offset: u64,
        mut body: ByteStream,
        hasher: &mut Hasher,
    ) -> Result<u64> {
        let session = self.session(id).ok_or(Error::NotFound)?;
        let mut u = session.lock().await;
        if u.size != offset {
            return Err(Error::Io(io::Error::other(format!(
                "upload is {} bytes, append expected {offset}",
                u.size
            ))));
        }
        // All or nothing: parts sent during a failed chunk are forgotten (S3 replaces a part
        // uploaded again under the same number) and the buffer is put back.
        let (parts, buf, size) = (u.parts.len(), u.buf.clone(), u.size);
        let res: Result<u64> = async {
            while let Some(item) = body.next().await {
                let chunk = item.map_err(Error::Body)?;
                hasher.update(&chunk);
                u.size += chunk.len() as u64;
                u.buf.extend_from_slice(&chunk);
                loop {
                    let want = self.part_size_for(u.parts.len() + 1);
                    if u.buf.len() < want {
                        break;
                    }
                    let part = u.buf.split_to(want).freeze();
                    self.send_part(&mut u, part).await?;
                }
            }
            Ok(u.size)
        }
        .await;
        if res.is_err() {
            u.parts.truncate(parts);
            u.buf = buf;
            u.size = size;
        }
        res
    }

    async fn read_upload(&self, _id: Uuid) -> Result<BlobBody> {
        // Parts of an unfinished S3 upload cannot be read back.
        Err(Error::NotFound)
    }

    fn rereads_uploads(&self) -> bool {
        false
    }

    async fn commit(&self, id: Uuid, digest: &Digest) -> Result<Option<String>> {
        let session = self.session(id).ok_or(Error::NotFound)?;
        let mut u = session.lock().await;
        let location = if u.multipart.is_none() {
            // Never reached a part: one PutObject at the digest's own key.
            let bytes = std::mem::take(&mut u.buf).freeze();
            self.client
                .put_object()
                .bucket(&self.s.bucket)
                .key(self.blob_key(digest))
                .content_length(bytes.len() as i64)
                .body(S3Body::from(bytes))
                .send()
                .await
                .map_err(|e| s3_err("PutObject", e))?;
            None
        } else {
            if !u.buf.is_empty() {
                let last = std::mem::take(&mut u.buf).freeze();
                self.send_part(&mut u, last).await?;
            }
            let mp = u.multipart.clone().unwrap_or_default();
            self.client
                .complete_multipart_upload()
                .bucket(&self.s.bucket)
                .key(&u.key)
                .upload_id(&mp)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(u.parts.clone()))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| s3_err("CompleteMultipartUpload", e))?;
            if let Err(e) = self.delete_key(&self.marker_key(id)).await {
                tracing::warn!(upload.id = %id, error = %e, "upload marker not removed");
            }
            Some(u.key.clone())
        };
        drop(u);
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(location)
    }

    async fn abort(&self, id: Uuid) -> Result<()> {
        let session = self
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let remote = match session {
            Some(s) => {
                let u = s.lock().await;
                u.multipart.clone().map(|m| (u.key.clone(), m))
            }
            None => {
                // Left by an earlier process: the marker says what to abort.
                match self
                    .client
                    .get_object()
                    .bucket(&self.s.bucket)
                    .key(self.marker_key(id))
                    .send()
                    .await
                {
                    Ok(o) => {
                        let b = o
                            .body
                            .collect()
                            .await
                            .map_err(|e| Error::Io(io::Error::other(e)))?
                            .into_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                        match (v["key"].as_str(), v["upload_id"].as_str()) {
                            (Some(k), Some(m)) => Some((k.to_owned(), m.to_owned())),
                            _ => None,
                        }
                    }
                    Err(e) if e.as_service_error().is_some_and(|x| x.is_no_such_key()) => None,
                    Err(e) => return Err(s3_err("GetObject (upload marker)", e)),
                }
            }
        };
        if let Some((key, mp)) = remote {
            self.abort_remote(&key, &mp).await?;
            self.delete_key(&self.marker_key(id)).await?;
        }
        Ok(())
    }

    async fn list_uploads(&self) -> Result<Vec<Uuid>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.s.bucket)
            .prefix(format!("{}_uploads/", self.prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_err("ListObjectsV2", e))?;
            for o in page.contents() {
                if let Some(id) = o
                    .key()
                    .and_then(|k| k.rsplit('/').next())
                    .and_then(|s| s.parse().ok())
                {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn part_sizes_grow_to_fit_10000_parts() {
        let base = 16u64 << 20;
        let size = |n: usize| -> u64 {
            let shift = ((n.saturating_sub(1)) / 1000).min(20) as u32;
            base.saturating_mul(1u64 << shift).min(super::MAX_PART)
        };
        assert_eq!(size(1), base);
        assert_eq!(size(1000), base);
        assert_eq!(size(1001), base * 2);
        let total: u64 = (1..=super::MAX_PARTS).map(size).sum();
        assert!(total > 100 << 30, "100 GiB fits");
        assert!(total >= 5 << 40, "5 TiB (S3's object limit) fits: {total}");
    }
}
