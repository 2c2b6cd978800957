//! Mirrors and the pull-through cache (issue #7, docs/MIRROR.md).
//!
//! `def` holds the definitions and filters, `upstream` talks to the upstream registry, `sync`
//! copies one mirror, `proxy` answers misses under a cache prefix. This module keeps the
//! definitions (config file plus admin API), runs mirrors (CLI, API, schedule) and their
//! reports. It calls `registry` and `berth_storage`; routes call it.

pub mod def;
pub mod proxy;
pub mod sync;
pub mod upstream;

use crate::registry::Registry;
use anyhow::{bail, Context};
use berth_oci::Digest;
use berth_storage::meta::{Meta, MirrorRun, RunTotals};
use def::{validate_mirror, validate_proxy, Filters, MirrorDef, ProxyDef};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A mirror run waits out an upstream 429 whose Retry-After is at most this long.
const MIRROR_RETRY_AFTER_MAX: Duration = Duration::from_secs(120);

/// Where a run's progress goes: a terminal's progress bars, log lines, or nowhere.
pub trait Progress: Send + Sync {
    /// One line of news (a tag copied, skipped, failed).
    fn line(&self, _s: &str) {}
    /// A blob copy starts (at `offset` when resumed).
    fn blob_start(&self, _digest: &Digest, _size: u64, _offset: u64) {}
    /// Bytes of a blob arrived (several blobs may be in flight).
    fn blob_bytes(&self, _digest: &Digest, _n: u64) {}
    /// A blob copy is done (or failed).
    fn blob_done(&self, _digest: &Digest) {}
}

/// Progress nobody watches (server runs: the report and the logs tell).
pub struct Quiet;
impl Progress for Quiet {}

/// One line of a run's report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReportItem {
    /// Local repository.
    pub repository: String,
    /// Tag, if the item is a tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `copied`, `skipped` or `failed`.
    pub outcome: String,
    /// Local digest the tag points at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why (skips and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A run in progress: counters the API reads while it runs.
pub struct Live {
    run_id: i64,
    copied: AtomicI64,
    skipped: AtomicI64,
    failed: AtomicI64,
    bytes: AtomicI64,
    current: Mutex<String>,
    items: Mutex<Vec<ReportItem>>,
}

impl Live {
    fn new(run_id: i64) -> Self {
        Self {
            run_id,
            copied: AtomicI64::new(0),
            skipped: AtomicI64::new(0),
            failed: AtomicI64::new(0),
            bytes: AtomicI64::new(0),
            current: Mutex::new(String::new()),
            items: Mutex::new(Vec::new()),
        }
    }

    fn totals(&self) -> RunTotals {
        RunTotals {
            copied: self.copied.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn push(&self, item: ReportItem) {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(item);
    }

    fn set_current(&self, s: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn items(&self) -> Vec<ReportItem> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn checkpoint(&self, records: &Meta) {
        if let Err(e) = records.update_mirror_run(self.run_id, self.totals()).await {
            tracing::warn!(error = %e, "could not record mirror progress");
        }
    }
}

/// A run as the API and the CLI show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunReport {
    /// Run id.
    pub id: i64,
    /// Mirror name.
    pub mirror: String,
    /// `cli`, `api` or `schedule`.
    pub trigger: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub state: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    pub finished_at: Option<i64>,
    /// Manifests and blobs copied.
    pub copied: i64,
    /// Manifests and blobs already there (or tags unchanged upstream).
    pub skipped: i64,
    /// Items that failed.
    pub failed: i64,
    /// Bytes fetched.
    pub bytes: i64,
    /// What it is copying now (running runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Per-tag outcomes.
    pub items: Vec<ReportItem>,
}

impl RunReport {
    fn from_row(r: MirrorRun) -> Self {
        let items = r
            .report
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        Self {
            id: r.id,
            mirror: r.mirror,
            trigger: r.trigger,
            state: r.state,
            started_at: r.started_at,
            finished_at: r.finished_at,
            copied: r.copied,
            skipped: r.skipped,
            failed: r.failed,
            bytes: r.bytes,
            current: None,
            items,
        }
    }
}

/// Where a definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file (read-only on the API).
    Config,
    /// The admin API (stored in the metadata).
    Api,
}

/// A refused definition change.
#[derive(Debug, thiserror::Error)]
pub enum DefError {
    /// The definition is invalid (the message names the field).
    #[error("invalid mirror definition: {0}")]
    Invalid(String),
    /// Defined in the configuration file.
    #[error("mirror {0:?} is defined in the configuration file; change it there")]
    FromConfig(String),
    /// Metadata failed.
    #[error(transparent)]
    Storage(#[from] berth_storage::Error),
}

/// Mirrors and caches of one registry.
pub struct Mirrors {
    registry: Arc<Registry>,
    /// The mirror's own bookkeeping (definitions, runs, tag records, resumable copies, cache
    /// tag checks). What it copies is written through `registry`.
    records: Meta,
    config: Vec<MirrorDef>,
    proxies: Vec<proxy::Proxy>,
    running: Mutex<HashMap<String, Arc<Live>>>,
    fetches: proxy::Inflight,
}

impl Mirrors {
    /// Checks the definitions and sets up upstream clients.
    pub fn new(
        registry: Arc<Registry>,
        records: Meta,
        mirrors: Vec<MirrorDef>,
        proxies: Vec<ProxyDef>,
    ) -> anyhow::Result<Self> {
        for m in &mirrors {
            validate_mirror(m)
                .map_err(|e| anyhow::anyhow!("invalid value for key \"mirrors\": {e}"))?;
        }
        let proxies = proxies
            .into_iter()
            .map(proxy::Proxy::new)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            registry,
            records,
            config: mirrors,
            proxies,
            running: Mutex::new(HashMap::new()),
            fetches: proxy::Inflight::default(),
        })
    }

    /// Every mirror: the configuration file's, then the API's.
    pub async fn list(&self) -> berth_storage::Result<Vec<(MirrorDef, Source)>> {
        let mut out: Vec<_> = self
            .config
            .iter()
            .map(|d| (d.clone(), Source::Config))
            .collect();
        for (name, json) in self.records.mirror_defs().await? {
            if self.config.iter().any(|d| d.name == name) {
                continue;
            }
            match serde_json::from_str::<MirrorDef>(&json) {
                Ok(d) => out.push((d, Source::Api)),
                Err(e) => {
                    tracing::warn!(mirror.name = %name, error = %e, "stored mirror definition unreadable")
                }
            }
        }
        Ok(out)
    }

    /// One mirror by name.
    pub async fn get(&self, name: &str) -> berth_storage::Result<Option<(MirrorDef, Source)>> {
        Ok(self.list().await?.into_iter().find(|(d, _)| d.name == name))
    }

    /// Creates or replaces a mirror defined through the API.
    pub async fn put(&self, def: MirrorDef) -> Result<(), DefError> {
        validate_mirror(&def).map_err(DefError::Invalid)?;
        if self.config.iter().any(|d| d.name == def.name) {
            return Err(DefError::FromConfig(def.name));
        }
        let json = serde_json::to_string(&def).map_err(|e| DefError::Invalid(e.to_string()))?;
        self.records.put_mirror_def(&def.name, &json).await?;
        Ok(())
    }

    /// Removes a mirror defined through the API. False if there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, DefError> {
        if self.config.iter().any(|d| d.name == name) {
            return Err(DefError::FromConfig(name.to_owned()));
        }
        Ok(self.records.delete_mirror_def(name).await?)
    }

    /// Opens a run: the definition, its filters, and the run's live counters.
    async fn prepare(
        &self,
        name: &str,
        trigger: &str,
    ) -> anyhow::Result<(MirrorDef, Filters, Arc<Live>)> {
        let (def, _) = self
            .get(name)
            .await?
            .with_context(|| format!("no mirror named {name:?}"))?;
        let filters = validate_mirror(&def).map_err(|e| anyhow::anyhow!("mirror {name}: {e}"))?;
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = running.get(name) {
                bail!("mirror {name} is already running (run {})", l.run_id);
            }
            // Reserve the name before the (async) insert of the run row.
            running.insert(name.to_owned(), Arc::new(Live::new(0)));
        }
        let id = match self.records.start_mirror_run(name, trigger).await {
            Ok(id) => id,
            Err(e) => {
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                return Err(e.into());
            }
        };
        let live = Arc::new(Live::new(id));
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), live.clone());
        Ok((def, filters, live))
    }

    async fn execute(
        &self,
        def: MirrorDef,
        filters: Filters,
        live: Arc<Live>,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<RunReport> {
        let started = std::time::Instant::now();
        let result = match upstream::Upstream::new(&def.upstream, def.auth.clone()) {
            Ok(up) => {
                let up = up.patient(MIRROR_RETRY_AFTER_MAX);
                let s = sync::Copier {
                    reg: &self.registry,
                    records: &self.records,
                    up: &up,
                    def: &def,
                    filters: &filters,
                    live: live.clone(),
                    progress,
                };
                s.run().await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&def.name);
        let mut items = live.items();
        if let Err(e) = &result {
            live.failed.fetch_add(1, Ordering::Relaxed);
            items.push(ReportItem {
                repository: String::new(),
                tag: None,
                outcome: "failed".into(),
                digest: None,
                detail: Some(format!("{e:#}")),
            });
        }
        let t = live.totals();
        let state = if t.failed > 0 { "failed" } else { "succeeded" };
        let json = serde_json::to_string(&items)?;
        self.records
            .finish_mirror_run(live.run_id, state, t, &json)
            .await?;
        tracing::info!(
            mirror.name = %def.name, run.id = live.run_id, state, copied = t.copied,
            skipped = t.skipped, failed = t.failed, size_bytes = t.bytes,
            duration_ms = started.elapsed().as_millis() as u64, "mirror run finished"
        );
        self.report(live.run_id)
            .await?
            .context("the run row disappeared")
    }

    /// Runs a mirror to the end in this task (the CLI's in-process mode).
    pub async fn run(
        &self,
        name: &str,
        trigger: &str,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<RunReport> {
        let (def, filters, live) = self.prepare(name, trigger).await?;
        self.execute(def, filters, live, progress).await
    }

    /// Starts a run in the background; returns its id.
    pub async fn start(self: &Arc<Self>, name: &str, trigger: &str) -> anyhow::Result<i64> {
        let (def, filters, live) = self.prepare(name, trigger).await?;
        let id = live.run_id;
        let me = self.clone();
        tokio::spawn(async move {
            let name = def.name.clone();
            if let Err(e) = me.execute(def, filters, live, Arc::new(Quiet)).await {
                tracing::error!(mirror.name = %name, error = format!("{e:#}"), "mirror run failed");
            }
        });
        Ok(id)
    }

    /// One run, with live counters while it runs.
    pub async fn report(&self, id: i64) -> berth_storage::Result<Option<RunReport>> {
        let Some(row) = self.records.mirror_run(id).await? else {
            return Ok(None);
        };
        Ok(Some(self.with_live(RunReport::from_row(row))))
    }

    /// Runs, newest first.
    pub async fn runs(
        &self,
        name: Option<&str>,
        limit: i64,
    ) -> berth_storage::Result<Vec<RunReport>> {
        let rows = self.records.mirror_runs(name, limit).await?;
        Ok(rows
            .into_iter()
            .map(|r| self.with_live(RunReport::from_row(r)))
            .collect())
    }

    fn with_live(&self, mut r: RunReport) -> RunReport {
        if r.state != "running" {
            return r;
        }
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = running.get(&r.mirror).filter(|l| l.run_id == r.id) {
            let t = l.totals();
            r.copied = t.copied;
            r.skipped = t.skipped;
            r.failed = t.failed;
            r.bytes = t.bytes;
            r.current = Some(l.current.lock().unwrap_or_else(|p| p.into_inner()).clone());
            r.items = l.items();
        }
        r
    }

    /// Starts scheduled runs when they are due (checked every `tick`).
    pub fn spawn_scheduler(self: &Arc<Self>, tick: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(tick);
            loop {
                t.tick().await;
                if let Err(e) = me.schedule_due().await {
                    tracing::warn!(error = %e, "mirror scheduler");
                }
            }
        })
    }

    async fn schedule_due(self: &Arc<Self>) -> anyhow::Result<()> {
        let now = berth_storage::now_secs();
        for (def, _) in self.list().await? {
            let Some(every) = def
                .schedule
                .as_deref()
                .and_then(|s| def::parse_interval(s).ok())
            else {
                continue;
            };
            if self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&def.name)
            {
                continue;
            }
            let last = self.records.mirror_runs(Some(&def.name), 1).await?;
            let due = last
                .first()
                .is_none_or(|r| now - r.started_at >= every.as_secs() as i64);
            if due {
                match self.start(&def.name, "schedule").await {
                    Ok(id) => {
                        tracing::info!(mirror.name = %def.name, run.id = id, "scheduled mirror run started")
                    }
                    Err(e) => {
                        tracing::warn!(mirror.name = %def.name, error = %e, "scheduled run not started")
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks the `[[mirrors]]` and `[[proxy]]` sections (for `Config::validate`).
pub fn validate_config(mirrors: &[MirrorDef], proxies: &[ProxyDef]) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, m) in mirrors.iter().enumerate() {
        validate_mirror(m)
            .map_err(|e| anyhow::anyhow!("invalid value for key \"mirrors[{i}]\": {e}"))?;
        if !names.insert(&m.name) {
            bail!(
                "invalid value for key \"mirrors[{i}].name\": {:?} is used twice",
                m.name
            );
        }
    }
    for (i, p) in proxies.iter().enumerate() {
        validate_proxy(p)
            .map_err(|e| anyhow::anyhow!("invalid value for key \"proxy[{i}]\": {e}"))?;
    }
    Ok(())
}
