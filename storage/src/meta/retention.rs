//! Tags as retention reads them (pushed and pulled times, the Windows builds of the indexes
//! they point at), the untagging it does, pull times, and its run records.
//!
//! The read is one snapshot per repository; each untag re-checks, in the statement that
//! deletes, that the tag still points where it pointed and was not pushed again since, so a
//! push after the snapshot wins.

use super::{digest_col, Immutable, Meta, WriteTx};
use crate::Result;
use berth_oci::Digest;
use sqlx::Row;
use std::collections::HashMap;

/// One tag of a repository as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// The tag.
    pub name: String,
    /// What it points at.
    pub digest: Digest,
    /// When it was last pushed (Unix seconds).
    pub pushed_at: i64,
    /// When it was last pulled, as flushed (Unix seconds).
    pub pulled_at: Option<i64>,
    /// `os.version` of every `windows` entry of the index it points at (empty for an image).
    pub windows_versions: Vec<String>,
}

impl Meta {
    /// The tags of one repository, from one snapshot, sorted by name.
    pub async fn retention_tags(&self, repo_id: i64) -> Result<Vec<TagRow>> {
        let mut tx = self.read.begin().await?;
        let rows = sqlx::query(
            "SELECT name, digest, updated_at, pulled_at FROM tags WHERE repo_id = $1 ORDER BY name",
        )
        .bind(repo_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut versions: HashMap<String, Vec<String>> = HashMap::new();
        for r in sqlx::query(
            "SELECT e.index_digest, e.os_version FROM index_entries e \
             WHERE e.repo_id = $1 AND e.os = 'windows' AND e.os_version IS NOT NULL \
             AND EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = $1 AND t.digest = e.index_digest) \
             ORDER BY e.index_digest, e.position",
        )
        .bind(repo_id)
        .fetch_all(&mut *tx)
        .await?
        {
            versions.entry(r.get(0)).or_default().push(r.get(1));
        }
        tx.commit().await?;
        rows.into_iter()
            .map(|r| {
                let digest: String = r.get(1);
                Ok(TagRow {
                    name: r.get(0),
                    windows_versions: versions.get(&digest).cloned().unwrap_or_default(),
                    digest: digest_col(digest)?,
                    pushed_at: r.get(2),
                    pulled_at: r.get(3),
                })
            })
            .collect()
    }

    /// Removes those of `tags` (name, digest, pushed time as read) that still point at that
    /// digest, were not pushed again since, and are not immutable. Returns the removed names.
    pub async fn retention_untag(
        &self,
        repo_id: i64,
        tags: &[(String, Digest, i64)],
        immutable: Immutable<'_>,
    ) -> Result<Vec<String>> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let mut gone = Vec::new();
        for (name, digest, pushed_at) in tags {
            if immutable(name).is_some() {
                continue;
            }
            let r = sqlx::query(
                "DELETE FROM tags WHERE repo_id = $1 AND name = $2 AND digest = $3 AND updated_at = $4",
            )
            .bind(repo_id)
            .bind(name)
            .bind(digest.as_str())
            .bind(pushed_at)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                gone.push(name.clone());
            }
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Records pull times (repository, tag, Unix seconds) in one transaction; a time never
    /// goes back. Tags that no longer exist are skipped.
    pub async fn record_pulls(&self, pulls: &[(String, String, i64)]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let mut tx = WriteTx::begin(&self.write).await?;
        for (repo, tag, at) in pulls {
            sqlx::query(
                "UPDATE tags SET pulled_at = $3 WHERE name = $2 \
                 AND repo_id = (SELECT id FROM repositories WHERE name = $1) \
                 AND (pulled_at IS NULL OR pulled_at < $3)",
            )
            .bind(repo)
            .bind(tag)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets a tag's pushed and pulled times (tests build histories with it).
    #[cfg(any(test, feature = "testsuite"))]
    pub async fn set_tag_times(
        &self,
        repo: &str,
        tag: &str,
        pushed_at: i64,
        pulled_at: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tags SET updated_at = $3, pulled_at = $4 WHERE name = $2 \
             AND repo_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repo)
        .bind(tag)
        .bind(pushed_at)
        .bind(pulled_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }
}
