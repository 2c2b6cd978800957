//! Mirror tables: runtime mirror definitions, runs with their reports, resumable blob copies,
//! the upstream digest each mirrored tag was made from, and the pull-through cache's tag checks.

use super::{Meta, WriteTx};
use crate::{now_secs, Result};
use sqlx::Row;

/// One mirror run as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MirrorRun {
    /// Id.
    pub id: i64,
    /// Mirror name.
    pub mirror: String,
    /// `cli`, `api` or `schedule`.
    pub trigger: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub state: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once finished.
    pub finished_at: Option<i64>,
    /// Manifests and blobs copied.
    pub copied: i64,
    /// Manifests and blobs already present.
    pub skipped: i64,
    /// Items that failed.
    pub failed: i64,
    /// Bytes fetched from the upstream.
    pub bytes: i64,
    /// The report (JSON text), once finished.
    pub report: Option<String>,
}

/// The totals a finished run records.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTotals {
    /// Copied.
    pub copied: i64,
    /// Skipped.
    pub skipped: i64,
    /// Failed.
    pub failed: i64,
    /// Bytes.
    pub bytes: i64,
}

/// What a mirrored tag was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTag {
    /// Upstream manifest digest.
    pub upstream_digest: String,
    /// Local manifest digest (differs for a filtered, non-sparse index).
    pub local_digest: String,
    /// Fingerprint of the filters it was made with.
    pub fingerprint: String,
}

const RUN_COLS: &str =
    "id, mirror, trigger, state, started_at, finished_at, copied, skipped, failed, bytes, report";

fn run_from_row(r: &sqlx::sqlite::SqliteRow) -> MirrorRun {
    MirrorRun {
        id: r.get(0),
        mirror: r.get(1),
        trigger: r.get(2),
        state: r.get(3),
        started_at: r.get(4),
        finished_at: r.get(5),
        copied: r.get(6),
        skipped: r.get(7),
        failed: r.get(8),
        bytes: r.get(9),
        report: r.get(10),
    }
}

impl Meta {
    // === definitions ===

    /// Runtime mirror definitions: (name, JSON).
    pub async fn mirror_defs(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, definition FROM mirror_defs ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Creates or replaces a runtime mirror definition.
    pub async fn put_mirror_def(&self, name: &str, definition: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO mirror_defs (name, definition, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(definition)
        .bind(now_secs())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Removes a runtime mirror definition. False if there was none.
    pub async fn delete_mirror_def(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM mirror_defs WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // === runs ===

    /// Starts a run; earlier runs of the mirror still marked running (a killed process) become
    /// `interrupted`. Returns the new run's id.
    pub async fn start_mirror_run(&self, mirror: &str, trigger: &str) -> Result<i64> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        sqlx::query(
            "UPDATE mirror_runs SET state = 'interrupted', finished_at = $2 \
             WHERE mirror = $1 AND state = 'running'",
        )
        .bind(mirror)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO mirror_runs (mirror, trigger, state, started_at) VALUES ($1, $2, 'running', $3) RETURNING id",
        )
        .bind(mirror)
        .bind(trigger)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Records a run's progress totals while it runs.
    pub async fn update_mirror_run(&self, id: i64, t: RunTotals) -> Result<()> {
        sqlx::query(
            "UPDATE mirror_runs SET copied = $2, skipped = $3, failed = $4, bytes = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(t.copied)
        .bind(t.skipped)
        .bind(t.failed)
        .bind(t.bytes)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Closes a run with its final state, totals and report.
    pub async fn finish_mirror_run(
        &self,
        id: i64,
        state: &str,
        t: RunTotals,
        report: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE mirror_runs SET state = $2, finished_at = $3, copied = $4, skipped = $5, \
             failed = $6, bytes = $7, report = $8 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(now_secs())
        .bind(t.copied)
        .bind(t.skipped)
        .bind(t.failed)
        .bind(t.bytes)
        .bind(report)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Runs of a mirror (all mirrors when `None`), newest first.
    pub async fn mirror_runs(&self, mirror: Option<&str>, limit: i64) -> Result<Vec<MirrorRun>> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM mirror_runs WHERE ($1 = '' OR mirror = $1) ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(mirror.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(run_from_row).collect())
    }

    /// One run.
    pub async fn mirror_run(&self, id: i64) -> Result<Option<MirrorRun>> {
        let sql = format!("SELECT {RUN_COLS} FROM mirror_runs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(run_from_row))
    }

    // === resumable blob copies ===

    /// The upload session a mirror opened for `digest` in `repo`, if any.
    pub async fn mirror_upload(&self, repo: &str, digest: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT upload_id FROM mirror_uploads WHERE repository = $1 AND digest = $2",
        )
        .bind(repo)
        .bind(digest)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Remembers the upload session copying `digest` into `repo`.
    pub async fn put_mirror_upload(&self, repo: &str, digest: &str, upload: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO mirror_uploads (repository, digest, upload_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repository, digest) DO UPDATE SET upload_id = excluded.upload_id, created_at = excluded.created_at",
        )
        .bind(repo)
        .bind(digest)
        .bind(upload)
        .bind(now_secs())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Forgets the upload session of `digest` in `repo`.
    pub async fn delete_mirror_upload(&self, repo: &str, digest: &str) -> Result<()> {
        sqlx::query("DELETE FROM mirror_uploads WHERE repository = $1 AND digest = $2")
            .bind(repo)
            .bind(digest)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    // === mirrored tags ===

    /// What a mirrored tag was made from.
    pub async fn mirror_tag(
        &self,
        mirror: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<MirrorTag>> {
        let row = sqlx::query(
            "SELECT upstream_digest, local_digest, fingerprint FROM mirror_tags \
             WHERE mirror = $1 AND repository = $2 AND tag = $3",
        )
        .bind(mirror)
        .bind(repo)
        .bind(tag)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| MirrorTag {
            upstream_digest: r.get(0),
            local_digest: r.get(1),
            fingerprint: r.get(2),
        }))
    }

    /// Records what a mirrored tag was made from.
    pub async fn put_mirror_tag(
        &self,
        mirror: &str,
        repo: &str,
        tag: &str,
        t: &MirrorTag,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mirror_tags (mirror, repository, tag, upstream_digest, local_digest, fingerprint, synced_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (mirror, repository, tag) DO UPDATE SET \
             upstream_digest = excluded.upstream_digest, local_digest = excluded.local_digest, \
             fingerprint = excluded.fingerprint, synced_at = excluded.synced_at",
        )
        .bind(mirror)
        .bind(repo)
        .bind(tag)
        .bind(&t.upstream_digest)
        .bind(&t.local_digest)
        .bind(&t.fingerprint)
        .bind(now_secs())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    // === pull-through cache ===

    /// When a cached tag was last checked upstream, and the digest it had: (digest, checked_at).
    pub async fn proxy_tag(&self, repo: &str, tag: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query(
            "SELECT digest, checked_at FROM proxy_tags WHERE repository = $1 AND tag = $2",
        )
        .bind(repo)
        .bind(tag)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Records a check of a cached tag against the upstream.
    pub async fn put_proxy_tag(&self, repo: &str, tag: &str, digest: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO proxy_tags (repository, tag, digest, checked_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest, checked_at = excluded.checked_at",
        )
        .bind(repo)
        .bind(tag)
        .bind(digest)
        .bind(now_secs())
        .execute(&self.write)
        .await?;
        Ok(())
    }
}
