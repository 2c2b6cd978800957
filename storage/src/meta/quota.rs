//! Byte quotas per repository pattern.
//!
//! A quota counts every distinct blob that some repository matching its pattern links, once,
//! however many of those repositories link it. The count lives in two tables: `quota_blobs`
//! (per quota, each counted blob with how many matching repositories link it) and
//! `quotas.used` (the sum of their sizes). Both change inside the write transaction that
//! creates or removes a link, after the check that allows it, so a check and its charge are
//! one step under SQLite's single writer: concurrent pushers can never overshoot a limit.
//! An upload that fails or is cancelled never links anything and never counts.

use super::{Meta, WriteTx};
use crate::{human, now_secs, Error, Result};
use berth_oci::{Digest, RepoPattern};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;

/// A configured quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRule {
    /// Repositories it covers (`team/**`).
    pub pattern: RepoPattern,
    /// Limit in bytes.
    pub limit: u64,
}

/// A quota's figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuotaUsage {
    /// The pattern.
    pub pattern: String,
    /// Limit in bytes.
    pub limit: u64,
    /// Bytes counted.
    pub used: u64,
    /// Distinct blobs counted.
    pub blobs: u64,
}

/// A quota's running counter beside a count from the links themselves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuotaRecount {
    /// The pattern.
    pub pattern: String,
    /// Limit in bytes.
    pub limit: u64,
    /// Bytes the running counter held.
    pub counted: u64,
    /// Bytes recounted from the links.
    pub recounted: u64,
    /// Distinct blobs the counter held.
    pub counted_blobs: u64,
    /// Distinct blobs recounted.
    pub recounted_blobs: u64,
    /// Whether the counter was replaced by the recount.
    pub fixed: bool,
}

/// Per matching quota: whether `digest` is already counted.
struct Charge {
    pattern: String,
    limit: u64,
    used: u64,
    counted: bool,
}

impl Meta {
    fn quota_rules(&self) -> Arc<Vec<QuotaRule>> {
        self.quotas.read().expect("quota rules lock").clone()
    }

    fn matching(&self, repo: &str) -> Vec<QuotaRule> {
        self.quota_rules()
            .iter()
            .filter(|q| q.pattern.matches(repo))
            .cloned()
            .collect()
    }

    /// Installs the configured quotas: counters of quotas no longer configured are dropped,
    /// new ones are counted from the links, and limits take effect at once.
    pub async fn set_quotas(&self, rules: Vec<QuotaRule>) -> Result<()> {
        *self.quotas.write().expect("quota rules lock") = Arc::new(rules.clone());
        let mut tx = WriteTx::begin(&self.write).await?;
        let known: Vec<String> = sqlx::query_scalar("SELECT pattern FROM quotas")
            .fetch_all(&mut *tx)
            .await?;
        for k in &known {
            if !rules.iter().any(|r| r.pattern.to_string() == *k) {
                sqlx::query("DELETE FROM quotas WHERE pattern = $1")
                    .bind(k)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let new: Vec<QuotaRule> = rules
            .into_iter()
            .filter(|r| !known.contains(&r.pattern.to_string()))
            .collect();
        if !new.is_empty() {
            let counts = recount_tx(&mut tx, &new).await?;
            for (rule, blobs) in new.iter().zip(counts) {
                store_count_tx(&mut tx, &rule.pattern.to_string(), &blobs).await?;
            }
        }
        tx.commit().await
    }

    /// Every configured quota with its figures.
    pub async fn quotas(&self) -> Result<Vec<QuotaUsage>> {
        let mut out = Vec::new();
        for rule in self.quota_rules().iter() {
            let p = rule.pattern.to_string();
            let row = sqlx::query(
                "SELECT q.used, (SELECT COUNT(*) FROM quota_blobs b WHERE b.pattern = q.pattern) \
                 FROM quotas q WHERE q.pattern = $1",
            )
            .bind(&p)
            .fetch_optional(&self.read)
            .await?;
            let (used, blobs) = row.map_or((0, 0), |r| (r.get::<i64, _>(0), r.get::<i64, _>(1)));
            out.push(QuotaUsage {
                pattern: p,
                limit: rule.limit,
                used: used as u64,
                blobs: blobs as u64,
            });
        }
        Ok(out)
    }

    /// Counts every quota again from the links and compares with the running counters;
    /// with `fix`, replaces the counters by the recount. Runs as one write transaction, so
    /// the figures are of one moment (pushes wait for it).
    pub async fn quota_recount(&self, fix: bool) -> Result<Vec<QuotaRecount>> {
        let rules = self.quota_rules();
        let mut tx = WriteTx::begin(&self.write).await?;
        let counts = recount_tx(&mut tx, &rules).await?;
        let mut out = Vec::new();
        for (rule, blobs) in rules.iter().zip(counts) {
            let p = rule.pattern.to_string();
            let row = sqlx::query(
                "SELECT q.used, (SELECT COUNT(*) FROM quota_blobs b WHERE b.pattern = q.pattern) \
                 FROM quotas q WHERE q.pattern = $1",
            )
            .bind(&p)
            .fetch_optional(&mut *tx)
            .await?;
            let (counted, counted_blobs) =
                row.map_or((0, 0), |r| (r.get::<i64, _>(0), r.get::<i64, _>(1)));
            let recounted: u64 = blobs.values().map(|(size, _)| size).sum();
            let differs = counted as u64 != recounted || counted_blobs as usize != blobs.len();
            if fix && differs {
                store_count_tx(&mut tx, &p, &blobs).await?;
            }
            out.push(QuotaRecount {
                pattern: p,
                limit: rule.limit,
                counted: counted as u64,
                recounted,
                counted_blobs: counted_blobs as u64,
                recounted_blobs: blobs.len() as u64,
                fixed: fix && differs,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Before a new link from `repo` to `digest`: the quotas it would charge, or the error
    /// of the first one it would take over its limit (nothing is charged then).
    pub(super) async fn charge_tx(
        &self,
        tx: &mut sqlx::SqliteConnection,
        repo: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Result<(), Error>> {
        let mut charges = Vec::new();
        for rule in self.matching(repo) {
            let pattern = rule.pattern.to_string();
            let used: i64 = sqlx::query_scalar("SELECT used FROM quotas WHERE pattern = $1")
                .bind(&pattern)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0);
            let counted: Option<i64> = sqlx::query_scalar(
                "SELECT refs FROM quota_blobs WHERE pattern = $1 AND digest = $2",
            )
            .bind(&pattern)
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let used = used as u64;
            if counted.is_none() && used.saturating_add(size) > rule.limit {
                return Ok(Err(Error::Quota {
                    pattern,
                    used,
                    limit: rule.limit,
                    what: format!(
                        "blob {digest} in {repo} would add {size} bytes ({}) and make it {}",
                        human(size),
                        human(used + size)
                    ),
                }));
            }
            charges.push(Charge {
                pattern,
                limit: rule.limit,
                used,
                counted: counted.is_some(),
            });
        }
        for c in charges {
            ensure_row_tx(tx, &c.pattern).await?;
            sqlx::query(
                "INSERT INTO quota_blobs (pattern, digest, size, refs) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (pattern, digest) DO UPDATE SET refs = quota_blobs.refs + 1",
            )
            .bind(&c.pattern)
            .bind(digest.as_str())
            .bind(size as i64)
            .execute(&mut *tx)
            .await?;
            if !c.counted {
                debug_assert!(c.used + size <= c.limit);
                sqlx::query("UPDATE quotas SET used = used + $2 WHERE pattern = $1")
                    .bind(&c.pattern)
                    .bind(size as i64)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(Ok(()))
    }

    /// After a link from `repo` to `digest` was removed: the quotas give its bytes back when
    /// no other matching repository links it.
    pub(super) async fn uncharge_tx(
        &self,
        tx: &mut sqlx::SqliteConnection,
        repo: &str,
        digest: &Digest,
    ) -> Result<()> {
        for rule in self.matching(repo) {
            let pattern = rule.pattern.to_string();
            let row = sqlx::query(
                "UPDATE quota_blobs SET refs = refs - 1 WHERE pattern = $1 AND digest = $2 RETURNING refs, size",
            )
            .bind(&pattern)
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            if row.get::<i64, _>(0) <= 0 {
                sqlx::query("DELETE FROM quota_blobs WHERE pattern = $1 AND digest = $2")
                    .bind(&pattern)
                    .bind(digest.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE quotas SET used = used - $2 WHERE pattern = $1")
                    .bind(&pattern)
                    .bind(row.get::<i64, _>(1))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// When a manifest is committed in `repo`: refused while a matching quota is over its
    /// limit (a limit lowered below what is stored stops new manifests until space is freed).
    pub(super) async fn over_quota_tx(
        &self,
        tx: &mut sqlx::SqliteConnection,
        repo: &str,
        what: &str,
    ) -> Result<Result<(), Error>> {
        for rule in self.matching(repo) {
            let pattern = rule.pattern.to_string();
            let used: i64 = sqlx::query_scalar("SELECT used FROM quotas WHERE pattern = $1")
                .bind(&pattern)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0);
            if used as u64 > rule.limit {
                return Ok(Err(Error::Quota {
                    pattern,
                    used: used as u64,
                    limit: rule.limit,
                    what: format!("{what} in {repo} is refused until usage is below the limit"),
                }));
            }
        }
        Ok(Ok(()))
    }
}

async fn ensure_row_tx(tx: &mut sqlx::SqliteConnection, pattern: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO quotas (pattern, used, computed_at) VALUES ($1, 0, $2) ON CONFLICT (pattern) DO NOTHING",
    )
    .bind(pattern)
    .bind(now_secs())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Per rule: digest -> (size, matching repositories linking it), from the links.
async fn recount_tx(
    tx: &mut sqlx::SqliteConnection,
    rules: &[QuotaRule],
) -> Result<Vec<HashMap<String, (u64, i64)>>> {
    let mut out = vec![HashMap::new(); rules.len()];
    if rules.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT r.name, rb.digest, b.size FROM repo_blobs rb \
         JOIN repositories r ON r.id = rb.repo_id JOIN blobs b ON b.digest = rb.digest",
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let name: String = row.get(0);
        for (rule, blobs) in rules.iter().zip(out.iter_mut()) {
            if rule.pattern.matches(&name) {
                let e = blobs
                    .entry(row.get::<String, _>(1))
                    .or_insert((row.get::<i64, _>(2) as u64, 0));
                e.1 += 1;
            }
        }
    }
    Ok(out)
}

async fn store_count_tx(
    tx: &mut sqlx::SqliteConnection,
    pattern: &str,
    blobs: &HashMap<String, (u64, i64)>,
) -> Result<()> {
    let used: u64 = blobs.values().map(|(size, _)| size).sum();
    sqlx::query("DELETE FROM quotas WHERE pattern = $1")
        .bind(pattern)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO quotas (pattern, used, computed_at) VALUES ($1, $2, $3)")
        .bind(pattern)
        .bind(used as i64)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
    for (digest, (size, refs)) in blobs {
        sqlx::query(
            "INSERT INTO quota_blobs (pattern, digest, size, refs) VALUES ($1, $2, $3, $4)",
        )
        .bind(pattern)
        .bind(digest)
        .bind(*size as i64)
        .bind(refs)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &tempfile::TempDir, rules: &[(&str, u64)]) -> Meta {
        let meta = Meta::open_sqlite(&dir.path().join("m.db")).await.unwrap();
        meta.set_quotas(
            rules
                .iter()
                .map(|(p, l)| QuotaRule {
                    pattern: RepoPattern::new(*p),
                    limit: *l,
                })
                .collect(),
        )
        .await
        .unwrap();
        meta
    }

    async fn used(meta: &Meta, pattern: &str) -> (u64, u64) {
        let q = meta.quotas().await.unwrap();
        let q = q.iter().find(|q| q.pattern == pattern).unwrap();
        (q.used, q.blobs)
    }

    async fn recount_agrees(meta: &Meta) {
        for r in meta.quota_recount(false).await.unwrap() {
            assert_eq!(
                (r.counted, r.counted_blobs),
                (r.recounted, r.recounted_blobs),
                "{r:?}"
            );
        }
    }

    fn d(i: usize) -> Digest {
        Digest::sha256(format!("blob {i}").as_bytes())
    }

    #[tokio::test]
    async fn a_namespace_counts_each_blob_once_and_refuses_what_would_exceed_it() {
        let dir = tempfile::tempdir().unwrap();
        let meta = open(&dir, &[("team/**", 100), ("team/a", 1000)]).await;
        meta.commit_blob("team/a", &d(1), 40, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        meta.commit_blob("team/b", &d(1), 40, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        assert!(meta.link_blob("team/c", &d(1)).await.unwrap());
        assert_eq!(
            used(&meta, "team/**").await,
            (40, 1),
            "one blob, counted once"
        );
        meta.commit_blob("team/a", &d(2), 50, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        assert_eq!(used(&meta, "team/**").await, (90, 2));
        // Another namespace is not charged.
        meta.commit_blob("other/x", &d(3), 500, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        assert_eq!(used(&meta, "team/**").await, (90, 2));
        // 90 + 20 > 100: refused, recorded unlinked, nothing charged.
        let (_, linked) = meta
            .commit_blob("team/b", &d(4), 20, None, None)
            .await
            .unwrap();
        let err = linked.expect_err("a blob over the quota was linked");
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Quota {
                    used: 90,
                    limit: 100,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("team/**") && msg.contains(d(4).as_str()),
            "{msg}"
        );
        assert!(meta.repo_blob("team/b", &d(4)).await.unwrap().is_none());
        assert!(
            meta.blob(&d(4)).await.unwrap().is_some(),
            "bytes recorded for GC"
        );
        assert_eq!(used(&meta, "team/**").await, (90, 2));
        // A mount over the quota is refused the same way.
        let err = meta
            .link_blob("team/b", &d(3))
            .await
            .expect_err("mounted over quota");
        assert!(matches!(err, Error::Quota { .. }), "{err}");
        // A blob already counted adds nothing, however full the quota.
        assert!(meta.link_blob("team/d", &d(2)).await.unwrap());
        assert_eq!(used(&meta, "team/**").await, (90, 2));
        // Space comes back only when no covered repository links the blob.
        for repo in ["team/a", "team/b"] {
            assert!(meta.unlink_blob(repo, &d(1)).await.unwrap());
            assert_eq!(used(&meta, "team/**").await, (90, 2), "{repo}");
        }
        assert!(meta.unlink_blob("team/c", &d(1)).await.unwrap());
        assert_eq!(used(&meta, "team/**").await, (50, 1));
        assert_eq!(used(&meta, "team/a").await, (50, 1));
        recount_agrees(&meta).await;
        // GC removing a link gives its bytes back too.
        let repos = meta.gc_repositories().await.unwrap();
        for (id, name) in repos.iter().filter(|(_, n)| n.starts_with("team/")) {
            let g = meta.gc_graph(*id, name).await.unwrap();
            let links: Vec<Digest> = g.links.iter().map(|l| l.0.clone()).collect();
            meta.gc_delete_links(*id, &links, now_secs() + 10)
                .await
                .unwrap();
        }
        assert_eq!(used(&meta, "team/**").await, (0, 0));
        recount_agrees(&meta).await;
    }

    #[tokio::test]
    async fn a_manifest_commit_is_refused_while_the_namespace_is_over_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let meta = open(&dir, &[("team/**", 100)]).await;
        meta.commit_blob("team/a", &d(1), 80, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        drop(meta);
        // The limit is lowered below what is stored.
        let meta = open(&dir, &[("team/**", 50)]).await;
        let content = br#"{"schemaVersion":2}"#;
        let md = Digest::sha256(content);
        let m = super::super::NewManifest {
            digest: &md,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            artifact_type: None,
            subject: None,
            annotations: None,
            content,
            blobs: vec![d(1)],
            children: vec![],
            absent_blobs: vec![],
            absent_children: vec![],
            entries: vec![],
            findings: vec![],
        };
        let err = meta
            .put_manifest("team/a", &m, &["v1".into()], &crate::meta::mutable)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Quota {
                    used: 80,
                    limit: 50,
                    ..
                }
            ),
            "{err}"
        );
        assert!(meta.tag("team/a", "v1").await.unwrap().is_none());
        // Elsewhere, and once space is freed, manifests commit.
        meta.commit_blob("x/y", &d(1), 80, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        meta.put_manifest("x/y", &m, &["v1".into()], &crate::meta::mutable)
            .await
            .unwrap();
        assert!(meta.unlink_blob("team/a", &d(1)).await.unwrap());
        meta.commit_blob("team/a", &d(1), 80, None, None)
            .await
            .unwrap()
            .1
            .expect_err("80 > 50");
    }

    #[tokio::test]
    async fn configuring_a_quota_counts_what_is_there_and_dropping_it_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let meta = open(&dir, &[]).await;
        for i in 0..5 {
            meta.commit_blob(&format!("ns/r{}", i % 2), &d(i), 10, None, None)
                .await
                .unwrap()
                .1
                .unwrap();
        }
        meta.commit_blob("ns/r1", &d(0), 10, None, None)
            .await
            .unwrap()
            .1
            .unwrap();
        drop(meta);
        let meta = open(&dir, &[("ns/**", 1000)]).await;
        assert_eq!(used(&meta, "ns/**").await, (50, 5));
        recount_agrees(&meta).await;
        let meta2 = open(&dir, &[("ns/r1", 1000)]).await;
        assert_eq!(used(&meta2, "ns/r1").await, (30, 3));
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quota_blobs WHERE pattern = 'ns/**'")
            .fetch_one(&meta2.read)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }

    /// 100 pushers commit distinct blobs into a namespace just under its limit at once:
    /// exactly as many as fit are linked, and the usage never passes the limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pushers_never_overshoot_a_quota() {
        let dir = tempfile::tempdir().unwrap();
        let meta = open(&dir, &[("team/**", 555)]).await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let meta = meta.clone();
            tasks.push(tokio::spawn(async move {
                let repo = format!("team/r{}", i % 7);
                let (_, linked) = meta
                    .commit_blob(&repo, &d(i), 10, None, None)
                    .await
                    .unwrap();
                match linked {
                    Ok(()) => true,
                    Err(Error::Quota { .. }) => false,
                    Err(e) => panic!("{e}"),
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap() as u64;
        }
        assert_eq!(ok, 55, "as many as fit");
        assert_eq!(used(&meta, "team/**").await, (550, 55));
        recount_agrees(&meta).await;
    }
}
