//! One mirror run: list upstream tags, filter them, and copy what is missing, manifests
//! byte-exact, every digest checked, blob copies resumable after an interruption.
//!
//! Manifests are stored through `Registry::put_manifest`, so whatever a push runs (validation,
//! platform indexing, verification jobs) runs for mirrored content too.

use super::def::{dest_repo, Filters, ForeignLayers, MirrorDef};
use super::upstream::{UpManifest, Upstream, UpstreamError};
use super::{Live, Progress, ReportItem};
use crate::registry::{Chunk, PutMode, Registry, RegistryError};
use berth_oci::manifest::ManifestKind;
use berth_oci::media_type as mt;
use berth_oci::platform::Platform;
use berth_oci::{Descriptor, Digest, Manifest, Reference};
use berth_storage::meta::{Meta, MirrorTag};
use futures::{StreamExt, TryStreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uuid::Uuid;

/// One blob copy in flight.
type BlobCopy<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// Blobs of one image copied at the same time.
const BLOB_CONCURRENCY: usize = 4;

/// Image configs larger than this are not read to filter single-platform tags.
const MAX_CONFIG_BYTES: i64 = 4 << 20;

/// The annotation a filtered (non-sparse) index carries: the digest of the upstream index.
pub const SOURCE_DIGEST_ANNOTATION: &str = "dev.berth.mirror.source-digest";

/// Why copying one item failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The local registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Metadata failed.
    #[error(transparent)]
    Storage(#[from] berth_storage::Error),
    /// Something upstream is not what it claims.
    #[error("{0}")]
    Invalid(String),
    /// The platform filters leave nothing of this tag (a skip, not a failure).
    #[error("{0}")]
    Filtered(String),
}

type Result<T, E = SyncError> = std::result::Result<T, E>;

/// A run over one mirror definition.
pub struct Copier<'a> {
    pub(super) reg: &'a Registry,
    /// The mirror's bookkeeping tables.
    pub(super) records: &'a Meta,
    pub(super) up: &'a Upstream,
    pub(super) def: &'a MirrorDef,
    pub(super) filters: &'a Filters,
    pub(super) live: Arc<Live>,
    pub(super) progress: Arc<dyn Progress>,
}

/// What a tag became.
enum Outcome {
    Copied(Digest),
    Skipped(Digest, &'static str),
}

impl Copier<'_> {
    fn fingerprint(&self) -> String {
        let v = serde_json::json!({
            "platforms": self.def.platforms,
            "sparse": self.def.sparse_index,
            "foreign": self.def.foreign_layers,
        });
        Digest::sha256(v.to_string().as_bytes()).to_string()
    }

    /// Copies every repository of the mirror; failures are counted and reported, not fatal.
    pub async fn run(&self) {
        for src in &self.def.repositories {
            let dst = dest_repo(&self.def.prefix, src);
            let tags = match self.up.tags(src).await {
                Ok(t) => t,
                Err(e) => {
                    self.fail(&dst, None, format!("listing tags of {src}: {e}"));
                    continue;
                }
            };
            let mut tags: Vec<String> = tags.into_iter().filter(|t| self.filters.tag(t)).collect();
            tags.sort();
            self.progress
                .line(&format!("{src} -> {dst}: {} tag(s) selected", tags.len()));
            for tag in tags {
                self.live.set_current(format!("{src}:{tag}"));
                match self.sync_tag(src, &dst, &tag).await {
                    Ok(Outcome::Copied(d)) => {
                        self.progress.line(&format!("copied {dst}:{tag} ({d})"));
                        self.live.push(ReportItem {
                            repository: dst.clone(),
                            tag: Some(tag),
                            outcome: "copied".into(),
                            digest: Some(d.to_string()),
                            detail: None,
                        });
                    }
                    Ok(Outcome::Skipped(d, why)) => {
                        self.progress.line(&format!("skipped {dst}:{tag}: {why}"));
                        self.live.push(ReportItem {
                            repository: dst.clone(),
                            tag: Some(tag),
                            outcome: "skipped".into(),
                            digest: Some(d.to_string()),
                            detail: Some(why.into()),
                        });
                    }
                    Err(SyncError::Filtered(why)) => {
                        self.live.skipped.fetch_add(1, Ordering::Relaxed);
                        self.progress.line(&format!("skipped {dst}:{tag}: {why}"));
                        self.live.push(ReportItem {
                            repository: dst.clone(),
                            tag: Some(tag),
                            outcome: "skipped".into(),
                            digest: None,
                            detail: Some(why),
                        });
                    }
                    Err(e) => self.fail(&dst, Some(tag), e.to_string()),
                }
                self.live.checkpoint(self.records).await;
            }
        }
        self.live.set_current(String::new());
    }

    fn fail(&self, repo: &str, tag: Option<String>, detail: String) {
        self.live.failed.fetch_add(1, Ordering::Relaxed);
        self.progress.line(&format!(
            "FAILED {repo}{}: {detail}",
            tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default()
        ));
        tracing::warn!(mirror.name = %self.def.name, repo.name = repo, tag = ?tag, error = %detail, "mirror item failed");
        self.live.push(ReportItem {
            repository: repo.to_owned(),
            tag,
            outcome: "failed".into(),
            digest: None,
            detail: Some(detail),
        });
    }

    async fn sync_tag(&self, src: &str, dst: &str, tag: &str) -> Result<Outcome> {
        let fp = self.fingerprint();
        let rec = self.records.mirror_tag(&self.def.name, dst, tag).await?;
        let local_tag = self.reg.current_tag(dst, tag).await?;
        // One HEAD decides whether anything changed upstream.
        if let (Some(rec), Some(local)) = (&rec, &local_tag) {
            if rec.fingerprint == fp && rec.local_digest == local.as_str() {
                if let Some(d) = self.up.head_manifest(src, tag).await? {
                    if d.as_str() == rec.upstream_digest {
                        self.live.skipped.fetch_add(1, Ordering::Relaxed);
                        return Ok(Outcome::Skipped(local.clone(), "unchanged upstream"));
                    }
                }
            }
        }
        let max = self.reg.settings.manifest_max_bytes;
        let m = self.up.get_manifest(src, tag, None, max).await?;
        let reference = Reference::Tag(
            tag.parse()
                .map_err(|e| SyncError::Invalid(format!("tag {tag:?}: {e}")))?,
        );
        let before = local_tag.clone();
        let local = self.copy_manifest(src, dst, &m, &reference, true).await?;
        self.records
            .put_mirror_tag(
                &self.def.name,
                dst,
                tag,
                &MirrorTag {
                    upstream_digest: m.digest.to_string(),
                    local_digest: local.to_string(),
                    fingerprint: fp,
                },
            )
            .await?;
        Ok(if before.as_ref() == Some(&local) {
            Outcome::Skipped(local, "already present")
        } else {
            Outcome::Copied(local)
        })
    }

    /// Copies a manifest and everything it needs; returns the local digest (the upstream one,
    /// except for a filtered index stored as a new index).
    async fn copy_manifest(
        &self,
        src: &str,
        dst: &str,
        m: &UpManifest,
        reference: &Reference,
        top: bool,
    ) -> Result<Digest> {
        let parsed = Manifest::parse(&m.bytes, m.media_type.as_deref())
            .map_err(|e| SyncError::Invalid(format!("manifest {}: {e}", m.digest)))?;
        let present = self.reg.manifest_exists(dst, &m.digest).await?;
        match parsed.kind {
            ManifestKind::Image => {
                if top && !present && self.filters.filters_platforms() {
                    // A single-platform tag: its image config says what platform it is.
                    let p = match &parsed.config {
                        Some(c) => self.image_platform(src, c).await?,
                        None => None,
                    };
                    if !self.filters.platform(p.as_ref()) {
                        return Err(SyncError::Filtered(format!(
                            "image {} ({}) matches no platform filter",
                            m.digest,
                            p.map_or("no platform".into(), |p| p.to_string())
                        )));
                    }
                }
                if !present {
                    // A few blobs at a time: many-layer images over a slow link.
                    let mut seen = std::collections::HashSet::new();
                    let blobs: Vec<&Descriptor> = parsed
                        .config
                        .iter()
                        .chain(parsed.layers.iter())
                        .filter(|d| seen.insert(d.digest.clone()))
                        .collect();
                    // Boxed as trait objects: the closures' borrowed types otherwise trip
                    // the compiler's (higher-ranked) Send check of the spawned run.
                    let copies: Vec<BlobCopy<'_>> = blobs
                        .into_iter()
                        .map(|d| Box::pin(self.ensure_blob(src, dst, d)) as BlobCopy<'_>)
                        .collect();
                    futures::stream::iter(copies)
                        .buffer_unordered(BLOB_CONCURRENCY)
                        .try_collect::<Vec<()>>()
                        .await?;
                }
                self.put(
                    dst,
                    reference,
                    &parsed.media_type,
                    &m.bytes,
                    PutMode::CLIENT,
                )
                .await?;
            }
            ManifestKind::Index => {
                let mut keep = Vec::new();
                for d in &parsed.manifests {
                    let p: Option<Platform> = d
                        .platform
                        .as_ref()
                        .and_then(|v| serde_json::from_value(v.clone()).ok());
                    // Nested indexes carry no platform of their own: filter inside them.
                    let nested = berth_oci::manifest::is_index_media_type(&d.media_type);
                    keep.push(nested || self.filters.platform(p.as_ref()));
                }
                if !keep.iter().any(|k| *k) {
                    return Err(SyncError::Filtered(format!(
                        "no entry of index {} matches the platform filters",
                        m.digest
                    )));
                }
                for (d, _) in parsed.manifests.iter().zip(&keep).filter(|(_, k)| **k) {
                    self.copy_child(src, dst, d).await?;
                }
                let filtered = keep.iter().any(|k| !*k);
                if !filtered || self.sparse(dst) {
                    // Whole, or a sparse copy of the upstream's bytes (children left out).
                    let mode = PutMode {
                        sparse_index: filtered,
                        ..PutMode::CLIENT
                    };
                    self.put(dst, reference, &parsed.media_type, &m.bytes, mode)
                        .await?;
                } else {
                    let bytes = filtered_index(&m.bytes, &m.digest, &keep)?;
                    let digest = Digest::sha256(&bytes);
                    let reference = if top {
                        reference.clone()
                    } else {
                        Reference::Digest(digest.clone())
                    };
                    let exists = self.reg.manifest_exists(dst, &digest).await?;
                    self.put(dst, &reference, &parsed.media_type, &bytes, PutMode::CLIENT)
                        .await?;
                    self.count_manifest(exists);
                    return Ok(digest);
                }
            }
        }
        self.count_manifest(present);
        Ok(m.digest.clone())
    }

    /// The platform an image config declares, read from the upstream (digest checked).
    async fn image_platform(&self, src: &str, config: &Descriptor) -> Result<Option<Platform>> {
        if !(0..=MAX_CONFIG_BYTES).contains(&config.size) {
            return Ok(None);
        }
        let resp = self.up.get_blob(src, &config.digest, 0).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("reading config: {e}")))?;
        let got = Digest::compute(config.digest.algorithm(), &bytes);
        if got != config.digest {
            return Err(SyncError::Invalid(format!(
                "config {}: upstream sent {got}",
                config.digest
            )));
        }
        Ok(berth_oci::image_config::ImageConfig::parse(&bytes)
            .ok()
            .map(|c| c.platform()))
    }

    fn count_manifest(&self, present: bool) {
        let c = if present {
            &self.live.skipped
        } else {
            &self.live.copied
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a filtered index is stored sparse in `dst`.
    fn sparse(&self, dst: &str) -> bool {
        self.def
            .sparse_index
            .unwrap_or_else(|| self.reg.settings.policies.for_repo(dst).sparse_index)
    }

    async fn copy_child(&self, src: &str, dst: &str, d: &Descriptor) -> Result<()> {
        if self.reg.manifest_exists(dst, &d.digest).await?
            && !berth_oci::manifest::is_index_media_type(&d.media_type)
        {
            self.live.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let max = self.reg.settings.manifest_max_bytes;
        let child = self
            .up
            .get_manifest(src, d.digest.as_str(), Some(&d.digest), max)
            .await?;
        if child.bytes.len() as i64 != d.size {
            return Err(SyncError::Invalid(format!(
                "manifest {}: the index says {} bytes, upstream sent {}",
                d.digest,
                d.size,
                child.bytes.len()
            )));
        }
        let child = UpManifest {
            media_type: child.media_type.or(Some(d.media_type.clone())),
            ..child
        };
        Box::pin(self.copy_manifest(
            src,
            dst,
            &child,
            &Reference::Digest(d.digest.clone()),
            false,
        ))
        .await?;
        Ok(())
    }

    async fn put(
        &self,
        dst: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
        mode: PutMode,
    ) -> Result<()> {
        self.reg
            .put_manifest(dst, reference, Some(media_type), bytes, &[], mode)
            .await?;
        Ok(())
    }

    /// Makes a blob present in `dst`: already there, linked from another repository, or
    /// fetched (resuming an interrupted copy) with its digest checked.
    async fn ensure_blob(&self, src: &str, dst: &str, d: &Descriptor) -> Result<()> {
        let foreign =
            mt::is_foreign_layer(&d.media_type) && d.urls.as_ref().is_some_and(|u| !u.is_empty());
        if self.reg.has_blob(dst, &d.digest).await? {
            self.live.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if foreign && self.def.foreign_layers == ForeignLayers::Keep {
            return Ok(());
        }
        if self.reg.link_stored_blob(dst, &d.digest).await? {
            self.live.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self.fetch_blob(src, dst, d, None).await {
            Err(SyncError::Upstream(UpstreamError::NotFound)) if foreign => {
                let mut last = None;
                for u in d.urls.iter().flatten() {
                    match self.fetch_blob(src, dst, d, Some(u)).await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or(SyncError::Upstream(UpstreamError::NotFound)))
            }
            r => r,
        }
    }

    async fn fetch_blob(
        &self,
        src: &str,
        dst: &str,
        d: &Descriptor,
        url: Option<&str>,
    ) -> Result<()> {
        let size = u64::try_from(d.size)
            .map_err(|_| SyncError::Invalid(format!("blob {}: negative size", d.digest)))?;
        // Resume the session an interrupted run left, if it is still there.
        let mut session = None;
        if let Some(id) = self.records.mirror_upload(dst, d.digest.as_str()).await? {
            if let Ok(id) = id.parse::<Uuid>() {
                if let Ok(st) = self.reg.upload_status(dst, id).await {
                    if st.offset <= size {
                        session = Some((id, st.offset));
                    } else {
                        let _ = self.reg.cancel_upload(dst, id).await;
                    }
                }
            }
        }
        let resumed = session.is_some();
        let (id, offset) = match session {
            Some(s) => s,
            None => (self.new_session(dst, &d.digest).await?, 0),
        };
        match self.fetch_into(src, dst, d, url, size, id, offset).await {
            // A session this store cannot continue (S3 cannot read back the parts it holds
            // to rebuild the hash): start again from the first byte.
            Err(SyncError::Registry(RegistryError::UploadUnknown(_))) if resumed => {
                self.progress.line(&format!(
                    "cannot resume {} here; fetching it again",
                    d.digest
                ));
                let _ = self.reg.cancel_upload(dst, id).await;
                let id = self.new_session(dst, &d.digest).await?;
                self.fetch_into(src, dst, d, url, size, id, 0).await
            }
            r => r,
        }
    }

    /// Streams the blob from `offset` into upload session `id` and publishes it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site pair, all plain values"
    )]
    async fn fetch_into(
        &self,
        src: &str,
        dst: &str,
        d: &Descriptor,
        url: Option<&str>,
        size: u64,
        mut id: Uuid,
        mut offset: u64,
    ) -> Result<()> {
        if offset < size {
            let resp = match url {
                Some(u) if offset == 0 => self.up.get_url(u).await?,
                Some(_) => {
                    // Foreign URLs are fetched whole: start the session again.
                    self.reg.cancel_upload(dst, id).await?;
                    id = self.new_session(dst, &d.digest).await?;
                    offset = 0;
                    self.up.get_url(url.unwrap_or_default()).await?
                }
                None => self.up.get_blob(src, &d.digest, offset).await?,
            };
            if offset > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                // The upstream ignored the range: start over with the whole blob it is sending.
                self.reg.cancel_upload(dst, id).await?;
                id = self.new_session(dst, &d.digest).await?;
                offset = 0;
            }
            if let Some(n) = resp.content_length() {
                if offset + n != size {
                    return Err(SyncError::Invalid(format!(
                        "blob {}: the manifest says {size} bytes, upstream sends {}",
                        d.digest,
                        offset + n
                    )));
                }
            }
            if offset > 0 {
                self.progress
                    .line(&format!("resuming {} at byte {offset}", d.digest));
            }
            self.progress.blob_start(&d.digest, size, offset);
            let live = self.live.clone();
            let progress = self.progress.clone();
            let digest = d.digest.clone();
            let body = resp
                .bytes_stream()
                .map(move |c| {
                    let c = c.map_err(std::io::Error::other)?;
                    live.bytes.fetch_add(c.len() as i64, Ordering::Relaxed);
                    progress.blob_bytes(&digest, c.len() as u64);
                    Ok::<_, std::io::Error>(c)
                })
                .boxed();
            let stored = self.reg.patch_upload(dst, id, Chunk::streamed(body)).await;
            self.progress.blob_done(&d.digest);
            stored?;
        }
        let len = match self.reg.finish_upload(dst, id, &d.digest, None).await {
            Ok(n) => n,
            Err(e) => {
                self.records
                    .delete_mirror_upload(dst, d.digest.as_str())
                    .await?;
                return Err(e.into());
            }
        };
        self.records
            .delete_mirror_upload(dst, d.digest.as_str())
            .await?;
        if len != size {
            return Err(SyncError::Invalid(format!(
                "blob {}: the manifest says {size} bytes, the blob has {len}",
                d.digest
            )));
        }
        self.live.copied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn new_session(&self, dst: &str, digest: &Digest) -> Result<Uuid> {
        let st = self.reg.start_upload(dst).await?;
        self.records
            .put_mirror_upload(dst, digest.as_str(), &st.id.to_string())
            .await?;
        Ok(st.id)
    }
}

/// A new index with only the kept entries and the source digest annotation.
fn filtered_index(bytes: &[u8], source: &Digest, keep: &[bool]) -> Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| SyncError::Invalid(format!("index {source}: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| SyncError::Invalid(format!("index {source}: not an object")))?;
    if let Some(serde_json::Value::Array(list)) = obj.get_mut("manifests") {
        let mut i = 0;
        list.retain(|_| {
            let k = keep.get(i).copied().unwrap_or(false);
            i += 1;
            k
        });
        newest_first_within_builds(list);
    }
    let ann = obj
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(a) = ann.as_object_mut() {
        a.insert(
            SOURCE_DIGEST_ANNOTATION.into(),
            serde_json::Value::String(source.to_string()),
        );
    }
    serde_json::to_vec(&v).map_err(|e| SyncError::Invalid(format!("index {source}: {e}")))
}

/// Orders the Windows entries of each build newest UBR first, in the positions that build's
/// entries already hold (../shared/docs/WINDOWS.md: then moby's stable list order and containerd's string
/// order pick the same entry). Everything else keeps its place.
fn newest_first_within_builds(list: &mut [serde_json::Value]) {
    let version = |e: &serde_json::Value| {
        let p = e.get("platform")?;
        if !p.get("os")?.as_str()?.eq_ignore_ascii_case("windows") {
            return None;
        }
        p.get("os.version")?
            .as_str()?
            .parse::<berth_oci::platform::WindowsVersion>()
            .ok()
    };
    let mut builds: Vec<(u32, u32, u32)> = list
        .iter()
        .filter_map(version)
        .map(|v| (v.major, v.minor, v.build))
        .collect();
    builds.sort_unstable();
    builds.dedup();
    for b in builds {
        let slots: Vec<usize> = (0..list.len())
            .filter(|i| version(&list[*i]).is_some_and(|v| (v.major, v.minor, v.build) == b))
            .collect();
        let mut entries: Vec<serde_json::Value> = slots.iter().map(|i| list[*i].clone()).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(version(e).and_then(|v| v.ubr).unwrap_or(0)));
        for (slot, e) in slots.into_iter().zip(entries) {
            list[slot] = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_entries_newest_first_within_a_build() {
        let e = |os: &str, v: &str| serde_json::json!({"platform": {"os": os, "architecture": "amd64", "os.version": v}});
        let mut list = vec![
            e("windows", "10.0.20348.999"),
            e("linux", ""),
            e("windows", "10.0.17763.5"),
            e("windows", "10.0.20348.1000"),
        ];
        newest_first_within_builds(&mut list);
        let order: Vec<&str> = list
            .iter()
            .map(|x| x["platform"]["os.version"].as_str().unwrap())
            .collect();
        assert_eq!(
            order,
            ["10.0.20348.1000", "", "10.0.17763.5", "10.0.20348.999"]
        );
    }

    #[test]
    fn filtered_index_keeps_entries_and_names_its_source() {
        let src = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"a"},{"digest":"b"},{"digest":"c"}]}"#;
        let d = Digest::sha256(src);
        let out = filtered_index(src, &d, &[true, false, true]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["manifests"][1]["digest"], "c");
        assert_eq!(v["annotations"][SOURCE_DIGEST_ANNOTATION], d.to_string());
    }
}
