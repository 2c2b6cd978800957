//! Metadata through sqlx: repositories, blobs and their links, manifests, tags, uploads.
//!
//! Every SQL statement of berth lives in this module (`auth` holds the access-control tables). The SQL is kept portable (numbered
//! `$n` parameters, `ON CONFLICT`, no SQLite-only functions) so the PostgreSQL backend can
//! share it. SQLite runs in WAL mode with one writer connection and a pool of readers.

mod auth;
mod gc;
mod mirror;
mod quota;
mod retention;
mod runs;
mod verify;
pub use auth::{Permission, Robot, User};
pub use gc::{BlobRow, Edge, KnownObjects, ManifestNode, RepoGraph};
pub use mirror::{MirrorRun, MirrorTag, RunTotals};
pub use quota::{QuotaRecount, QuotaRule, QuotaUsage};
pub use retention::TagRow;
pub use runs::{RunKind, RunRow};
pub use verify::{ClaimFilter, Finish, Finished, JobRow, NewJob, WorkerRow};

use crate::{now_secs, Error, Result};
use berth_oci::Digest;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use uuid::Uuid;

/// Which tags of a repository are immutable: the rule that makes `tag` so (as text, for the
/// refusal), or `None`. The rules are the server's configuration; the metadata applies them
/// inside its write transactions, so a check and the write it guards cannot be separated.
pub type Immutable<'a> = &'a (dyn Fn(&str) -> Option<String> + Send + Sync);

/// No tag is immutable.
pub fn mutable(_: &str) -> Option<String> {
    None
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The exact bytes.
    pub content: bytes::Bytes,
}

/// What the referrers API lists for one referring manifest.
#[derive(Debug, Clone)]
pub struct Referrer {
    /// The referrer's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: i64,
    /// `artifactType`, else the config media type.
    pub artifact_type: Option<String>,
    /// Top-level annotations as JSON text.
    pub annotations: Option<String>,
}

/// A manifest to insert, with everything the registry derived from it.
#[derive(Debug, Clone)]
pub struct NewManifest<'a> {
    /// Digest of `content`.
    pub digest: &'a Digest,
    /// Media type.
    pub media_type: &'a str,
    /// Referrers artifact type.
    pub artifact_type: Option<&'a str>,
    /// `subject.digest`.
    pub subject: Option<&'a Digest>,
    /// Top-level annotations as JSON text.
    pub annotations: Option<String>,
    /// The exact bytes.
    pub content: &'a [u8],
    /// Blobs it references (config, layers). Each must be linked to the repository when the
    /// transaction commits, or the put fails with [`Error::Missing`].
    pub blobs: Vec<Digest>,
    /// Manifests it references (index children). Each must be in the repository.
    pub children: Vec<Digest>,
    /// Blobs it references that need not be here yet (the pull-through cache stores
    /// manifests before their blobs; foreign layers). Recorded as edges, not checked.
    pub absent_blobs: Vec<Digest>,
    /// Children that need not be here (a sparse index). Recorded as edges, not checked.
    pub absent_children: Vec<Digest>,
    /// Index entries with their platforms.
    pub entries: Vec<IndexEntry>,
    /// Validation findings to keep with it.
    pub findings: Vec<Finding>,
}

/// One entry of an index as recorded for platform queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Position in `manifests`.
    pub position: i64,
    /// The child manifest.
    pub child: Digest,
    /// The child's media type.
    pub media_type: String,
    /// The child's size.
    pub size: i64,
    /// `platform.os`.
    pub os: Option<String>,
    /// `platform.architecture`.
    pub architecture: Option<String>,
    /// `platform.variant`.
    pub variant: Option<String>,
    /// `platform["os.version"]`.
    pub os_version: Option<String>,
    /// `platform["os.features"]`, comma-separated.
    pub os_features: Option<String>,
}

/// A validation finding stored with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Index position it concerns, if any.
    pub position: Option<i64>,
    /// Machine-readable kind, e.g. `platform-mismatch`.
    pub kind: String,
    /// Human-readable message.
    pub message: String,
}

/// A blob as linked to one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLink {
    /// Size in bytes.
    pub size: u64,
    /// Where the bytes live, when not at the digest's place.
    pub location: Option<String>,
    /// When the link was last created or used by a push (Unix seconds).
    pub touched_at: i64,
}

/// An upload session row.
#[derive(Debug, Clone)]
pub struct UploadRow {
    /// Session id.
    pub id: Uuid,
    /// Repository the session belongs to.
    pub repo: String,
    /// Bytes received and stored so far.
    pub size: u64,
}

/// A write transaction on the single writer connection.
///
/// Transactions are opened with `BEGIN IMMEDIATE` and closed with plain SQL rather than
/// sqlx's `Transaction`: when SQLite rolls a transaction back by itself (SQLITE_FULL does),
/// sqlx's own bookkeeping still believes it is open, and every later `begin()` would become a
/// SAVEPOINT inside a transaction that never commits, acknowledging writes it never makes.
/// A transaction that did not commit closes its connection, so no unknown state is reused.
struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    committed: bool,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool) -> Result<Self> {
        let mut conn = pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(Self {
            conn,
            committed: false,
        })
    }

    async fn commit(mut self) -> Result<()> {
        match sqlx::query("COMMIT").execute(&mut *self.conn).await {
            Ok(_) => {
                self.committed = true;
                Ok(())
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *self.conn).await;
                Err(e.into())
            }
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            // Closing a SQLite connection discards its open transaction.
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// The metadata store.
#[derive(Debug, Clone)]
pub struct Meta {
    write: SqlitePool,
    read: SqlitePool,
    /// The configured byte quotas (see [`Meta::set_quotas`]).
    quotas: Arc<RwLock<Arc<Vec<QuotaRule>>>>,
}

fn digest_col(s: String) -> Result<Digest> {
    s.parse().map_err(|e| Error::Corrupt(format!("{e}")))
}

impl Meta {
    /// Opens (creating) the SQLite database at `path` and applies migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let base = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the client hears 201, even on power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("cache_size", "-16000");
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(base.read_only(true))
            .await?;
        Ok(Self {
            write,
            read,
            quotas: Arc::default(),
        })
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    async fn repo_id_tx(tx: &mut sqlx::SqliteConnection, name: &str) -> Result<i64> {
        sqlx::query(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        Ok(id)
    }

    // === blobs ===

    /// Records a committed blob and links it to `repo`; removes the upload row, if any.
    /// Returns the blob's location as recorded (when another upload of the same digest got
    /// there first, its location wins and the caller removes the bytes it just stored), and
    /// whether it was linked: the inner error is the quota the link would exceed (the blob
    /// is then recorded unlinked, so GC collects it, and counts against nothing).
    pub async fn commit_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        upload: Option<Uuid>,
        location: Option<&str>,
    ) -> Result<(Option<String>, Result<(), Error>)> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let now = now_secs();
        let existing = sqlx::query("SELECT location, deleting_at FROM blobs WHERE digest = $1")
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let recorded = match existing {
            Some(row) if row.get::<Option<i64>, _>(1).is_some() => {
                tx.commit().await?;
                return Err(Error::Deleting(digest.clone()));
            }
            Some(row) => {
                sqlx::query("UPDATE blobs SET touched_at = $2 WHERE digest = $1")
                    .bind(digest.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                row.get(0)
            }
            None => {
                sqlx::query("INSERT INTO blobs (digest, size, created_at, location, touched_at) VALUES ($1, $2, $3, $4, $3)")
                    .bind(digest.as_str())
                    .bind(size as i64)
                    .bind(now)
                    .bind(location)
                    .execute(&mut *tx)
                    .await?;
                location.map(str::to_owned)
            }
        };
        let repo_id = Self::repo_id_tx(&mut tx, repo).await?;
        let linked = self
            .link_tx(&mut tx, repo, repo_id, digest, size, now)
            .await?;
        if let Some(id) = upload {
            sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((recorded, linked))
    }

    /// Links (or re-touches the link of) a blob in a repository. A new link is charged to
    /// the quotas covering the repository; the inner error is the quota it would exceed
    /// (nothing linked then).
    async fn link_tx(
        &self,
        tx: &mut sqlx::SqliteConnection,
        repo: &str,
        repo_id: i64,
        digest: &Digest,
        size: u64,
        now: i64,
    ) -> Result<Result<(), Error>> {
        let linked: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo_id = $1 AND digest = $2")
                .bind(repo_id)
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if linked.is_none() {
            if let Err(e) = self.charge_tx(tx, repo, digest, size).await? {
                return Ok(Err(e));
            }
        }
        sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, created_at, touched_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (repo_id, digest) DO UPDATE SET touched_at = excluded.touched_at",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Ok(Ok(()))
    }

    /// Before a finished upload's bytes are put in place: touches the blob row so that no GC
    /// run starts removing it for a grace window, or reports that one is removing it now
    /// (`Some(since)`: the caller waits, see [`Meta::finish_deleting`]).
    pub async fn reserve_blob(&self, digest: &Digest) -> Result<Option<i64>> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let deleting: Option<Option<i64>> =
            sqlx::query_scalar("SELECT deleting_at FROM blobs WHERE digest = $1")
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(Some(since)) = deleting {
            tx.commit().await?;
            return Ok(Some(since));
        }
        if deleting.is_some() {
            sqlx::query("UPDATE blobs SET touched_at = $2 WHERE digest = $1")
                .bind(digest.as_str())
                .bind(now_secs())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(None)
    }

    /// Size and location of a blob anywhere in the registry.
    pub async fn blob(&self, digest: &Digest) -> Result<Option<(u64, Option<String>)>> {
        let row = sqlx::query("SELECT size, location FROM blobs WHERE digest = $1")
            .bind(digest.as_str())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get(1))))
    }

    /// Size and location of a blob linked to `repo`.
    pub async fn repo_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<(u64, Option<String>)>> {
        let row = sqlx::query(
            "SELECT b.size, b.location FROM repo_blobs rb \
             JOIN repositories r ON r.id = rb.repo_id \
             JOIN blobs b ON b.digest = rb.digest \
             WHERE r.name = $1 AND rb.digest = $2",
        )
        .bind(repo)
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get(1))))
    }

    /// Links an existing blob to `repo` (cross-repository mount). False if the blob is unknown
    /// or being removed.
    pub async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let now = now_secs();
        let size: Option<i64> = sqlx::query_scalar(
            "UPDATE blobs SET touched_at = $2 WHERE digest = $1 AND deleting_at IS NULL RETURNING size",
        )
        .bind(digest.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(size) = size else {
            tx.commit().await?;
            return Ok(false);
        };
        let repo_id = Self::repo_id_tx(&mut tx, repo).await?;
        let linked = self
            .link_tx(&mut tx, repo, repo_id, digest, size as u64, now)
            .await?;
        tx.commit().await?;
        linked?;
        Ok(true)
    }

    /// A blob linked to `repo`, with when the link was last touched.
    pub async fn blob_link(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLink>> {
        let row = sqlx::query(
            "SELECT b.size, b.location, rb.touched_at FROM repo_blobs rb \
             JOIN repositories r ON r.id = rb.repo_id \
             JOIN blobs b ON b.digest = rb.digest \
             WHERE r.name = $1 AND rb.digest = $2",
        )
        .bind(repo)
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| BlobLink {
            size: r.get::<i64, _>(0) as u64,
            location: r.get(1),
            touched_at: r.get(2),
        }))
    }

    /// Marks a link as used now (a client was told the blob is there and may build on it).
    /// False when the link is gone (a GC run removed it first).
    pub async fn touch_link(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE repo_blobs SET touched_at = $3 WHERE digest = $2 \
             AND repo_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repo)
        .bind(digest.as_str())
        .bind(now_secs())
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Unlinks a blob from `repo`. False if it was not linked.
    pub async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let r = sqlx::query(
            "DELETE FROM repo_blobs WHERE digest = $2 AND repo_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repo)
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await?;
        let gone = r.rows_affected() > 0;
        if gone {
            self.uncharge_tx(&mut tx, repo, digest).await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    // === manifests ===

    /// Stores a manifest in `repo`, links its blobs, and points `tags` at it, in one
    /// transaction. An `immutable` tag that points elsewhere already fails the whole put with
    /// [`Error::Immutable`] (pointing it again at the same manifest is fine).
    pub async fn put_manifest(
        &self,
        repo: &str,
        m: &NewManifest<'_>,
        tags: &[String],
        immutable: Immutable<'_>,
    ) -> Result<()> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let repo_id = Self::repo_id_tx(&mut tx, repo).await?;
        let now = now_secs();
        if let Some(e) =
            Self::immutable_refusal(&mut tx, repo_id, tags, Some(m.digest), immutable).await?
        {
            tx.commit().await?;
            return Err(e);
        }
        // The references are checked here, under the write lock, so that no GC run can remove
        // one between the check and the commit.
        for d in &m.blobs {
            let linked: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo_id = $1 AND digest = $2")
                    .bind(repo_id)
                    .bind(d.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if linked.is_none() {
                tx.commit().await?;
                return Err(Error::Missing(d.clone()));
            }
        }
        if let Err(e) = self
            .over_quota_tx(&mut tx, repo, &format!("manifest {}", m.digest))
            .await?
        {
            tx.commit().await?;
            return Err(e);
        }
        for d in &m.children {
            let present: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM manifests WHERE repo_id = $1 AND digest = $2")
                    .bind(repo_id)
                    .bind(d.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if present.is_none() {
                tx.commit().await?;
                return Err(Error::Missing(d.clone()));
            }
        }
        sqlx::query(
            "INSERT INTO manifests (repo_id, digest, media_type, artifact_type, subject, annotations, size, content, created_at, touched_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
             ON CONFLICT (repo_id, digest) DO UPDATE SET touched_at = excluded.touched_at",
        )
        .bind(repo_id)
        .bind(m.digest.as_str())
        .bind(m.media_type)
        .bind(m.artifact_type)
        .bind(m.subject.map(|s| s.as_str()))
        .bind(m.annotations.as_deref())
        .bind(m.content.len() as i64)
        .bind(m.content)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let edges = [
            ("blob", &m.blobs),
            ("manifest", &m.children),
            ("blob", &m.absent_blobs),
            ("manifest", &m.absent_children),
        ];
        for (kind, list) in edges {
            for child in list {
                sqlx::query(
                    "INSERT INTO manifest_refs (repo_id, parent, child, kind) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(repo_id)
                .bind(m.digest.as_str())
                .bind(child.as_str())
                .bind(kind)
                .execute(&mut *tx)
                .await?;
            }
        }
        let inserted: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM index_entries WHERE repo_id = $1 AND index_digest = $2",
        )
        .bind(repo_id)
        .bind(m.digest.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if inserted == 0 {
            for e in &m.entries {
                sqlx::query(
                    "INSERT INTO index_entries (repo_id, index_digest, position, child_digest, media_type, size, os, architecture, variant, os_version, os_features) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(repo_id)
                .bind(m.digest.as_str())
                .bind(e.position)
                .bind(e.child.as_str())
                .bind(&e.media_type)
                .bind(e.size)
                .bind(&e.os)
                .bind(&e.architecture)
                .bind(&e.variant)
                .bind(&e.os_version)
                .bind(&e.os_features)
                .execute(&mut *tx)
                .await?;
            }
            for f in &m.findings {
                sqlx::query(
                    "INSERT INTO findings (repo_id, manifest_digest, position, kind, message, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(repo_id)
                .bind(m.digest.as_str())
                .bind(f.position)
                .bind(&f.kind)
                .bind(&f.message)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        for tag in tags {
            sqlx::query(
                "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(m.digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Which of `digests` are manifests in `repo`.
    pub async fn manifest_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT m.size FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repo)
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(n.is_some())
    }

    /// A manifest by digest.
    pub async fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.media_type, m.content FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repo)
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| StoredManifest {
            digest: digest.clone(),
            media_type: r.get(0),
            content: bytes::Bytes::from(r.get::<Vec<u8>, _>(1)),
        }))
    }

    /// The digest a tag points at.
    pub async fn tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>> {
        let d: Option<String> = sqlx::query_scalar(
            "SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo)
        .bind(tag)
        .fetch_optional(&self.read)
        .await?;
        d.map(digest_col).transpose()
    }

    /// The refusal ([`Error::Immutable`]) when one of `tags` is immutable and exists in the
    /// repository pointing at anything but `to` (`None`: the tags are to be removed).
    async fn immutable_refusal(
        tx: &mut sqlx::SqliteConnection,
        repo_id: i64,
        tags: &[String],
        to: Option<&Digest>,
        immutable: Immutable<'_>,
    ) -> Result<Option<Error>> {
        for tag in tags {
            let Some(rule) = immutable(tag) else {
                continue;
            };
            let current: Option<String> =
                sqlx::query_scalar("SELECT digest FROM tags WHERE repo_id = $1 AND name = $2")
                    .bind(repo_id)
                    .bind(tag)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(current) = current else {
                continue;
            };
            if to.is_some_and(|d| d.as_str() == current) {
                continue;
            }
            return Ok(Some(Error::Immutable {
                tag: tag.clone(),
                target: digest_col(current)?,
                rule,
            }));
        }
        Ok(None)
    }

    /// Deletes a tag. False if it did not exist; [`Error::Immutable`] if it is immutable.
    pub async fn delete_tag(
        &self,
        repo: &str,
        tag: &str,
        immutable: Immutable<'_>,
    ) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let repo_id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
                .bind(repo)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(repo_id) = repo_id else {
            return Ok(false);
        };
        if let Some(e) =
            Self::immutable_refusal(&mut tx, repo_id, &[tag.to_owned()], None, immutable).await?
        {
            tx.commit().await?;
            return Err(e);
        }
        let r = sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes a manifest, its edges and every tag pointing at it. Returns the removed tags,
    /// or `None` if the manifest did not exist; [`Error::Immutable`] when an immutable tag
    /// points at it or at an index that holds it (directly or through nested indexes).
    pub async fn delete_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        immutable: Immutable<'_>,
    ) -> Result<Option<Vec<String>>> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let repo_id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
                .bind(repo)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(repo_id) = repo_id else {
            return Ok(None);
        };
        let tags: Vec<String> =
            sqlx::query_scalar("SELECT name FROM tags WHERE repo_id = $1 AND digest = $2")
                .bind(repo_id)
                .bind(digest.as_str())
                .fetch_all(&mut *tx)
                .await?;
        // The tags on it and on every index that (transitively) holds it as a child.
        let guarded: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE up(d) AS ( \
               SELECT $2 \
               UNION SELECT e.parent FROM manifest_refs e JOIN up ON e.child = up.d \
               WHERE e.repo_id = $1 AND e.kind = 'manifest' \
             ) SELECT t.name FROM tags t WHERE t.repo_id = $1 AND t.digest IN (SELECT d FROM up) \
             ORDER BY t.name",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if let Some(e) =
            Self::immutable_refusal(&mut tx, repo_id, &guarded, None, immutable).await?
        {
            tx.commit().await?;
            return Err(e);
        }
        let r = sqlx::query("DELETE FROM manifests WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        for q in [
            "DELETE FROM manifest_refs WHERE repo_id = $1 AND parent = $2",
            "DELETE FROM index_entries WHERE repo_id = $1 AND index_digest = $2",
            "DELETE FROM findings WHERE repo_id = $1 AND manifest_digest = $2",
        ] {
            sqlx::query(q)
                .bind(repo_id)
                .bind(digest.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(tags))
    }

    /// Manifests in `repo` whose subject is `digest`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations \
             FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 AND m.subject = $2 AND ($3 IS NULL OR m.artifact_type = $3) \
             ORDER BY m.created_at, m.digest",
        )
        .bind(repo)
        .bind(digest.as_str())
        .bind(artifact_type)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Referrer {
                    digest: digest_col(r.get(0))?,
                    media_type: r.get(1),
                    size: r.get(2),
                    artifact_type: r.get(3),
                    annotations: r.get(4),
                })
            })
            .collect()
    }

    /// The recorded entries of an index, in order.
    pub async fn index_entries(&self, repo: &str, digest: &Digest) -> Result<Vec<IndexEntry>> {
        let rows = sqlx::query(
            "SELECT e.position, e.child_digest, e.media_type, e.size, e.os, e.architecture, e.variant, e.os_version, e.os_features \
             FROM index_entries e JOIN repositories r ON r.id = e.repo_id \
             WHERE r.name = $1 AND e.index_digest = $2 ORDER BY e.position",
        )
        .bind(repo)
        .bind(digest.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(IndexEntry {
                    position: r.get(0),
                    child: digest_col(r.get(1))?,
                    media_type: r.get(2),
                    size: r.get(3),
                    os: r.get(4),
                    architecture: r.get(5),
                    variant: r.get(6),
                    os_version: r.get(7),
                    os_features: r.get(8),
                })
            })
            .collect()
    }

    /// Findings stored with a manifest.
    pub async fn findings(&self, repo: &str, digest: &Digest) -> Result<Vec<Finding>> {
        let rows = sqlx::query(
            "SELECT f.position, f.kind, f.message FROM findings f JOIN repositories r ON r.id = f.repo_id \
             WHERE r.name = $1 AND f.manifest_digest = $2 ORDER BY f.position, f.kind",
        )
        .bind(repo)
        .bind(digest.as_str())
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Finding {
                position: r.get(0),
                kind: r.get(1),
                message: r.get(2),
            })
            .collect())
    }

    // === tags and catalog ===

    /// Whether the repository exists (has been written to).
    pub async fn repo_exists(&self, repo: &str) -> Result<bool> {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_optional(&self.read)
            .await?;
        Ok(id.is_some())
    }

    /// Tags of `repo` after `last`, sorted, at most `limit`.
    pub async fn list_tags(
        &self,
        repo: &str,
        last: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id \
             WHERE r.name = $1 AND ($2 IS NULL OR t.name > $2) ORDER BY t.name LIMIT $3",
        )
        .bind(repo)
        .bind(last)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// Repositories holding at least one manifest, after `last`, sorted, at most `limit`.
    pub async fn list_repos(&self, last: Option<&str>, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT r.name FROM repositories r \
             WHERE ($1 IS NULL OR r.name > $1) AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) \
             ORDER BY r.name LIMIT $2",
        )
        .bind(last)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    // === uploads ===

    /// Records a new upload session.
    pub async fn create_upload(&self, id: Uuid, repo: &str) -> Result<()> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let repo_id = Self::repo_id_tx(&mut tx, repo).await?;
        let now = now_secs();
        sqlx::query("INSERT INTO uploads (id, repo_id, size, created_at, updated_at) VALUES ($1, $2, 0, $3, $3)")
            .bind(id.to_string())
            .bind(repo_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// An upload session by id.
    pub async fn upload(&self, id: Uuid) -> Result<Option<UploadRow>> {
        let row = sqlx::query(
            "SELECT r.name, u.size FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| UploadRow {
            id,
            repo: r.get(0),
            size: r.get::<i64, _>(1) as u64,
        }))
    }

    /// Records the stored length of an upload and marks it as active now.
    pub async fn touch_upload(&self, id: Uuid, size: u64) -> Result<()> {
        sqlx::query("UPDATE uploads SET size = $2, updated_at = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(size as i64)
            .bind(now_secs())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Removes an upload row. False if there was none.
    pub async fn delete_upload(&self, id: Uuid) -> Result<bool> {
        let r = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Uploads untouched since `before` (Unix seconds).
    pub async fn stale_uploads(&self, before: i64) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM uploads WHERE updated_at < $1")
            .bind(before)
            .fetch_all(&self.read)
            .await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image<'a>(d: &'a Digest, content: &'a [u8], blobs: Vec<Digest>) -> NewManifest<'a> {
        NewManifest {
            digest: d,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            artifact_type: None,
            subject: None,
            annotations: None,
            content,
            blobs,
            children: vec![],
            absent_blobs: vec![],
            absent_children: vec![],
            entries: vec![],
            findings: vec![],
        }
    }

    /// The registry checks a manifest's blobs before it commits; a GC run may remove a link
    /// in between. The commit itself refuses a blob the repository does not link, so such a
    /// manifest is never acknowledged.
    #[tokio::test]
    async fn a_manifest_commit_refuses_blobs_unlinked_since_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open_sqlite(&dir.path().join("m.db")).await.unwrap();
        let blob = Digest::sha256(b"layer");
        meta.commit_blob("a/b", &blob, 5, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        assert!(meta.unlink_blob("a/b", &blob).await.unwrap());
        let content = br#"{"schemaVersion":2,"layers":[]}"#;
        let d = Digest::sha256(content);
        let err = meta
            .put_manifest(
                "a/b",
                &image(&d, content, vec![blob.clone()]),
                &["v1".into()],
                &mutable,
            )
            .await
            .expect_err("a manifest with an unlinked blob was committed");
        assert!(matches!(err, Error::Missing(ref x) if *x == blob), "{err}");
        assert!(!meta.manifest_exists("a/b", &d).await.unwrap());
        assert!(meta.tag("a/b", "v1").await.unwrap().is_none());
        // Absent blobs the caller allows (the pull-through cache) are edges, not checks.
        let mut m = image(&d, content, vec![]);
        m.absent_blobs = vec![blob.clone()];
        meta.put_manifest("a/b", &m, &[], &mutable).await.unwrap();
        let g = meta.gc_graph(1, "a/b").await.unwrap();
        assert!(
            g.edges.iter().any(|e| e.child == blob && !e.manifest),
            "no edge"
        );
    }

    /// `v*` tags are immutable: once there, a tag cannot point elsewhere, be deleted, or lose
    /// its manifest to a delete by digest; pointing it at the same manifest again is fine,
    /// and other tags stay mutable.
    #[tokio::test]
    async fn an_immutable_tag_is_neither_moved_nor_removed() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open_sqlite(&dir.path().join("m.db")).await.unwrap();
        let rule = |t: &str| t.starts_with('v').then(|| "rule v*".to_owned());
        let (c1, c2) = (
            br#"{"schemaVersion":2,"n":1}"#,
            br#"{"schemaVersion":2,"n":2}"#,
        );
        let (d1, d2) = (Digest::sha256(c1), Digest::sha256(c2));
        meta.put_manifest(
            "a/b",
            &image(&d1, c1, vec![]),
            &["v1".into(), "dev".into()],
            &rule,
        )
        .await
        .unwrap();
        // Same digest again: idempotent.
        meta.put_manifest("a/b", &image(&d1, c1, vec![]), &["v1".into()], &rule)
            .await
            .unwrap();
        let err = meta
            .put_manifest("a/b", &image(&d2, c2, vec![]), &["v1".into()], &rule)
            .await
            .expect_err("an immutable tag moved");
        assert!(
            matches!(&err, Error::Immutable { tag, target, rule } if tag == "v1" && *target == d1 && rule == "rule v*"),
            "{err}"
        );
        // The refused put stored nothing, not even the manifest.
        assert!(!meta.manifest_exists("a/b", &d2).await.unwrap());
        assert_eq!(meta.tag("a/b", "v1").await.unwrap(), Some(d1.clone()));
        let err = meta
            .delete_tag("a/b", "v1", &rule)
            .await
            .expect_err("deleted");
        assert!(matches!(err, Error::Immutable { .. }), "{err}");
        let err = meta
            .delete_manifest("a/b", &d1, &rule)
            .await
            .expect_err("deleted by digest");
        assert!(matches!(err, Error::Immutable { .. }), "{err}");
        assert!(meta.manifest_exists("a/b", &d1).await.unwrap());
        assert_eq!(meta.tag("a/b", "v1").await.unwrap(), Some(d1.clone()));
        assert_eq!(meta.tag("a/b", "dev").await.unwrap(), Some(d1.clone()));
        // Mutable tags move and go as before; an immutable tag that does not exist yet is
        // created by the first put.
        meta.put_manifest(
            "a/b",
            &image(&d2, c2, vec![]),
            &["dev".into(), "v2".into()],
            &rule,
        )
        .await
        .unwrap();
        assert!(meta.delete_tag("a/b", "dev", &rule).await.unwrap());
        assert!(!meta.delete_tag("a/b", "v9", &rule).await.unwrap());
        assert_eq!(meta.tag("a/b", "v2").await.unwrap(), Some(d2.clone()));
        // An index under an immutable tag keeps its children: deleting one by digest would
        // change what the tag pulls.
        let ci = br#"{"schemaVersion":2,"manifests":[]}"#;
        let di = Digest::sha256(ci);
        let mut index = image(&di, ci, vec![]);
        index.children = vec![d2.clone()];
        meta.put_manifest("a/b", &index, &["v3".into()], &rule)
            .await
            .unwrap();
        assert!(meta.delete_tag("a/b", "v2", &mutable).await.unwrap());
        let err = meta
            .delete_manifest("a/b", &d2, &rule)
            .await
            .expect_err("deleted the child of an immutable index");
        assert!(
            matches!(&err, Error::Immutable { tag, target, .. } if tag == "v3" && *target == di),
            "{err}"
        );
        assert!(meta.manifest_exists("a/b", &d2).await.unwrap());
    }

    #[tokio::test]
    async fn manifest_and_tag_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open_sqlite(&dir.path().join("m.db")).await.unwrap();
        let blob = Digest::sha256(b"layer");
        meta.commit_blob("a/b", &blob, 5, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        assert_eq!(meta.repo_blob("a/b", &blob).await.unwrap(), Some((5, None)));
        assert_eq!(meta.repo_blob("other", &blob).await.unwrap(), None);
        let content = br#"{"schemaVersion":2}"#;
        let d = Digest::sha256(content);
        let subject = Digest::sha256(b"s");
        let nm = NewManifest {
            digest: &d,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            artifact_type: Some("application/x"),
            subject: Some(&subject),
            annotations: None,
            content,
            blobs: vec![blob.clone()],
            children: vec![],
            absent_blobs: vec![],
            absent_children: vec![],
            entries: vec![],
            findings: vec![],
        };
        meta.put_manifest("a/b", &nm, &["v1".into(), "v2".into()], &mutable)
            .await
            .unwrap();
        assert_eq!(meta.tag("a/b", "v1").await.unwrap(), Some(d.clone()));
        assert_eq!(
            meta.list_tags("a/b", Some("v1"), 10).await.unwrap(),
            vec!["v2"]
        );
        assert_eq!(meta.list_repos(None, 10).await.unwrap(), vec!["a/b"]);
        let refs = meta.referrers("a/b", &subject, None).await.unwrap();
        assert_eq!(refs.len(), 1);
        assert!(meta
            .referrers("a/b", &subject, Some("application/y"))
            .await
            .unwrap()
            .is_empty());
        let removed = meta
            .delete_manifest("a/b", &d, &mutable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(removed.len(), 2);
        assert!(meta.tag("a/b", "v1").await.unwrap().is_none());
    }
}
