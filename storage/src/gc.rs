//! Online garbage collection: mark from the metadata, sweep with re-checks, while pushes and
//! pulls go on (docs/LIFECYCLE.md).
//!
//! **Mark.** For each repository, one snapshot of its graph ([`Meta::gc_graph`]). Roots are
//! the manifests tags point at, those with verification work in flight, those touched within
//! the grace window, and with `keep_untagged` every manifest. What roots reach through index
//! children and referrers (manifests whose subject is reached) is kept, with the blobs kept
//! manifests reference. The rest is the plan ([`plan_repository`], a pure function).
//!
//! **Sweep.** Manifests first (parents and subjects before what they reference), then blob
//! links, then blobs no repository links. Every deletion re-checks its condition in the
//! statement that deletes under the write lock, so a push that made something referenced
//! after the snapshot keeps it. A blob's bytes go in three steps: its row is marked
//! `deleting` in the transaction that finds it unlinked, the bytes are removed (S3: one
//! DeleteObjects per 1,000 keys), the row goes. A push of the same bytes meanwhile waits for
//! the row to go (the registry's `publish`), so it never acknowledges a blob whose bytes are
//! being removed; a manifest push checks its blobs are linked in its own commit.
//!
//! **One run at a time**, under the `gc` lease (renewed between batches once a sixth of its
//! term has passed, so a run costs pushes few extra write transactions). A run killed at any
//! point leaves rows that are either untouched, deleted with everything that referenced them
//! already gone, or marked `deleting`: the next run removes their bytes first.

use crate::blob::{BlobRef, BlobStore, StoredObject, DELETE_BATCH};
use crate::meta::{Meta, RepoGraph};
use crate::{now_secs, Error, Result};
use berth_oci::Digest;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

/// The lease a GC run holds.
pub const LEASE: &str = "gc";
/// How long a lease lasts without renewal.
pub const LEASE_TTL_SECS: i64 = 60;
/// A batch renews the lease only when the last renewal is older than this: the lease stays
/// ours (five sixths of its term left) without a write transaction before every batch, each of
/// which a concurrent push would wait behind.
const RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(LEASE_TTL_SECS as u64 / 6);
/// Manifests or links deleted per write transaction: short transactions keep pushes flowing.
const BATCH: usize = 200;
/// Digests listed per repository (and for blobs) in a report.
const LIST_LIMIT: usize = 10_000;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nothing touched within this many seconds is collected.
    pub grace_secs: u64,
    /// Keep untagged manifests (only blobs no manifest references are collected).
    pub keep_untagged: bool,
    /// Report what would go; remove nothing.
    pub dry_run: bool,
    /// Also list the blob store for bytes no metadata row knows (left by a crash) and
    /// remove those older than the grace window: the orphan pass, the only listing GC does.
    pub orphans: bool,
}

/// Where a run is, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading repositories' graphs.
    Mark,
    /// Deleting manifests.
    Manifests,
    /// Removing blob links.
    Links,
    /// Removing blobs' bytes.
    Blobs,
    /// Listing the store for orphans and removing them.
    Orphans,
}

/// Progress: `done` of `total` in `phase`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Units done (repositories, manifests, links, blobs).
    pub done: u64,
    /// Units in the phase.
    pub total: u64,
}

/// One repository's part of a report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RepoReport {
    /// Manifests removed (planned, in a dry run).
    pub manifests: u64,
    /// Blob links removed.
    pub links: u64,
    /// Bytes of the removed links' blobs (whether or not another repository still has them).
    pub link_bytes: u64,
    /// The manifests, at most 10,000.
    pub manifest_digests: Vec<String>,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Nothing was removed.
    pub dry_run: bool,
    /// The grace window used.
    pub grace_secs: u64,
    /// Unix seconds.
    pub started_at: i64,
    /// Whole run, milliseconds.
    pub duration_ms: u64,
    /// The mark phase, milliseconds.
    pub mark_ms: u64,
    /// Edges the mark phase followed (index children, referrers, blob references).
    pub edges: u64,
    /// Manifests read.
    pub manifests_seen: u64,
    /// Manifests removed.
    pub manifests: u64,
    /// Blob links removed.
    pub links: u64,
    /// Blobs removed (bytes and row).
    pub blobs: u64,
    /// Bytes freed in the blob store.
    pub bytes: u64,
    /// Blobs an earlier, interrupted run had started to remove and this one finished.
    pub resumed_blobs: u64,
    /// Calls to the blob store's batch delete.
    pub store_delete_calls: u64,
    /// The blobs removed, at most 10,000.
    pub blob_digests: Vec<String>,
    /// Per repository (only those with something removed).
    pub repositories: BTreeMap<String, RepoReport>,
    /// The orphan pass, when asked for.
    pub orphans: Option<OrphanReport>,
}

/// What the orphan pass found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OrphanReport {
    /// Blob objects the store listed.
    pub listed: u64,
    /// Those no metadata row knows, older than the grace window.
    pub found: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Removed (0 in a dry run).
    pub removed: u64,
    /// Unknown objects left because they are younger than the grace window.
    pub young: u64,
    /// The orphans (digests, or store locations), at most 10,000.
    pub objects: Vec<String>,
}

/// What the mark phase decided for one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoPlan {
    /// Manifests to delete, parents and subjects before what they reference.
    pub manifests: Vec<Digest>,
    /// Links to remove, with their blob sizes.
    pub links: Vec<(Digest, u64)>,
    /// Links that stay (their blobs stay).
    pub kept_links: HashSet<Digest>,
    /// Links touched before this may go (the grace window and holds applied).
    pub links_before: i64,
    /// Edges followed.
    pub edges: u64,
}

/// The mark phase for one repository: what is garbage in `g` for a run whose grace window
/// ends at `cutoff` (nothing touched at or after it goes).
pub fn plan_repository(
    g: &RepoGraph,
    cutoff: i64,
    grace_secs: u64,
    keep_untagged: bool,
) -> RepoPlan {
    let mut children: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    let mut blobs_of: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for e in &g.edges {
        let map = if e.manifest {
            &mut children
        } else {
            &mut blobs_of
        };
        map.entry(&e.parent).or_default().push(&e.child);
    }
    let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for m in &g.manifests {
        if let Some(s) = &m.subject {
            referrers.entry(s).or_default().push(&m.digest);
        }
    }
    let tagged: HashSet<&Digest> = g.tagged.iter().chain(g.verifying.iter()).collect();
    let mut kept: HashSet<&Digest> = HashSet::new();
    let mut queue: VecDeque<&Digest> = VecDeque::new();
    for m in &g.manifests {
        if keep_untagged || m.touched_at >= cutoff || tagged.contains(&m.digest) {
            kept.insert(&m.digest);
            queue.push_back(&m.digest);
        }
    }
    let mut edges = 0u64;
    while let Some(d) = queue.pop_front() {
        let next = children
            .get(d)
            .into_iter()
            .chain(referrers.get(d))
            .flatten();
        for c in next {
            edges += 1;
            if kept.insert(c) {
                queue.push_back(c);
            }
        }
    }
    let mut kept_links = HashSet::new();
    for d in &kept {
        for b in blobs_of.get(d).into_iter().flatten() {
            edges += 1;
            kept_links.insert((*b).clone());
        }
    }

    // Doomed manifests in an order where each comes after the doomed manifests that
    // reference it (as parent or subject): the sweep's re-check needs those gone first.
    let doomed: Vec<&Digest> = g
        .manifests
        .iter()
        .map(|m| &m.digest)
        .filter(|d| !kept.contains(d))
        .collect();
    let doomed_set: HashSet<&Digest> = doomed.iter().copied().collect();
    let mut waiting: HashMap<&Digest, usize> = doomed.iter().map(|d| (*d, 0)).collect();
    for d in &doomed {
        let next = children
            .get(d)
            .into_iter()
            .chain(referrers.get(d))
            .flatten();
        for c in next {
            if let Some(n) = waiting.get_mut(c) {
                *n += 1;
            }
        }
    }
    let mut ready: VecDeque<&Digest> = doomed.iter().copied().filter(|d| waiting[d] == 0).collect();
    let mut manifests = Vec::with_capacity(doomed.len());
    while let Some(d) = ready.pop_front() {
        manifests.push(d.clone());
        let next = children
            .get(d)
            .into_iter()
            .chain(referrers.get(d))
            .flatten();
        for c in next {
            if let Some(n) = waiting.get_mut(c) {
                *n -= 1;
                if *n == 0 && doomed_set.contains(c) {
                    ready.push_back(c);
                }
            }
        }
    }

    let held = g.held_since.map(|t| t.saturating_sub(grace_secs as i64));
    let links_before = held.map_or(cutoff, |h| h.min(cutoff));
    let mut links = Vec::new();
    let mut stay = HashSet::new();
    for (d, size, touched) in &g.links {
        if !kept_links.contains(d) && *touched < links_before {
            links.push((d.clone(), *size));
        } else {
            stay.insert(d.clone());
        }
    }
    RepoPlan {
        manifests,
        links,
        kept_links: stay,
        links_before,
        edges,
    }
}

/// A running collection: the lease holder's identity and the store it works on.
pub struct Collector<'a> {
    meta: &'a Meta,
    store: &'a dyn BlobStore,
    holder: String,
    run_id: Option<i64>,
    /// When this collector last acquired or renewed the lease.
    renewed: std::sync::Mutex<Option<Instant>>,
}

impl<'a> Collector<'a> {
    /// A collector identified as `holder` in the lease table.
    pub fn new(meta: &'a Meta, store: &'a dyn BlobStore, holder: impl Into<String>) -> Self {
        Self {
            meta,
            store,
            holder: holder.into(),
            run_id: None,
            renewed: std::sync::Mutex::new(None),
        }
    }

    /// This collection is recorded as run `id` (`gc_runs`): once it holds the lease, it marks
    /// the records of earlier runs still `running` (their process died) `interrupted`.
    pub fn recorded_as(mut self, id: i64) -> Self {
        self.run_id = Some(id);
        self
    }

    fn renewed_recently(&self) -> bool {
        let last = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        last.is_some_and(|t| t.elapsed() < RENEW_AFTER)
    }

    fn mark_renewed(&self) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    async fn renew(&self) -> Result<()> {
        if self.renewed_recently() {
            return Ok(());
        }
        if self
            .meta
            .acquire_lease(LEASE, &self.holder, LEASE_TTL_SECS)
            .await?
        {
            self.mark_renewed();
            Ok(())
        } else {
            Err(Error::Busy(
                "the GC lease was lost to another run; stopping".into(),
            ))
        }
    }

    /// Runs one collection under the `gc` lease. `Error::Busy` when another run holds it.
    pub async fn run(
        &self,
        opts: &Options,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Report> {
        if !self
            .meta
            .acquire_lease(LEASE, &self.holder, LEASE_TTL_SECS)
            .await?
        {
            let until = self.meta.lease_held_until(LEASE).await?.unwrap_or_default();
            return Err(Error::Busy(format!(
                "another GC run is in progress (its lease runs for {} more seconds unless renewed)",
                (until - now_secs()).max(0)
            )));
        }
        self.mark_renewed();
        if let Some(id) = self.run_id {
            match self
                .meta
                .runs_interrupted(crate::meta::RunKind::Gc, id)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    runs = n,
                    "GC runs left running by a dead process marked interrupted"
                ),
                Err(e) => tracing::warn!(error = %e, "could not mark interrupted GC runs"),
            }
        }
        let out = self.run_leased(opts, progress).await;
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(e) = self.meta.release_lease(LEASE, &self.holder).await {
            tracing::warn!(error = %e, "GC lease not released; it expires by itself");
        }
        out
    }

    async fn run_leased(
        &self,
        opts: &Options,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Report> {
        let started = Instant::now();
        let mut report = Report {
            dry_run: opts.dry_run,
            grace_secs: opts.grace_secs,
            started_at: now_secs(),
            ..Default::default()
        };
        if !opts.dry_run {
            // Blobs a killed run had marked: nothing links them; finish removing them.
            let left = self.meta.gc_deleting_blobs().await?;
            if !left.is_empty() {
                let refs: Vec<BlobRef> = left.iter().map(blob_ref).collect();
                self.delete_bytes(&refs, &mut report).await?;
                let digests: Vec<Digest> = left.iter().map(|b| b.digest.clone()).collect();
                self.meta.gc_forget_blobs(&digests).await?;
                report.resumed_blobs = left.len() as u64;
                report.bytes += left.iter().map(|b| b.size).sum::<u64>();
                report.blobs += left.len() as u64;
            }
        }

        // Mark.
        let cutoff = now_secs() - opts.grace_secs as i64;
        let repos = self.meta.gc_repositories().await?;
        let mut plans = Vec::with_capacity(repos.len());
        let mut kept_links: HashSet<Digest> = HashSet::new();
        for (i, (id, name)) in repos.iter().enumerate() {
            let g = self.meta.gc_graph(*id, name).await?;
            report.manifests_seen += g.manifests.len() as u64;
            let plan = plan_repository(&g, cutoff, opts.grace_secs, opts.keep_untagged);
            report.edges += plan.edges;
            kept_links.extend(plan.kept_links.iter().cloned());
            plans.push((*id, name.clone(), plan));
            progress(Progress {
                phase: Phase::Mark,
                done: i as u64 + 1,
                total: repos.len() as u64,
            });
        }
        let blobs: Vec<_> = self
            .meta
            .gc_blobs(cutoff)
            .await?
            .into_iter()
            .filter(|b| !kept_links.contains(&b.digest))
            .collect();
        report.mark_ms = started.elapsed().as_millis() as u64;

        if opts.dry_run {
            for (_, name, plan) in &plans {
                let r = repo_report(plan.manifests.iter(), &plan.links);
                if r.manifests + r.links > 0 {
                    report.manifests += r.manifests;
                    report.links += r.links;
                    report.repositories.insert(name.clone(), r);
                }
            }
            report.blobs += blobs.len() as u64;
            report.bytes += blobs.iter().map(|b| b.size).sum::<u64>();
            report.blob_digests = blobs
                .iter()
                .take(LIST_LIMIT)
                .map(|b| b.digest.to_string())
                .collect();
            if opts.orphans {
                report.orphans = Some(self.orphans(cutoff, true, progress).await?);
            }
            report.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }

        // Sweep manifests, then links, repository by repository.
        let total: u64 = plans.iter().map(|p| p.2.manifests.len() as u64).sum();
        let mut done = 0;
        let mut removed: HashMap<String, Vec<Digest>> = HashMap::new();
        for (id, name, plan) in &plans {
            for batch in plan.manifests.chunks(BATCH) {
                self.renew().await?;
                let gone = self
                    .meta
                    .gc_delete_manifests(*id, name, batch, cutoff)
                    .await?;
                done += batch.len() as u64;
                removed.entry(name.clone()).or_default().extend(gone);
                progress(Progress {
                    phase: Phase::Manifests,
                    done,
                    total,
                });
            }
        }
        let total: u64 = plans.iter().map(|p| p.2.links.len() as u64).sum();
        let mut done = 0;
        for (id, name, plan) in &plans {
            let sizes: HashMap<&Digest, u64> = plan.links.iter().map(|(d, s)| (d, *s)).collect();
            let mut gone_links = Vec::new();
            for batch in plan.links.chunks(BATCH) {
                self.renew().await?;
                let digests: Vec<Digest> = batch.iter().map(|(d, _)| d.clone()).collect();
                let gone = self
                    .meta
                    .gc_delete_links(*id, &digests, plan.links_before)
                    .await?;
                gone_links.extend(gone.into_iter().map(|d| {
                    let s = sizes[&d];
                    (d, s)
                }));
                done += batch.len() as u64;
                progress(Progress {
                    phase: Phase::Links,
                    done,
                    total,
                });
            }
            let manifests = removed.remove(name).unwrap_or_default();
            let r = repo_report(manifests.iter(), &gone_links);
            if r.manifests + r.links > 0 {
                report.manifests += r.manifests;
                report.links += r.links;
                report.repositories.insert(name.clone(), r);
            }
        }

        // Sweep blobs no repository links any more.
        let total = blobs.len() as u64;
        let mut done = 0;
        let sizes: HashMap<&Digest, &crate::meta::BlobRow> =
            blobs.iter().map(|b| (&b.digest, b)).collect();
        for batch in blobs.chunks(DELETE_BATCH) {
            self.renew().await?;
            let digests: Vec<Digest> = batch.iter().map(|b| b.digest.clone()).collect();
            let marked = self.meta.gc_mark_deleting(&digests, cutoff).await?;
            if !marked.is_empty() {
                let refs: Vec<BlobRef> = marked.iter().map(|d| blob_ref(sizes[d])).collect();
                self.delete_bytes(&refs, &mut report).await?;
                self.meta.gc_forget_blobs(&marked).await?;
                for d in &marked {
                    report.bytes += sizes[d].size;
                    if report.blob_digests.len() < LIST_LIMIT {
                        report.blob_digests.push(d.to_string());
                    }
                }
                report.blobs += marked.len() as u64;
            }
            done += batch.len() as u64;
            progress(Progress {
                phase: Phase::Blobs,
                done,
                total,
            });
        }
        if opts.orphans {
            let o = self.orphans(cutoff, false, progress).await?;
            report.bytes += o.bytes;
            report.store_delete_calls += o.removed.div_ceil(DELETE_BATCH as u64);
            report.orphans = Some(o);
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// The orphan pass: lists the store and removes objects no row knows, last modified
    /// before `cutoff`. Digest-place orphans are first recorded as blobs being deleted, so a
    /// push of the same bytes meanwhile waits as it does for a sweep; an object at a location
    /// of its own (an S3 multipart upload's key) is kept while its upload is in progress.
    async fn orphans(
        &self,
        cutoff: i64,
        dry_run: bool,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<OrphanReport> {
        self.renew().await?;
        let listed = self.store.list_blobs().await?;
        let known = self.meta.gc_known_objects().await?;
        let mut r = OrphanReport {
            listed: listed.len() as u64,
            ..Default::default()
        };
        let mut found = Vec::new();
        for o in listed {
            let is_known = match (&o.digest, &o.location) {
                (_, Some(l)) => {
                    known.locations.contains(l)
                        || l.rsplit('/')
                            .next()
                            .is_some_and(|id| known.uploads.contains(id))
                }
                (Some(d), None) => known.digests.contains(d.as_str()),
                (None, None) => true,
            };
            if is_known {
                continue;
            }
            if o.modified >= cutoff {
                r.young += 1;
                continue;
            }
            found.push(o);
        }
        r.found = found.len() as u64;
        r.bytes = found.iter().map(|o| o.size).sum();
        r.objects = found
            .iter()
            .take(LIST_LIMIT)
            .map(|o| match (&o.digest, &o.location) {
                (_, Some(l)) => l.clone(),
                (Some(d), None) => d.to_string(),
                (None, None) => String::new(),
            })
            .collect();
        if dry_run {
            return Ok(r);
        }
        let total = found.len() as u64;
        let mut done = 0;
        for batch in found.chunks(DELETE_BATCH) {
            self.renew().await?;
            let at_digest: Vec<(Digest, u64)> = batch
                .iter()
                .filter(|o| o.location.is_none())
                .filter_map(|o| o.digest.clone().map(|d| (d, o.size)))
                .collect();
            let held: HashSet<Digest> = self
                .meta
                .gc_hold_orphans(&at_digest)
                .await?
                .into_iter()
                .collect();
            // Locations are re-checked against a fresh read: a row or an upload that
            // appeared since the listing keeps its object.
            let locations: Vec<String> = batch.iter().filter_map(|o| o.location.clone()).collect();
            let now_known = self.meta.gc_known_locations(&locations).await?;
            let go: Vec<StoredObject> = batch
                .iter()
                .filter(|o| match (&o.digest, &o.location) {
                    (_, Some(l)) => !now_known.contains(l),
                    (Some(d), None) => held.contains(d),
                    (None, None) => false,
                })
                .cloned()
                .collect();
            self.renew().await?;
            self.store.delete_objects(&go).await?;
            let held: Vec<Digest> = held.into_iter().collect();
            self.meta.gc_forget_blobs(&held).await?;
            r.removed += go.len() as u64;
            done += batch.len() as u64;
            progress(Progress {
                phase: Phase::Orphans,
                done,
                total,
            });
        }
        Ok(r)
    }

    /// Removes bytes of blobs marked `deleting`, re-checking first that the lease is still
    /// this run's (a push waiting on these rows takes over only once the lease has expired).
    async fn delete_bytes(&self, refs: &[BlobRef], report: &mut Report) -> Result<()> {
        self.renew().await?;
        report.store_delete_calls += refs.len().div_ceil(DELETE_BATCH) as u64;
        self.store.delete_many(refs).await
    }
}

fn blob_ref(b: &crate::meta::BlobRow) -> BlobRef {
    BlobRef {
        digest: b.digest.clone(),
        location: b.location.clone(),
    }
}

fn repo_report<'a>(
    manifests: impl Iterator<Item = &'a Digest>,
    links: &[(Digest, u64)],
) -> RepoReport {
    let mut r = RepoReport::default();
    for d in manifests {
        r.manifests += 1;
        if r.manifest_digests.len() < LIST_LIMIT {
            r.manifest_digests.push(d.to_string());
        }
    }
    r.links = links.len() as u64;
    r.link_bytes = links.iter().map(|(_, s)| s).sum();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Edge, ManifestNode};

    fn d(s: &str) -> Digest {
        Digest::sha256(s.as_bytes())
    }

    /// A graph from a compact description: manifests `(name, subject, touched)`, tags,
    /// manifest edges, blob edges, links `(blob, touched)`.
    struct G {
        manifests: Vec<(&'static str, Option<&'static str>, i64)>,
        tags: Vec<&'static str>,
        children: Vec<(&'static str, &'static str)>,
        blobs: Vec<(&'static str, &'static str)>,
        links: Vec<(&'static str, i64)>,
        held_since: Option<i64>,
    }

    impl G {
        fn graph(&self) -> RepoGraph {
            RepoGraph {
                id: 1,
                name: "r".into(),
                manifests: self
                    .manifests
                    .iter()
                    .map(|(m, s, t)| ManifestNode {
                        digest: d(m),
                        subject: s.map(d),
                        touched_at: *t,
                    })
                    .collect(),
                tagged: self.tags.iter().map(|t| d(t)).collect(),
                verifying: vec![],
                edges: self
                    .children
                    .iter()
                    .map(|(p, c)| (p, c, true))
                    .chain(self.blobs.iter().map(|(p, c)| (p, c, false)))
                    .map(|(p, c, manifest)| Edge {
                        parent: d(p),
                        child: d(c),
                        manifest,
                    })
                    .collect(),
                links: self.links.iter().map(|(b, t)| (d(b), 10, *t)).collect(),
                held_since: self.held_since,
            }
        }
    }

    fn names(ds: &[Digest], all: &[&'static str]) -> Vec<&'static str> {
        ds.iter()
            .map(|x| *all.iter().find(|n| d(n) == *x).expect("known name"))
            .collect()
    }

    const ALL: &[&str] = &[
        "idx", "a", "b", "sig", "sigsig", "old", "young", "l1", "l2", "l3", "cfg",
    ];

    #[test]
    fn plans() {
        // (what, graph, keep_untagged, manifests doomed in order, links doomed)
        type Row = (&'static str, G, bool, Vec<&'static str>, Vec<&'static str>);
        let cutoff = 100;
        let rows: Vec<Row> = vec![
            (
                "a tagged index keeps its children, their referrers and blobs",
                G {
                    manifests: vec![
                        ("idx", None, 1),
                        ("a", None, 1),
                        ("b", None, 1),
                        ("sig", Some("a"), 1),
                    ],
                    tags: vec!["idx"],
                    children: vec![("idx", "a"), ("idx", "b")],
                    blobs: vec![("a", "l1"), ("b", "l2"), ("sig", "l3")],
                    links: vec![("l1", 1), ("l2", 1), ("l3", 1)],
                    held_since: None,
                },
                false,
                vec![],
                vec![],
            ),
            (
                "an untagged index goes before its children, a referrer after its subject",
                G {
                    manifests: vec![
                        ("sigsig", Some("sig"), 1),
                        ("sig", Some("a"), 1),
                        ("a", None, 1),
                        ("idx", None, 1),
                    ],
                    tags: vec![],
                    children: vec![("idx", "a")],
                    blobs: vec![("a", "l1"), ("sig", "l3")],
                    links: vec![("l1", 1), ("l3", 1)],
                    held_since: None,
                },
                false,
                vec!["idx", "a", "sig", "sigsig"],
                vec!["l1", "l3"],
            ),
            (
                "young manifests and what they reference stay; young links stay",
                G {
                    manifests: vec![("young", None, 150), ("old", None, 1), ("a", None, 1)],
                    tags: vec![],
                    children: vec![("young", "a")],
                    blobs: vec![("old", "l1"), ("a", "l2")],
                    links: vec![("l1", 1), ("l2", 1), ("l3", 120)],
                    held_since: None,
                },
                false,
                vec!["old"],
                vec!["l1"],
            ),
            (
                "keep_untagged keeps every manifest; an unreferenced link still goes",
                G {
                    manifests: vec![("old", None, 1)],
                    tags: vec![],
                    children: vec![],
                    blobs: vec![("old", "l1")],
                    links: vec![("l1", 1), ("l2", 1)],
                    held_since: None,
                },
                true,
                vec![],
                vec!["l2"],
            ),
            (
                "an upload in flight holds links touched within the grace window before it",
                G {
                    manifests: vec![],
                    tags: vec![],
                    children: vec![],
                    blobs: vec![],
                    // grace 10: held since 60 keeps links touched at 50 or later.
                    links: vec![("l1", 49), ("l2", 50), ("l3", 99)],
                    held_since: Some(60),
                },
                false,
                vec![],
                vec!["l1"],
            ),
            (
                "an edge to an absent child (sparse index) or blob (cache) is no problem",
                G {
                    manifests: vec![("idx", None, 1)],
                    tags: vec!["idx"],
                    children: vec![("idx", "a")],
                    blobs: vec![("idx", "cfg")],
                    links: vec![("cfg", 1)],
                    held_since: None,
                },
                false,
                vec![],
                vec![],
            ),
        ];
        for (what, g, keep_untagged, want_manifests, want_links) in rows {
            let plan = plan_repository(&g.graph(), cutoff, 10, keep_untagged);
            assert_eq!(names(&plan.manifests, ALL), want_manifests, "{what}");
            let links: Vec<Digest> = plan.links.iter().map(|(d, _)| d.clone()).collect();
            let mut got = names(&links, ALL);
            got.sort();
            assert_eq!(got, want_links, "{what}");
            for l in &links {
                assert!(!plan.kept_links.contains(l), "{what}");
            }
        }
    }
}
