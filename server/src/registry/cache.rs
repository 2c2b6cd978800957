//! In-process caches for the manifest hot path: tag → digest and (repo, digest) → bytes.
//!
//! Any write bumps a generation counter and clears both maps; a reader that started before a
//! write cannot put a stale entry back, because it inserts only if the generation it read
//! before going to the database is still current. With several replicas (later), each one
//! only sees its own writes, so the cache will then need a time limit or a change feed.

use berth_oci::Digest;
use berth_storage::meta::StoredManifest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const MAX_ENTRIES: usize = 20_000;
const MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Inner {
    tags: HashMap<(String, String), Digest>,
    manifests: HashMap<(String, Digest), Arc<StoredManifest>>,
    bytes: usize,
}

/// The cache.
pub struct Cache {
    gen: AtomicU64,
    inner: RwLock<Inner>,
}

impl Cache {
    pub fn new() -> Self {
        Self {
            gen: AtomicU64::new(0),
            inner: RwLock::new(Inner::default()),
        }
    }

    /// The generation to pass to `put_*` after a database read.
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        let g = self.inner.read().ok()?;
        g.tags.get(&(repo.to_owned(), tag.to_owned())).cloned()
    }

    pub fn manifest(&self, repo: &str, d: &Digest) -> Option<Arc<StoredManifest>> {
        let g = self.inner.read().ok()?;
        g.manifests.get(&(repo.to_owned(), d.clone())).cloned()
    }

    pub fn put_tag(&self, gen: u64, repo: &str, tag: &str, d: &Digest) {
        if let Ok(mut g) = self.inner.write() {
            if self.generation() != gen {
                return;
            }
            if g.tags.len() >= MAX_ENTRIES {
                g.tags.clear();
            }
            g.tags.insert((repo.to_owned(), tag.to_owned()), d.clone());
        }
    }

    pub fn put_manifest(&self, gen: u64, repo: &str, m: Arc<StoredManifest>) {
        if let Ok(mut g) = self.inner.write() {
            if self.generation() != gen {
                return;
            }
            if g.manifests.len() >= MAX_ENTRIES || g.bytes + m.content.len() > MAX_BYTES {
                g.manifests.clear();
                g.bytes = 0;
            }
            g.bytes += m.content.len();
            g.manifests.insert((repo.to_owned(), m.digest.clone()), m);
        }
    }

    /// Forgets everything; called after every write.
    pub fn invalidate(&self) {
        if let Ok(mut g) = self.inner.write() {
            self.gen.fetch_add(1, Ordering::AcqRel);
            g.tags.clear();
            g.manifests.clear();
            g.bytes = 0;
        }
    }
}
