//! The registry's rules: pushing and pulling blobs and manifests, on top of `berth-storage`.
//!
//! Routes (HTTP) call this module; it never sees a request or a status code. It speaks in
//! [`RegistryError`]s, which `error` maps to the spec's wire codes.

mod cache;
mod error;
pub mod gc;
pub mod immutable;
mod platforms;
pub mod policy;
pub mod quota;
pub mod retention;
mod uploads;
pub mod verification;
mod verify_queue;

pub use error::RegistryError;
pub use platforms::{Inspection, ResolveAnswer, Variant};
pub use uploads::{Chunk, ChunkRange, UploadStatus};
pub use verify_queue::{ClaimingWorker, MAX_CLAIM_WAIT};

use berth_oci::manifest::{is_index_media_type, ManifestKind};
use berth_oci::media_type::{self as mt};
use berth_oci::{Digest, Manifest, Reference, Tag};
use berth_storage::blob::{BlobBody, BlobRef, BlobStore, ByteRange};
use berth_storage::meta::{Meta, NewManifest, Referrer, StoredManifest};
use cache::Cache;
use std::sync::Arc;
use std::time::Duration;

/// Settings the registry rules need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// DELETE allowed.
    pub delete_enabled: bool,
    /// Largest manifest accepted.
    pub manifest_max_bytes: u64,
    /// Upload time-to-live.
    pub upload_ttl: Duration,
    /// Validation policies.
    pub policies: policy::Policies,
    /// Verification policies.
    pub verify: verification::Policies,
    /// Garbage collection.
    pub gc: gc::GcConfig,
    /// Immutable tags.
    pub immutable: immutable::Rules,
    /// Retention rules.
    pub retention: retention::Rules,
}

/// The registry: blob store, metadata, caches and in-flight upload state. The store and the
/// metadata are its own: every blob, manifest, tag and link is read and written here, so the
/// references it records are the only ones there are.
pub struct Registry {
    /// Blob bytes.
    store: Arc<dyn BlobStore>,
    /// Metadata.
    meta: Meta,
    /// Settings.
    pub settings: Settings,
    /// Wakes workers waiting in a claim when jobs are queued.
    pub verify_wake: tokio::sync::Notify,
    cache: Cache,
    uploads: uploads::Sessions,
    gc: gc::GcState,
    retention: retention::RetentionState,
}

/// Result of a manifest PUT.
#[derive(Debug)]
pub struct PutManifest {
    /// Digest of the stored bytes.
    pub digest: Digest,
    /// Subject digest, for `OCI-Subject`.
    pub subject: Option<Digest>,
    /// Tags now pointing at it.
    pub tags: Vec<String>,
    /// Warnings for `Warning: 299` headers (accepted despite findings).
    pub warnings: Vec<String>,
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Relaxations of manifest validation that only berth's own mirror and pull-through cache ask
/// for, passed to every [`Registry::put_manifest`]. Client pushes use [`PutMode::CLIENT`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutMode {
    /// Accept an index whose children are absent (a sparse copy of an upstream index), whatever
    /// the repository's policy says.
    pub sparse_index: bool,
    /// Accept an image manifest whose blobs are absent (the pull-through cache fetches them
    /// when a client asks).
    pub missing_blobs: bool,
}

impl PutMode {
    /// A client's push: every rule applies.
    pub const CLIENT: PutMode = PutMode {
        sparse_index: false,
        missing_blobs: false,
    };
}

impl Registry {
    /// A registry over the given store and metadata.
    pub fn new(store: Arc<dyn BlobStore>, meta: Meta, settings: Settings) -> Self {
        Self {
            store,
            meta,
            settings,
            verify_wake: tokio::sync::Notify::new(),
            cache: Cache::new(),
            uploads: uploads::Sessions::default(),
            gc: gc::GcState::default(),
            retention: retention::RetentionState::default(),
        }
    }

    // === blobs ===

    /// Size and location of a blob visible in `repo`. A client told a blob is here may build
    /// on it (push a manifest that references it without uploading it again), so a link older
    /// than half the GC grace window is touched first: it then stays for another window.
    pub async fn blob(&self, repo: &str, digest: &Digest) -> Result<(u64, BlobRef)> {
        let unknown = || RegistryError::BlobUnknown(digest.clone());
        let link = self
            .meta
            .blob_link(repo, digest)
            .await?
            .ok_or_else(unknown)?;
        let half = (self.settings.gc.grace_secs / 2) as i64;
        if link.touched_at < berth_storage::now_secs() - half
            && !self.meta.touch_link(repo, digest).await?
        {
            return Err(unknown());
        }
        Ok((
            link.size,
            BlobRef {
                digest: digest.clone(),
                location: link.location,
            },
        ))
    }

    /// Streams a blob visible in `repo`.
    pub async fn read_blob(&self, blob: &BlobRef, range: Option<ByteRange>) -> Result<BlobBody> {
        let digest = &blob.digest;
        match self.store.read(blob, range).await {
            Ok(b) => Ok(b),
            Err(berth_storage::Error::NotFound) => {
                tracing::error!(blob.digest = %digest, "blob in metadata but missing from the store");
                Err(RegistryError::BlobUnknown(digest.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a blob from `repo` (its bytes stay until garbage collection).
    pub async fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
        self.ensure_delete()?;
        if self.meta.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown(digest.clone()))
        }
    }

    /// Cross-repository mount: links `digest` from `from` into `repo`. False when `from` does
    /// not have it (the caller then starts a normal upload).
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        if self.meta.repo_blob(from, digest).await?.is_none() {
            return Ok(false);
        }
        Ok(self.meta.link_blob(repo, digest).await?)
    }

    /// Whether `repo` holds the blob.
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        Ok(self.meta.repo_blob(repo, digest).await?.is_some())
    }

    /// Links a blob the registry already stores (for any repository) into `repo`, as berth's
    /// own mirror and cache do before fetching it. False when no repository has it.
    pub async fn link_stored_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        Ok(self.meta.link_blob(repo, digest).await?)
    }

    /// Where a client may fetch the blob directly (a pre-signed URL), if the store offers it.
    pub async fn redirect_url(&self, blob: &BlobRef) -> Result<Option<String>> {
        Ok(self.store.redirect_url(blob).await?)
    }

    /// The smallest chunk the store accepts, other than the last (S3 multipart parts).
    pub fn chunk_min_length(&self) -> Option<u64> {
        self.store.chunk_min_length()
    }

    /// Closes the metadata store (at shutdown).
    pub async fn close(&self) {
        self.meta.close().await;
    }

    fn ensure_delete(&self) -> Result<()> {
        if self.settings.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::DeleteDisabled)
        }
    }

    // === manifests ===

    /// Resolves a reference to a digest in `repo`.
    pub async fn resolve(&self, repo: &str, reference: &Reference) -> Result<Digest> {
        match reference {
            Reference::Digest(d) => Ok(d.clone()),
            Reference::Tag(t) => {
                if let Some(d) = self.cache.tag(repo, t.as_str()) {
                    return Ok(d);
                }
                let gen = self.cache.generation();
                let d = self
                    .meta
                    .tag(repo, t.as_str())
                    .await?
                    .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))?;
                self.cache.put_tag(gen, repo, t.as_str(), &d);
                Ok(d)
            }
        }
    }

    /// Whether `repo` holds the manifest.
    pub async fn manifest_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        Ok(self.meta.manifest_exists(repo, digest).await?)
    }

    /// What `tag` points at now, read from the metadata (not the cache): for berth's own
    /// mirror and cache, which compare it with an upstream.
    pub async fn current_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>> {
        Ok(self.meta.tag(repo, tag).await?)
    }

    /// A manifest by reference.
    pub async fn manifest(&self, repo: &str, reference: &Reference) -> Result<Arc<StoredManifest>> {
        let digest = self.resolve(repo, reference).await?;
        self.manifest_at(repo, &digest, reference).await
    }

    /// The manifest `reference` resolved to (`digest`); `reference` names it in errors.
    async fn manifest_at(
        &self,
        repo: &str,
        digest: &Digest,
        reference: &Reference,
    ) -> Result<Arc<StoredManifest>> {
        let digest = digest.clone();
        if let Some(m) = self.cache.manifest(repo, &digest) {
            return Ok(m);
        }
        let gen = self.cache.generation();
        let m = self
            .meta
            .manifest(repo, &digest)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))?;
        let m = Arc::new(m);
        self.cache.put_manifest(gen, repo, m.clone());
        Ok(m)
    }

    /// Validates and stores a manifest. `tags` are extra tags (`?tag=`) for a digest PUT;
    /// `mode` relaxes validation for berth's own mirror and cache ([`PutMode::CLIENT`] else).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
        extra_tags: &[String],
        mode: PutMode,
    ) -> Result<PutManifest> {
        let manifest = Manifest::parse(body, content_type)
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let digest = match reference {
            Reference::Digest(want) => {
                let got = Digest::compute(want.algorithm(), body);
                if &got != want {
                    return Err(RegistryError::DigestMismatch {
                        want: want.clone(),
                        got,
                    });
                }
                got
            }
            Reference::Tag(_) => Digest::sha256(body),
        };
        let mut tags = Vec::new();
        if let Reference::Tag(t) = reference {
            tags.push(t.as_str().to_owned());
        }
        for t in extra_tags {
            let t: Tag = t
                .parse()
                .map_err(|e: berth_oci::TagError| RegistryError::ManifestInvalid(e.to_string()))?;
            if !tags.contains(&t.as_str().to_owned()) {
                tags.push(t.as_str().to_owned());
            }
        }
        let checked = self.check_references(repo, &manifest, mode).await?;
        // Protected tags may only point at verified manifests. A refused manifest is still
        // stored (untagged) and its checks queued, so the same push succeeds once they pass.
        let refused = if tags.is_empty() {
            None
        } else {
            self.tag_gate(repo, &digest, &manifest, &tags).await?
        };
        if refused.is_some() {
            tags.clear();
        }
        let annotations = manifest
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_string(a).ok());
        let subject = manifest.subject.as_ref().map(|s| s.digest.clone());
        let new = NewManifest {
            digest: &digest,
            media_type: &manifest.media_type,
            artifact_type: manifest.referrer_artifact_type(),
            subject: subject.as_ref(),
            annotations,
            content: body,
            blobs: checked.blobs,
            children: checked.children,
            absent_blobs: checked.absent_blobs,
            absent_children: checked.absent_children,
            entries: checked.entries,
            findings: checked.findings.clone(),
        };
        let immutable = |t: &str| self.settings.immutable.rule_for(repo, t);
        match self.meta.put_manifest(repo, &new, &tags, &immutable).await {
            Ok(()) => {}
            // Removed by garbage collection after the check above.
            Err(berth_storage::Error::Missing(d)) => {
                return Err(RegistryError::ManifestBlobUnknown(d))
            }
            Err(berth_storage::Error::Immutable { tag, target, rule }) => {
                return Err(RegistryError::Immutable {
                    action: format!("cannot move tag {tag} of {repo} to {digest}"),
                    tag,
                    target,
                    rule,
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.cache.invalidate();
        tracing::info!(repo.name = repo, manifest.digest = %digest, tags = ?tags, "manifest stored");
        if manifest.subject.is_none() {
            // Queueing is not part of the push: a failure is logged, and `berth verify`
            // queues again.
            // Boxed: recording a result stores a manifest, which comes back here.
            if let Err(e) = Box::pin(self.enqueue_verification(repo, &digest, false)).await {
                tracing::warn!(repo.name = repo, manifest.digest = %digest, error = %e, "could not queue verification");
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        Ok(PutManifest {
            digest,
            subject,
            tags,
            warnings: checked.findings.into_iter().map(|f| f.message).collect(),
        })
    }

    /// Every blob must be there, with the size its descriptor says; foreign layers must come
    /// from allowed URLs. Index entries are checked by `check_index`.
    async fn check_references(
        &self,
        repo: &str,
        m: &Manifest,
        mode: PutMode,
    ) -> Result<platforms::Checked> {
        let mut out = platforms::Checked::default();
        match m.kind {
            ManifestKind::Image => {
                let config = m.config.iter();
                for (i, d) in config.chain(m.layers.iter()).enumerate() {
                    let what = if i == 0 {
                        "config".to_owned()
                    } else {
                        format!("layers[{}]", i - 1)
                    };
                    let urls = d.urls.as_deref().unwrap_or_default();
                    if mt::is_foreign_layer(&d.media_type) && !urls.is_empty() {
                        for u in urls {
                            if let Some(why) = self.settings.policies.refuse_url(u) {
                                return Err(RegistryError::ForeignLayerRefused {
                                    what,
                                    digest: d.digest.clone(),
                                    why,
                                });
                            }
                        }
                        // Foreign layers live elsewhere; served as pushed when present here.
                        if self.meta.repo_blob(repo, &d.digest).await?.is_some() {
                            out.blobs.push(d.digest.clone());
                        } else {
                            out.absent_blobs.push(d.digest.clone());
                        }
                        continue;
                    }
                    let size = match self.meta.repo_blob(repo, &d.digest).await?.map(|(s, _)| s) {
                        Some(s) => s,
                        None if d.digest.as_str() == mt::EMPTY_JSON_DIGEST && d.size == 2 => {
                            // The well-known empty config `{}`: some clients never push it.
                            self.put_small_blob(repo, b"{}").await?;
                            2
                        }
                        // The pull-through cache stores manifests before their blobs.
                        None if mode.missing_blobs => {
                            out.absent_blobs.push(d.digest.clone());
                            continue;
                        }
                        None => return Err(RegistryError::ManifestBlobUnknown(d.digest.clone())),
                    };
                    if size != d.size as u64 {
                        return Err(RegistryError::ManifestInvalid(format!(
                            "{what}: descriptor size {} does not match blob {} of {size} bytes",
                            d.size, d.digest
                        )));
                    }
                    out.blobs.push(d.digest.clone());
                }
            }
            ManifestKind::Index => self.check_index(repo, m, mode, &mut out).await?,
        }
        Ok(out)
    }

    /// Deletes a manifest (by digest, with its tags) or a tag.
    pub async fn delete_manifest(&self, repo: &str, reference: &Reference) -> Result<()> {
        self.ensure_delete()?;
        let immutable = |t: &str| self.settings.immutable.rule_for(repo, t);
        let found = match reference {
            Reference::Tag(t) => self.meta.delete_tag(repo, t.as_str(), &immutable).await,
            Reference::Digest(d) => self
                .meta
                .delete_manifest(repo, d, &immutable)
                .await
                .map(|r| r.is_some()),
        };
        let found = match found {
            Ok(f) => f,
            Err(berth_storage::Error::Immutable { tag, target, rule }) => {
                let action = match reference {
                    Reference::Tag(_) => format!("cannot delete tag {tag} of {repo}"),
                    Reference::Digest(d) => format!("cannot delete manifest {d} of {repo}"),
                };
                return Err(RegistryError::Immutable {
                    action,
                    tag,
                    target,
                    rule,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.cache.invalidate();
        if found {
            Ok(())
        } else {
            Err(RegistryError::ManifestUnknown(reference.to_string()))
        }
    }

    /// Manifests in `repo` that name `digest` as their subject.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        Ok(self.meta.referrers(repo, digest, artifact_type).await?)
    }

    /// Repository names after `last`, in order, at most `limit`.
    pub async fn repositories(&self, last: Option<&str>, limit: i64) -> Result<Vec<String>> {
        Ok(self.meta.list_repos(last, limit).await?)
    }

    /// Tags of a repository (NAME_UNKNOWN if it does not exist).
    pub async fn tags(&self, repo: &str, last: Option<&str>, limit: i64) -> Result<Vec<String>> {
        if !self.meta.repo_exists(repo).await? {
            return Err(RegistryError::NameUnknown(repo.to_owned()));
        }
        Ok(self.meta.list_tags(repo, last, limit).await?)
    }

    /// Whether the media type of a stored manifest is a list.
    pub fn is_index(m: &StoredManifest) -> bool {
        is_index_media_type(&m.media_type)
    }
}

/// A registry on the embedded defaults (filesystem + SQLite) in a temporary directory, for the
/// registry's own tests.
#[cfg(test)]
pub(crate) async fn test_registry() -> (tempfile::TempDir, Arc<Registry>) {
    test_registry_with(|_| {}).await
}

/// [`test_registry`] with the configuration changed by `f` first.
#[cfg(test)]
pub(crate) async fn test_registry_with(
    f: impl FnOnce(&mut crate::config::Config),
) -> (tempfile::TempDir, Arc<Registry>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = crate::config::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    f(&mut cfg);
    let opened = crate::open(&cfg)
        .await
        .expect("registry on the test config");
    (dir, opened.registry)
}
