//! The reference graph as garbage collection reads it, and the deletions it makes.
//!
//! Reads come from one read transaction per repository (a consistent snapshot in WAL mode,
//! no lock on writers). Every deletion re-checks, under the write lock and in the statement
//! that deletes, the condition that made the row garbage, so whatever a push changed after
//! the snapshot wins: a manifest that was tagged, or became a child or the subject of
//! something, stays; a link some manifest now needs stays; a blob linked again stays.

use super::{digest_col, Meta, WriteTx};
use crate::{now_secs, Result};
use berth_oci::Digest;
use sqlx::Row;

/// One manifest as the mark phase sees it.
#[derive(Debug, Clone)]
pub struct ManifestNode {
    /// Digest.
    pub digest: Digest,
    /// `subject.digest`, for referrers.
    pub subject: Option<Digest>,
    /// Last pushed (Unix seconds).
    pub touched_at: i64,
}

/// An edge from a manifest.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The referencing manifest.
    pub parent: Digest,
    /// What it references.
    pub child: Digest,
    /// True for an index child, false for a blob (config, layer).
    pub manifest: bool,
}

/// A repository's part of the graph, read in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct RepoGraph {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Every manifest.
    pub manifests: Vec<ManifestNode>,
    /// Digests tags point at.
    pub tagged: Vec<Digest>,
    /// Manifests with verification work queued or running.
    pub verifying: Vec<Digest>,
    /// Every edge.
    pub edges: Vec<Edge>,
    /// Linked blobs: digest, size, touched.
    pub links: Vec<(Digest, u64, i64)>,
    /// Links touched at or after this are held by work in flight (an upload session open in
    /// the repository, a mirror run) and not collected.
    pub held_since: Option<i64>,
}

/// A blob as the sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// Location, when not at the digest's place.
    pub location: Option<String>,
    /// Last touched (Unix seconds).
    pub touched_at: i64,
}

/// What the metadata knows of the blob store (the orphan pass).
#[derive(Debug, Clone, Default)]
pub struct KnownObjects {
    /// Digests of blobs stored at their digest's place.
    pub digests: std::collections::HashSet<String>,
    /// Locations of blobs stored somewhere of their own.
    pub locations: std::collections::HashSet<String>,
    /// Ids of uploads in progress.
    pub uploads: std::collections::HashSet<String>,
}

fn blob_row(r: sqlx::sqlite::SqliteRow) -> Result<BlobRow> {
    Ok(BlobRow {
        digest: digest_col(r.get(0))?,
        size: r.get::<i64, _>(1) as u64,
        location: r.get(2),
        touched_at: r.get(3),
    })
}

impl Meta {
    // === leases ===

    /// Takes the lease `name` for `holder` until `ttl_secs` from now, if it is free, expired
    /// or already `holder`'s. False when another holder has it.
    pub async fn acquire_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool> {
        let now = now_secs();
        let r = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_secs)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Gives a lease back.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// When the lease `name` expires, if someone holds it now.
    pub async fn lease_held_until(&self, name: &str) -> Result<Option<i64>> {
        let until: Option<i64> = sqlx::query_scalar(
            "SELECT expires_at FROM leases WHERE name = $1 AND expires_at >= $2",
        )
        .bind(name)
        .bind(now_secs())
        .fetch_optional(&self.read)
        .await?;
        Ok(until)
    }

    // === the mark phase ===

    /// Every repository: id and name.
    pub async fn gc_repositories(&self) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query("SELECT id, name FROM repositories ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One repository's graph, from one snapshot.
    pub async fn gc_graph(&self, id: i64, name: &str) -> Result<RepoGraph> {
        let mut tx = self.read.begin().await?;
        let mut g = RepoGraph {
            id,
            name: name.to_owned(),
            ..Default::default()
        };
        for r in sqlx::query("SELECT digest, subject, touched_at FROM manifests WHERE repo_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
        {
            g.manifests.push(ManifestNode {
                digest: digest_col(r.get(0))?,
                subject: r.get::<Option<String>, _>(1).map(digest_col).transpose()?,
                touched_at: r.get(2),
            });
        }
        for d in
            sqlx::query_scalar::<_, String>("SELECT DISTINCT digest FROM tags WHERE repo_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
        {
            g.tagged.push(digest_col(d)?);
        }
        for d in sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT digest FROM verify_jobs WHERE repository = $1 AND state IN ('queued', 'running')",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?
        {
            g.verifying.push(digest_col(d)?);
        }
        for r in sqlx::query("SELECT parent, child, kind FROM manifest_refs WHERE repo_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
        {
            g.edges.push(Edge {
                parent: digest_col(r.get(0))?,
                child: digest_col(r.get(1))?,
                manifest: r.get::<String, _>(2) == "manifest",
            });
        }
        for r in sqlx::query(
            "SELECT rb.digest, b.size, rb.touched_at FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest \
             WHERE rb.repo_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        {
            g.links.push((digest_col(r.get(0))?, r.get::<i64, _>(1) as u64, r.get(2)));
        }
        g.held_since = sqlx::query_scalar(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(created_at) AS t FROM uploads WHERE repo_id = $1 \
               UNION ALL SELECT MIN(started_at) AS t FROM mirror_runs WHERE state = 'running' AND started_at > $2 \
             ) AS holds",
        )
        .bind(id)
        // A run left `running` by a killed process holds nothing after a day.
        .bind(now_secs() - 86_400)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(g)
    }

    /// Blobs touched before `before` and not being deleted (linked or not: the caller knows
    /// which links it is about to remove).
    pub async fn gc_blobs(&self, before: i64) -> Result<Vec<BlobRow>> {
        sqlx::query(
            "SELECT digest, size, location, touched_at FROM blobs \
             WHERE deleting_at IS NULL AND touched_at < $1",
        )
        .bind(before)
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(blob_row)
        .collect()
    }

    /// Blobs a GC run marked for deletion and did not finish (it was killed).
    pub async fn gc_deleting_blobs(&self) -> Result<Vec<BlobRow>> {
        sqlx::query(
            "SELECT digest, size, location, touched_at FROM blobs WHERE deleting_at IS NOT NULL",
        )
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(blob_row)
        .collect()
    }

    /// One blob if a GC run marked it for deletion.
    pub async fn gc_deleting_blob(&self, digest: &Digest) -> Result<Option<BlobRow>> {
        sqlx::query(
            "SELECT digest, size, location, touched_at FROM blobs \
             WHERE digest = $1 AND deleting_at IS NOT NULL",
        )
        .bind(digest.as_str())
        .fetch_optional(&self.write)
        .await?
        .map(blob_row)
        .transpose()
    }

    // === the sweep ===

    /// Deletes those of `digests` (in order: parents and subjects before what they reference)
    /// that are still garbage: untouched since `before`, untagged, no manifest's child, their
    /// subject (if any) gone, no verification in flight. Their edges, index entries, findings
    /// and verification jobs go with them. Returns the deleted ones.
    pub async fn gc_delete_manifests(
        &self,
        repo_id: i64,
        repo: &str,
        digests: &[Digest],
        before: i64,
    ) -> Result<Vec<Digest>> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let mut gone = Vec::new();
        for d in digests {
            let r = sqlx::query(
                "DELETE FROM manifests WHERE repo_id = $1 AND digest = $2 AND touched_at < $3 \
                 AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = $1 AND t.digest = $2) \
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs e WHERE e.repo_id = $1 AND e.child = $2 AND e.kind = 'manifest') \
                 AND NOT EXISTS (SELECT 1 FROM manifests s WHERE s.repo_id = $1 AND s.digest = manifests.subject) \
                 AND NOT EXISTS (SELECT 1 FROM verify_jobs j WHERE j.repository = $4 AND j.digest = $2 AND j.state IN ('queued', 'running'))",
            )
            .bind(repo_id)
            .bind(d.as_str())
            .bind(before)
            .bind(repo)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 0 {
                continue;
            }
            for q in [
                "DELETE FROM manifest_refs WHERE repo_id = $1 AND parent = $2",
                "DELETE FROM index_entries WHERE repo_id = $1 AND index_digest = $2",
                "DELETE FROM findings WHERE repo_id = $1 AND manifest_digest = $2",
            ] {
                sqlx::query(q)
                    .bind(repo_id)
                    .bind(d.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM verify_jobs WHERE repository = $1 AND digest = $2")
                .bind(repo)
                .bind(d.as_str())
                .execute(&mut *tx)
                .await?;
            gone.push(d.clone());
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Removes those of the links from `repo_id` to `digests` that are still garbage:
    /// untouched since `before` and referenced by no manifest of the repository. Returns the
    /// removed ones.
    pub async fn gc_delete_links(
        &self,
        repo_id: i64,
        digests: &[Digest],
        before: i64,
    ) -> Result<Vec<Digest>> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let repo: String = sqlx::query_scalar("SELECT name FROM repositories WHERE id = $1")
            .bind(repo_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut gone = Vec::new();
        for d in digests {
            let r = sqlx::query(
                "DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2 AND touched_at < $3 \
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs e WHERE e.repo_id = $1 AND e.child = $2 AND e.kind = 'blob')",
            )
            .bind(repo_id)
            .bind(d.as_str())
            .bind(before)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                self.uncharge_tx(&mut tx, &repo, d).await?;
                gone.push(d.clone());
            }
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Marks those of `digests` that no repository links and nobody touched since `before`
    /// as being deleted (their bytes may go from now on). Returns the marked ones.
    pub async fn gc_mark_deleting(&self, digests: &[Digest], before: i64) -> Result<Vec<Digest>> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let now = now_secs();
        let mut marked = Vec::new();
        for d in digests {
            let r = sqlx::query(
                "UPDATE blobs SET deleting_at = $3 WHERE digest = $1 AND deleting_at IS NULL AND touched_at < $2 \
                 AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = $1)",
            )
            .bind(d.as_str())
            .bind(before)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                marked.push(d.clone());
            }
        }
        tx.commit().await?;
        Ok(marked)
    }

    /// Drops the rows of blobs marked as being deleted, once their bytes are gone.
    pub async fn gc_forget_blobs(&self, digests: &[Digest]) -> Result<u64> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let mut n = 0;
        for d in digests {
            n += sqlx::query("DELETE FROM blobs WHERE digest = $1 AND deleting_at IS NOT NULL")
                .bind(d.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    // === the orphan pass ===

    /// What the metadata knows of the store, for the orphan pass: digests of blobs at their
    /// digest's place, recorded locations, and the ids of uploads in progress.
    pub async fn gc_known_objects(&self) -> Result<KnownObjects> {
        let mut tx = self.read.begin().await?;
        let mut k = KnownObjects::default();
        for row in sqlx::query("SELECT digest, location FROM blobs")
            .fetch_all(&mut *tx)
            .await?
        {
            match row.get::<Option<String>, _>(1) {
                Some(l) => k.locations.insert(l),
                None => k.digests.insert(row.get(0)),
            };
        }
        k.uploads = sqlx::query_scalar("SELECT id FROM uploads")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        tx.commit().await?;
        Ok(k)
    }

    /// Which of `locations` a blob row records, or belong to an upload in progress (the last
    /// path segment is its id): the orphan pass's re-check, just before it deletes.
    pub async fn gc_known_locations(
        &self,
        locations: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        let mut tx = self.read.begin().await?;
        let mut known = std::collections::HashSet::new();
        for l in locations {
            let id = l.rsplit('/').next().unwrap_or_default();
            let hit: Option<i64> = sqlx::query_scalar(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM blobs WHERE location = $1) \
                 OR EXISTS (SELECT 1 FROM uploads WHERE id = $2)",
            )
            .bind(l)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if hit.is_some() {
                known.insert(l.clone());
            }
        }
        tx.commit().await?;
        Ok(known)
    }

    /// Records bytes at digests' places that no row knows as blobs being deleted, so that a
    /// push of the same digest waits for them to go (as it waits for a GC sweep). Returns
    /// the digests recorded (a push that recorded one first keeps it).
    pub async fn gc_hold_orphans(&self, orphans: &[(Digest, u64)]) -> Result<Vec<Digest>> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let now = now_secs();
        let mut held = Vec::new();
        for (d, size) in orphans {
            let r = sqlx::query(
                "INSERT INTO blobs (digest, size, created_at, location, touched_at, deleting_at)                  VALUES ($1, $2, $3, NULL, 0, $3) ON CONFLICT (digest) DO NOTHING",
            )
            .bind(d.as_str())
            .bind(*size as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                held.push(d.clone());
            }
        }
        tx.commit().await?;
        Ok(held)
    }
}
