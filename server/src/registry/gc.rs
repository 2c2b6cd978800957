//! Garbage collection as the registry runs it: a recorded run over `berth_storage::gc`, its
//! live progress, the schedule, and what a push does when it meets a blob a run is removing.

use super::{Registry, RegistryError, Result};
use berth_oci::Digest;
use berth_storage::gc::{Collector, Options, Phase, Progress, Report};
use berth_storage::meta::RunRow;
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;

/// `[gc]` in the configuration.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Nothing younger than this is collected (uploaded blobs not yet referenced, manifests
    /// pushed by digest before their index or tag).
    pub grace_secs: u64,
    /// Keep manifests no tag reaches (collect only blobs no manifest references).
    pub keep_untagged: bool,
    /// Run every this long (`30m`, `6h`, `1d`); unset: only on demand.
    pub schedule: Option<String>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            grace_secs: 3600,
            keep_untagged: false,
            schedule: None,
        }
    }
}

impl GcConfig {
    /// The schedule's interval, checked.
    pub fn interval(&self) -> anyhow::Result<Option<Duration>> {
        self.schedule
            .as_deref()
            .map(|s| {
                crate::mirror::def::parse_interval(s)
                    .map_err(|e| anyhow::anyhow!("invalid value for key \"gc.schedule\": {e}"))
            })
            .transpose()
    }
}

/// A run in progress, as the API shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Live {
    /// The run.
    pub id: i64,
    /// Its phase.
    pub phase: Phase,
    /// Done in the phase.
    pub done: u64,
    /// Units in the phase.
    pub total: u64,
}

/// The registry's GC state: the run in progress in this process, if any.
#[derive(Default)]
pub(super) struct GcState {
    live: Mutex<Option<Live>>,
}

/// A run as the API and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct GcRun {
    /// Id.
    pub id: i64,
    /// `cli`, `api` or `schedule`.
    pub trigger: String,
    /// Whether nothing was removed.
    pub dry_run: bool,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub state: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    pub finished_at: Option<i64>,
    /// Where a run of this process is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Live>,
    /// The report, once finished.
    pub report: Option<serde_json::Value>,
}

/// What a run does besides collecting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct GcMode {
    /// Report what would go; remove nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also list the store for bytes no metadata row knows (the orphan pass).
    #[serde(default)]
    pub orphans: bool,
}

/// How long a push waits for a GC run to finish removing a blob it re-uploads.
const DELETING_WAIT: Duration = Duration::from_secs(60);

impl Registry {
    /// The collector options the settings give, for a run in `mode`.
    pub fn gc_options(&self, mode: GcMode) -> Options {
        Options {
            grace_secs: self.settings.gc.grace_secs,
            keep_untagged: self.settings.gc.keep_untagged,
            dry_run: mode.dry_run,
            orphans: mode.orphans,
        }
    }

    /// Records a run and starts it in the background. Fails with a conflict when a run is in
    /// progress (here, or in another process holding the lease).
    pub async fn start_gc(self: &std::sync::Arc<Self>, trigger: &str, mode: GcMode) -> Result<i64> {
        if let Some(until) = self.meta.lease_held_until(berth_storage::gc::LEASE).await? {
            return Err(RegistryError::Conflict(format!(
                "a garbage collection run is in progress (its lease runs for {} more seconds unless renewed)",
                (until - berth_storage::now_secs()).max(0)
            )));
        }
        let id = self.open_gc_run(trigger, mode.dry_run).await?;
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.execute_gc(id, mode, &|_| {}).await;
        });
        Ok(id)
    }

    /// Runs a collection now and waits for it (the CLI's in-process mode, the schedule).
    /// `progress` sees every step.
    pub async fn run_gc(
        &self,
        trigger: &str,
        mode: GcMode,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(i64, Report)> {
        let id = self.open_gc_run(trigger, mode.dry_run).await?;
        let report = self.execute_gc(id, mode, progress).await?;
        Ok((id, report))
    }

    /// Claims this process's one run slot and records the run.
    async fn open_gc_run(&self, trigger: &str, dry_run: bool) -> Result<i64> {
        {
            let mut live = self.gc.live.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = *live {
                return Err(RegistryError::Conflict(format!(
                    "garbage collection run {} is in progress",
                    l.id
                )));
            }
            *live = Some(Live {
                id: 0,
                phase: Phase::Mark,
                done: 0,
                total: 0,
            });
        }
        match self
            .meta
            .run_start(berth_storage::meta::RunKind::Gc, trigger, dry_run)
            .await
        {
            Ok(id) => {
                self.set_live(id);
                Ok(id)
            }
            Err(e) => {
                self.end_live();
                Err(e.into())
            }
        }
    }

    fn set_live(&self, id: i64) {
        let mut live = self.gc.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = live.as_mut() {
            l.id = id;
        }
    }

    fn end_live(&self) {
        *self.gc.live.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn execute_gc(
        &self,
        id: i64,
        mode: GcMode,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Report> {
        let holder = format!("{}:{}:run-{id}", hostname(), std::process::id());
        let collector = Collector::new(&self.meta, self.store.as_ref(), holder).recorded_as(id);
        let opts = self.gc_options(mode);
        let track = |p: Progress| {
            if let Some(l) = self
                .gc
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                l.phase = p.phase;
                l.done = p.done;
                l.total = p.total;
            }
            progress(p);
        };
        let out = collector.run(&opts, &track).await;
        // Whatever was removed, no cached manifest or tag may outlive it.
        self.cache.invalidate();
        self.end_live();
        match out {
            Ok(report) => {
                let json = serde_json::to_string(&report).unwrap_or_default();
                self.meta
                    .run_finish(berth_storage::meta::RunKind::Gc, id, "succeeded", &json)
                    .await?;
                tracing::info!(
                    gc.run = id,
                    dry_run = mode.dry_run,
                    manifests = report.manifests,
                    links = report.links,
                    blobs = report.blobs,
                    bytes = report.bytes,
                    duration_ms = report.duration_ms,
                    "garbage collection finished"
                );
                Ok(report)
            }
            Err(e) => {
                let json = serde_json::json!({ "error": e.to_string() }).to_string();
                if let Err(e2) = self
                    .meta
                    .run_finish(berth_storage::meta::RunKind::Gc, id, "failed", &json)
                    .await
                {
                    tracing::warn!(error = %e2, "could not record the GC run's failure");
                }
                tracing::error!(gc.run = id, error = %e, "garbage collection failed");
                Err(match e {
                    berth_storage::Error::Busy(m) => RegistryError::Conflict(m),
                    e => e.into(),
                })
            }
        }
    }

    /// Past runs, newest first (with this process's live progress on a running one).
    pub async fn gc_runs(&self, limit: i64) -> Result<Vec<GcRun>> {
        let rows = self
            .meta
            .runs(berth_storage::meta::RunKind::Gc, limit)
            .await?;
        Ok(rows.into_iter().map(|r| self.gc_run_view(r)).collect())
    }

    /// One run.
    pub async fn gc_run(&self, id: i64) -> Result<Option<GcRun>> {
        Ok(self
            .meta
            .run(berth_storage::meta::RunKind::Gc, id)
            .await?
            .map(|r| self.gc_run_view(r)))
    }

    fn gc_run_view(&self, r: RunRow) -> GcRun {
        let live = *self.gc.live.lock().unwrap_or_else(|p| p.into_inner());
        GcRun {
            progress: live.filter(|l| l.id == r.id && r.state == "running"),
            report: r
                .report
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            id: r.id,
            trigger: r.trigger,
            dry_run: r.dry_run,
            state: r.state,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }

    /// Before a finished upload's bytes become blob `digest`: waits while a GC run removes
    /// an earlier copy (the rename or the metadata commit must not race its delete), and
    /// finishes that removal itself when the run that started it is gone (its lease
    /// expired). Touches the blob, so no run starts removing it within the grace window.
    pub(super) async fn reserve_blob(&self, digest: &Digest) -> Result<()> {
        let deadline = tokio::time::Instant::now() + DELETING_WAIT;
        loop {
            if self.meta.reserve_blob(digest).await?.is_none() {
                return Ok(());
            }
            if self
                .meta
                .lease_held_until(berth_storage::gc::LEASE)
                .await?
                .is_none()
            {
                if let Some(b) = self.meta.gc_deleting_blob(digest).await? {
                    let r = berth_storage::blob::BlobRef {
                        digest: b.digest.clone(),
                        location: b.location,
                    };
                    self.store.delete(&r).await?;
                    self.meta
                        .gc_forget_blobs(std::slice::from_ref(digest))
                        .await?;
                    tracing::info!(blob.digest = %digest, "finished removing a blob an interrupted GC run had started on");
                }
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RegistryError::Conflict(format!(
                    "blob {digest} is being removed by garbage collection; retry the upload"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Spawns the scheduled runs, if `[gc] schedule` is set.
    pub fn spawn_gc_schedule(
        self: &std::sync::Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = me.run_gc("schedule", GcMode::default(), &|_| {}).await {
                    tracing::warn!(error = %e, "scheduled garbage collection did not run");
                }
            }
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "berth".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::PutMode;
    use berth_oci::Reference;
    use futures::StreamExt;
    use std::sync::Arc;

    async fn registry(grace_secs: u64) -> (tempfile::TempDir, Arc<Registry>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = crate::config::Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        cfg.gc.grace_secs = grace_secs;
        let opened = crate::open(&cfg).await.expect("registry on defaults");
        (dir, opened.registry)
    }

    fn body(b: Vec<u8>) -> berth_storage::blob::ByteStream {
        futures::stream::once(async move { Ok(bytes::Bytes::from(b)) }).boxed()
    }

    /// An image of `layers`, with a config naming `tag` (so each push is a new manifest).
    fn manifest(config: &Digest, config_len: usize, layers: &[(Digest, usize)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(d, n)| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": d, "size": n
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config, "size": config_len
            },
            "layers": layers
        }))
        .expect("json")
    }

    async fn readable(reg: &Registry, repo: &str, d: &Digest) -> bool {
        let Ok((_, r)) = reg.blob(repo, d).await else {
            return false;
        };
        let Ok(b) = reg.read_blob(&r, None).await else {
            return false;
        };
        let bytes: Vec<u8> = b
            .stream
            .map(|c| c.map(|c| c.to_vec()).unwrap_or_default())
            .concat()
            .await;
        Digest::sha256(&bytes) == *d
    }

    /// Pushers re-upload a small pool of layers (so collected digests come back), tag,
    /// untag and re-tag, across repositories, while collections run back to back with a
    /// two-second grace window. Every acknowledged manifest must pull whole for as long as
    /// it stays tagged; when the pushers stop and the window passes, nothing is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pushes_racing_collections_never_lose_an_acknowledged_blob() {
        let (dir, reg) = registry(2).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collector = {
            let (reg, stop) = (reg.clone(), stop.clone());
            tokio::spawn(async move {
                let mut runs = 0u64;
                let mut removed = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (_, r) = reg
                        .run_gc("test", GcMode::default(), &|_| {})
                        .await
                        .expect("gc run");
                    runs += 1;
                    removed += r.blobs;
                }
                (runs, removed)
            })
        };
        let mut pushers = Vec::new();
        for p in 0..4u8 {
            let reg = reg.clone();
            pushers.push(tokio::spawn(async move {
                let repo = format!("team/app{}", p % 2);
                let mut acked = 0u32;
                let deadline = std::time::Instant::now() + Duration::from_secs(8);
                let mut i = 0u32;
                while std::time::Instant::now() < deadline {
                    i += 1;
                    let tag = format!("p{p}-{}", i % 3);
                    // Each layer content is used for a while, then idles long enough to be
                    // collected, then comes back: HEAD first, as docker does, upload if absent.
                    let content = |k: u32| {
                        let c = ((i / 40 + k) % 16) as u8;
                        vec![b'a' + c; 1000 + c as usize]
                    };
                    let layers: Vec<(Digest, usize)> = (0..3u32)
                        .map(|k| {
                            let b = content(k);
                            (Digest::sha256(&b), b.len())
                        })
                        .collect();
                    for (k, (d, _)) in layers.iter().enumerate() {
                        if reg.blob(&repo, d).await.is_err() {
                            reg.monolithic_upload(&repo, d, body(content(k as u32)))
                                .await
                                .expect("blob upload");
                        }
                    }
                    let config =
                        format!(r#"{{"os":"linux","architecture":"amd64","push":"{p}-{i}"}}"#);
                    let cd = Digest::sha256(config.as_bytes());
                    reg.monolithic_upload(&repo, &cd, body(config.clone().into_bytes()))
                        .await
                        .expect("config upload");
                    let m = manifest(&cd, config.len(), &layers);
                    let r = Reference::Tag(tag.parse().expect("tag"));
                    match reg
                        .put_manifest(&repo, &r, None, &m, &[], PutMode::CLIENT)
                        .await
                    {
                        Ok(_) => acked += 1,
                        // Every blob was uploaded, or seen by a HEAD, a moment ago: well
                        // within the grace window.
                        Err(RegistryError::ManifestBlobUnknown(d)) => {
                            panic!(
                                "push {p}-{i}: MANIFEST_BLOB_UNKNOWN for {d}, just pushed or seen"
                            )
                        }
                        Err(e) => panic!("push {p}-{i}: {e}"),
                    }
                    for (d, _) in layers.iter().chain([(cd.clone(), 0)].iter()) {
                        assert!(
                            readable(&reg, &repo, d).await,
                            "push {p}-{i}: {d} lost after 201"
                        );
                    }
                    if i.is_multiple_of(2) {
                        reg.delete_manifest(&repo, &r).await.expect("untag");
                    }
                }
                acked
            }));
        }
        let mut acked = 0;
        for p in pushers {
            acked += p.await.expect("pusher");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (runs, removed) = collector.await.expect("collector");
        assert!(acked > 20 && runs > 2, "acked {acked}, runs {runs}");
        assert!(
            removed > 0,
            "the collections removed nothing: the race was not exercised"
        );

        // Whatever is still tagged pulls whole.
        for repo in ["team/app0", "team/app1"] {
            for tag in reg.tags(repo, None, 100).await.expect("tags") {
                let m = reg
                    .manifest(repo, &Reference::Tag(tag.parse().expect("tag")))
                    .await
                    .expect("tagged manifest");
                let v: serde_json::Value = serde_json::from_slice(&m.content).expect("json");
                let mut ds = vec![v["config"]["digest"].as_str().expect("config").to_owned()];
                for l in v["layers"].as_array().expect("layers") {
                    ds.push(l["digest"].as_str().expect("digest").to_owned());
                }
                for d in ds {
                    let d: Digest = d.parse().expect("digest");
                    assert!(readable(&reg, repo, &d).await, "{repo}:{tag}: {d} lost");
                }
            }
        }

        // Untag everything, let the window pass: nothing is left on disk or in the database.
        for repo in ["team/app0", "team/app1"] {
            for tag in reg.tags(repo, None, 100).await.expect("tags") {
                reg.delete_manifest(repo, &Reference::Tag(tag.parse().expect("tag")))
                    .await
                    .expect("untag");
            }
        }
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let (_, r) = reg
            .run_gc("test", GcMode::default(), &|_| {})
            .await
            .expect("final run");
        assert!(r.blobs > 0);
        let left: Vec<_> = walk(&dir.path().join("blobs"));
        assert!(left.is_empty(), "blob files left: {left:?}");
        assert!(reg.meta.gc_blobs(i64::MAX).await.expect("blobs").is_empty());
    }

    /// A HEAD that finds an old link touches it: the client may now push a manifest that
    /// names the blob without uploading it, so the next run must not take the link away.
    #[tokio::test]
    async fn a_head_keeps_an_old_link_for_another_window() {
        let (_dir, reg) = registry(2).await;
        let b = b"layer seen by HEAD".to_vec();
        let d = Digest::sha256(&b);
        reg.monolithic_upload("team/a", &d, body(b))
            .await
            .expect("upload");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        reg.blob("team/a", &d).await.expect("HEAD finds it");
        let (_, r) = reg
            .run_gc("test", GcMode::default(), &|_| {})
            .await
            .expect("gc");
        assert_eq!(r.links, 0, "the link seen by HEAD was collected: {r:?}");
        assert!(readable(&reg, "team/a", &d).await);
        // Left alone for a window, it goes.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let (_, r) = reg
            .run_gc("test", GcMode::default(), &|_| {})
            .await
            .expect("gc");
        assert_eq!((r.links, r.blobs), (1, 1));
        assert!(reg.blob("team/a", &d).await.is_err());
    }

    /// A run killed after marking a blob `deleting` (before or after its bytes went): an
    /// upload of the same bytes neither acknowledges bytes about to vanish nor waits for
    /// ever. With no run holding the lease, it finishes the removal and stores its own.
    #[tokio::test]
    async fn an_upload_meeting_a_half_deleted_blob_finishes_the_deletion_and_stores_its_bytes() {
        let (_dir, reg) = registry(0).await;
        let b = b"layer a killed run was removing".to_vec();
        let d = Digest::sha256(&b);
        reg.monolithic_upload("team/a", &d, body(b.clone()))
            .await
            .expect("upload");
        reg.delete_blob("team/a", &d).await.expect("unlink");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let marked = reg
            .meta
            .gc_mark_deleting(std::slice::from_ref(&d), berth_storage::now_secs())
            .await
            .expect("mark");
        assert_eq!(marked, vec![d.clone()], "the blob was not marked");
        // The killed run held no lease any more; its bytes are still there.
        reg.monolithic_upload("team/b", &d, body(b))
            .await
            .expect("upload again");
        assert!(
            readable(&reg, "team/b", &d).await,
            "acknowledged but unreadable"
        );
        assert!(reg.meta.gc_deleting_blob(&d).await.expect("row").is_none());
        // And the next run keeps it: team/b links it.
        let (_, r) = reg
            .run_gc("test", GcMode::default(), &|_| {})
            .await
            .expect("gc");
        assert_eq!(r.blobs, 0, "{r:?}");
        assert!(readable(&reg, "team/b", &d).await);
    }

    /// Bytes a crash left in the store (written, never recorded) are found only by the
    /// orphan pass, and removed once older than the grace window; recorded blobs, young
    /// orphans and uploads in progress stay; a dry run removes nothing.
    #[tokio::test]
    async fn the_orphan_pass_removes_old_bytes_no_row_knows_and_nothing_else() {
        let (dir, reg) = registry(2).await;
        let kept = b"a recorded layer".to_vec();
        let kd = Digest::sha256(&kept);
        reg.monolithic_upload("team/a", &kd, body(kept))
            .await
            .expect("upload");
        let place = |d: &Digest| {
            let hex = d.hex();
            dir.path().join("blobs/sha256").join(&hex[..2]).join(hex)
        };
        let write = |bytes: &[u8], age_secs: u64| {
            let d = Digest::sha256(bytes);
            let p = place(&d);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            let t = std::time::SystemTime::now() - Duration::from_secs(age_secs);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            d
        };
        let old = write(b"bytes a crash left behind", 3600);
        let young = write(b"bytes being committed right now", 0);
        let up = reg.start_upload("team/a").await.expect("upload session");
        let _ = up;
        let mode = GcMode {
            dry_run: true,
            orphans: true,
        };
        let (_, r) = reg.run_gc("test", mode, &|_| {}).await.expect("dry run");
        let o = r.orphans.expect("orphan report");
        assert_eq!(
            (o.listed, o.found, o.removed, o.young),
            (3, 1, 0, 1),
            "{o:?}"
        );
        assert_eq!(o.objects, vec![old.to_string()]);
        assert!(place(&old).exists());
        let (_, r) = reg
            .run_gc(
                "test",
                GcMode {
                    dry_run: false,
                    orphans: true,
                },
                &|_| {},
            )
            .await
            .expect("run");
        let o = r.orphans.expect("orphan report");
        assert_eq!((o.found, o.removed), (1, 1), "{o:?}");
        assert!(!place(&old).exists(), "the orphan is still there");
        assert!(place(&young).exists(), "a young object was removed");
        assert!(
            readable(&reg, "team/a", &kd).await,
            "a recorded blob was removed"
        );
        assert!(reg.meta.gc_deleting_blobs().await.expect("rows").is_empty());
        // Without the flag, GC never lists the store.
        let later = write(b"another crash", 3600);
        let (_, r) = reg
            .run_gc("test", GcMode::default(), &|_| {})
            .await
            .expect("run");
        assert!(r.orphans.is_none());
        assert!(place(&later).exists());
    }

    /// A process killed during a run leaves its record `running`; the next run to hold the
    /// lease marks it `interrupted` (and leaves its own record, and dry runs, alone).
    /// (Found by tests/e2e/test_gc.py's kill -9 test: the record said `running` for ever.)
    #[tokio::test]
    async fn the_next_run_marks_a_killed_runs_record_interrupted() {
        let (_dir, reg) = registry(0).await;
        let killed = reg
            .meta
            .run_start(berth_storage::meta::RunKind::Gc, "api", false)
            .await
            .expect("record");
        let (id, _) = reg
            .run_gc("test", GcMode::default(), &|_| {})
            .await
            .expect("gc");
        let state = |r: Option<GcRun>| r.expect("run").state;
        assert_eq!(state(reg.gc_run(killed).await.expect("run")), "interrupted");
        assert_eq!(state(reg.gc_run(id).await.expect("run")), "succeeded");
        let dry_run = GcMode {
            dry_run: true,
            orphans: false,
        };
        let (dry, _) = reg.run_gc("test", dry_run, &|_| {}).await.expect("dry gc");
        assert_eq!(state(reg.gc_run(dry).await.expect("run")), "succeeded");
        assert_eq!(state(reg.gc_run(killed).await.expect("run")), "interrupted");
    }

    fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    out.extend(walk(&path));
                } else {
                    out.push(path);
                }
            }
        }
        out
    }
}
