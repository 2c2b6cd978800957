//! The pull-through cache: under a prefix, a manifest or blob missing here is fetched from the
//! upstream, checked, stored and then served from the local copy. Tags are revalidated with
//! one HEAD once older than the TTL; while the upstream is down (or rate-limits), a cached
//! copy is served; a miss during an upstream 429 answers 429 with the upstream's Retry-After.

use super::def::{validate_proxy, ProxyDef};
use super::upstream::{Upstream, UpstreamError};
use super::Mirrors;
use crate::registry::{PutMode, RegistryError};
use berth_oci::{Digest, Reference};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One cache prefix.
pub struct Proxy {
    def: ProxyDef,
    prefix: String,
    up: Upstream,
}

impl Proxy {
    /// Sets up the upstream client.
    pub fn new(def: ProxyDef) -> anyhow::Result<Self> {
        validate_proxy(&def)
            .map_err(|e| anyhow::anyhow!("invalid value for key \"proxy\": {e}"))?;
        let prefix = format!("{}/", def.prefix.trim_matches('/'));
        let up = Upstream::new(&def.upstream, def.auth.clone())?
            .impatient(std::time::Duration::from_secs(def.upstream_timeout_secs))?;
        Ok(Self { def, prefix, up })
    }
}

/// One fetch per blob or manifest at a time: concurrent misses wait for the first.
#[derive(Default)]
pub struct Inflight(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Inflight {
    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, v| Arc::strong_count(v) > 1);
        m.entry(key.to_owned()).or_default().clone()
    }
}

/// Why the cache could not answer from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The upstream answered 429.
    #[error("the upstream registry is rate-limiting this cache; try again later")]
    RateLimited {
        /// The upstream's `Retry-After`, passed on.
        retry_after: Option<String>,
    },
    /// The upstream does not have it either.
    #[error("not found upstream")]
    NotFoundUpstream,
    /// The upstream cannot be reached (or answers 5xx).
    #[error("the upstream registry is unavailable")]
    Unavailable,
    /// The upstream refused or answered something unusable.
    #[error("the upstream registry failed")]
    Failed,
    /// Storing what came back failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// An upstream failure as the client of the cache sees it (the cause is logged here, not sent).
fn cache_error(e: UpstreamError) -> CacheError {
    match e {
        UpstreamError::TooMany { retry_after } => CacheError::RateLimited { retry_after },
        UpstreamError::NotFound => CacheError::NotFoundUpstream,
        UpstreamError::Unavailable(m) => {
            tracing::warn!(error = %m, "pull-through upstream unavailable");
            CacheError::Unavailable
        }
        UpstreamError::Denied(m) | UpstreamError::Other(m) => {
            tracing::warn!(error = %m, "pull-through upstream failed");
            CacheError::Failed
        }
    }
}

/// A blob streamed to the client while the cache stores it.
pub struct StreamedBlob {
    /// Its length, as the upstream declared it.
    pub len: u64,
    /// The bytes (the stream fails if the upstream's do).
    pub body: berth_storage::blob::ByteStream,
}

impl Mirrors {
    /// The cache whose prefix `repo` is under, with the upstream repository name.
    fn proxy_for<'a>(&'a self, repo: &'a str) -> Option<(&'a Proxy, &'a str)> {
        self.proxies.iter().find_map(|p| {
            repo.strip_prefix(p.prefix.as_str())
                .filter(|r| !r.is_empty())
                .map(|r| (p, r))
        })
    }

    /// Whether any pull-through cache is configured.
    pub fn has_proxies(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// Before a manifest GET/HEAD: makes the manifest present here if `repo` is under a cache
    /// prefix (fetching on a miss, revalidating a tag past its TTL). A no-op elsewhere.
    pub async fn ensure_manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<(), CacheError> {
        let Some((p, up_repo)) = self.proxy_for(repo) else {
            return Ok(());
        };
        let reg = &self.registry;
        let lock = self.fetches.lock_for(&format!("m {repo} {reference}"));
        let _held = lock.lock().await;
        match reference {
            Reference::Digest(d) => {
                if reg.manifest_exists(repo, d).await? {
                    return Ok(());
                }
                self.fetch_manifest(p, repo, up_repo, reference, Some(d))
                    .await
                    .map(|_| ())
            }
            Reference::Tag(t) => {
                let tag = t.as_str();
                let local = reg.current_tag(repo, tag).await?;
                let checked = self
                    .records
                    .proxy_tag(repo, tag)
                    .await
                    .map_err(RegistryError::from)?;
                let now = berth_storage::now_secs();
                if let (Some(l), Some((d, at))) = (&local, &checked) {
                    if d == l.as_str() && now - at < p.def.tag_ttl_secs as i64 {
                        return Ok(());
                    }
                }
                let head = p.up.head_manifest(up_repo, tag).await;
                match (head, local) {
                    (Ok(Some(d)), Some(l)) if d == l => {
                        self.records
                            .put_proxy_tag(repo, tag, l.as_str())
                            .await
                            .map_err(RegistryError::from)?;
                        tracing::debug!(repo.name = repo, tag, "cached tag still current upstream");
                        Ok(())
                    }
                    (Ok(_), _) => self
                        .fetch_manifest(p, repo, up_repo, reference, None)
                        .await
                        .map(|_| ()),
                    (Err(UpstreamError::NotFound), Some(_)) => Ok(()),
                    (Err(e), Some(_)) => {
                        // Serve what we have while the upstream is down or rate-limiting.
                        tracing::warn!(repo.name = repo, tag, error = %e, "upstream check failed; serving the cached copy");
                        Ok(())
                    }
                    (Err(UpstreamError::NotFound), None) => Ok(()),
                    (Err(e), None) => Err(cache_error(e)),
                }
            }
        }
    }

    async fn fetch_manifest(
        &self,
        p: &Proxy,
        repo: &str,
        up_repo: &str,
        reference: &Reference,
        want: Option<&Digest>,
    ) -> Result<Digest, CacheError> {
        let reg = &self.registry;
        let max = reg.settings.manifest_max_bytes;
        let m = match p
            .up
            .get_manifest(up_repo, &reference.to_string(), want, max)
            .await
        {
            Ok(m) => m,
            Err(UpstreamError::NotFound) => return Ok(Digest::sha256(b"")),
            Err(e) => return Err(cache_error(e)),
        };
        let mode = PutMode {
            sparse_index: true,
            missing_blobs: true,
        };
        reg.put_manifest(
            repo,
            reference,
            m.media_type.as_deref(),
            &m.bytes,
            &[],
            mode,
        )
        .await?;
        if let Reference::Tag(t) = reference {
            self.records
                .put_proxy_tag(repo, t.as_str(), m.digest.as_str())
                .await
                .map_err(RegistryError::from)?;
        }
        tracing::info!(repo.name = repo, reference = %reference, manifest.digest = %m.digest, "pull-through: manifest cached");
        Ok(m.digest)
    }

    /// A whole-blob GET missing under a cache prefix: the upstream's bytes go to the client
    /// while they are stored (digest checked at the end), so the first pull of a multi-GB layer
    /// does not wait for the whole download. The copy finishes even if the client hangs up.
    /// `None`: not a miss this handles (not proxied, present, a HEAD or a Range request, or an
    /// upstream that does not say the length); the caller goes on with [`Self::ensure_blob`].
    pub async fn stream_blob_miss(
        &self,
        repo: &str,
        digest: &Digest,
        whole_get: bool,
    ) -> Result<Option<StreamedBlob>, CacheError> {
        let Some((p, up_repo)) = self.proxy_for(repo) else {
            return Ok(None);
        };
        let reg = &self.registry;
        if !whole_get || reg.has_blob(repo, digest).await? {
            return Ok(None);
        }
        let lock = self.fetches.lock_for(&format!("b {digest}"));
        let Ok(held) = lock.clone().try_lock_owned() else {
            // Another request is fetching it: wait for that copy instead.
            return Ok(None);
        };
        if reg.link_stored_blob(repo, digest).await? {
            return Ok(None);
        }
        let resp = match p.up.get_blob(up_repo, digest, 0).await {
            Ok(r) => r,
            Err(UpstreamError::NotFound) => return Ok(None),
            Err(e) => return Err(cache_error(e)),
        };
        let Some(len) = resp.content_length() else {
            return Ok(None);
        };
        type Chunk = std::io::Result<bytes::Bytes>;
        let (store_tx, store_rx) = futures::channel::mpsc::channel::<Chunk>(8);
        let (client_tx, client_rx) = futures::channel::mpsc::channel::<Chunk>(8);
        let reg = self.registry.clone();
        let (repo_owned, digest_owned) = (repo.to_owned(), digest.clone());
        tokio::spawn(async move {
            use futures::SinkExt;
            let _held = held;
            let store = reg.monolithic_upload(&repo_owned, &digest_owned, store_rx.boxed());
            let pump = async move {
                let (mut store_tx, mut client_tx) = (store_tx, client_tx);
                let mut client = true;
                let mut upstream = resp.bytes_stream();
                while let Some(c) = upstream.next().await {
                    let c = c.map_err(std::io::Error::other);
                    let failed = c.is_err();
                    let copy = match &c {
                        Ok(b) => Ok(b.clone()),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    if client && client_tx.send(copy).await.is_err() {
                        client = false;
                    }
                    if store_tx.send(c).await.is_err() || failed {
                        break;
                    }
                }
            };
            let (stored, ()) = futures::join!(store, pump);
            match stored {
                Ok(n) => {
                    tracing::info!(repo.name = %repo_owned, blob.digest = %digest_owned, size_bytes = n, "pull-through: blob cached while streamed")
                }
                Err(e) => {
                    tracing::warn!(repo.name = %repo_owned, blob.digest = %digest_owned, error = %e, "pull-through: streamed blob not cached")
                }
            }
        });
        Ok(Some(StreamedBlob {
            len,
            body: client_rx.boxed(),
        }))
    }

    /// Before a blob GET/HEAD: makes the blob present here if `repo` is under a cache prefix.
    pub async fn ensure_blob(&self, repo: &str, digest: &Digest) -> Result<(), CacheError> {
        let Some((p, up_repo)) = self.proxy_for(repo) else {
            return Ok(());
        };
        let reg = &self.registry;
        if reg.has_blob(repo, digest).await? {
            return Ok(());
        }
        let lock = self.fetches.lock_for(&format!("b {digest}"));
        let _held = lock.lock().await;
        if reg.link_stored_blob(repo, digest).await? {
            return Ok(());
        }
        let resp = match p.up.get_blob(up_repo, digest, 0).await {
            Ok(r) => r,
            Err(UpstreamError::NotFound) => return Ok(()),
            Err(e) => return Err(cache_error(e)),
        };
        let body = resp
            .bytes_stream()
            .map(|c| c.map_err(std::io::Error::other))
            .boxed();
        let n = reg.monolithic_upload(repo, digest, body).await?;
        tracing::info!(repo.name = repo, blob.digest = %digest, size_bytes = n, "pull-through: blob cached");
        Ok(())
    }
}
