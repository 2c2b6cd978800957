//! Retention (`[retention]`, docs/LIFECYCLE.md): which tags a run removes, per repository
//! pattern, evaluated on the metadata graph. A run only untags; garbage collection then
//! collects what no tag reaches any more.
//!
//! A tag of a repository that some rule's `pattern` matches is kept when any matching rule
//! keeps it: `keep_last` (the N most recently pushed), `keep_pulled_days` (pulled within D
//! days), `keep_tags` (matching a pattern), `keep_windows_builds` (among the N newest UBRs of
//! a Windows build line of the index it points at). Protected tags (a verify policy's
//! `protected_tags`) and immutable tags are always kept. Repositories no rule matches are
//! left alone. [`plan`] decides, as a pure function; a dry run reports its plan, an applied
//! run removes exactly the planned tags that did not change since they were read.
//!
//! Pull times are counted in memory ([`Registry::record_pull`]) and written in one
//! transaction per flush (every [`PULL_FLUSH`], before each run and at shutdown).

use super::{Registry, RegistryError, Result};
use berth_oci::RepoPattern;
use berth_storage::meta::{RunRow, TagRow};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often recorded pull times are written.
pub const PULL_FLUSH: Duration = Duration::from_secs(30);
/// The lease a run holds (one run at a time across processes sharing the database).
pub const LEASE: &str = "retention";
const LEASE_TTL_SECS: i64 = 600;

/// `[retention]` in the configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Run every this long (`30m`, `6h`, `1d`); unset: only on demand.
    pub schedule: Option<String>,
    /// The rules.
    pub rules: Vec<RetentionRule>,
}

/// One `[[retention.rules]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Repository pattern (`*` within a component, `**` across).
    pub pattern: RepoPattern,
    /// Keep the N most recently pushed tags.
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Keep tags pulled within this many days.
    #[serde(default)]
    pub keep_pulled_days: Option<u32>,
    /// Keep tags matching any of these patterns (`*` wildcards).
    #[serde(default)]
    pub keep_tags: Vec<RepoPattern>,
    /// For tags pointing at an index with Windows entries: keep the tags of the N newest
    /// UBRs (the 4th `os.version` component) of each build line (`10.0.20348`).
    #[serde(default)]
    pub keep_windows_builds: Option<u32>,
}

impl RetentionRule {
    fn keeps_something(&self) -> bool {
        self.keep_last.unwrap_or(0) > 0
            || self.keep_pulled_days.unwrap_or(0) > 0
            || !self.keep_tags.is_empty()
            || self.keep_windows_builds.unwrap_or(0) > 0
    }
}

/// The compiled section.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    cfg: RetentionConfig,
    every: Option<Duration>,
}

impl Rules {
    /// Checks the section: a valid schedule, patterns, and rules that keep something.
    pub fn new(cfg: RetentionConfig) -> anyhow::Result<Self> {
        let every = cfg
            .schedule
            .as_deref()
            .map(|s| {
                crate::mirror::def::parse_interval(s).map_err(|e| anyhow::anyhow!("schedule: {e}"))
            })
            .transpose()?;
        for (i, r) in cfg.rules.iter().enumerate() {
            r.pattern
                .check_repo()
                .map_err(|e| anyhow::anyhow!("rules[{i}].pattern: {e}"))?;
            for (j, t) in r.keep_tags.iter().enumerate() {
                t.check_tag()
                    .map_err(|e| anyhow::anyhow!("rules[{i}].keep_tags[{j}]: {e}"))?;
            }
            if !r.keeps_something() {
                anyhow::bail!(
                    "rules[{i}] (pattern {:?}) keeps no tag, so a run would remove every tag of \
                     the repositories it matches; give keep_last, keep_pulled_days or \
                     keep_windows_builds a value of at least 1, or keep_tags a pattern",
                    r.pattern.to_string()
                );
            }
        }
        Ok(Self { cfg, every })
    }

    /// The schedule's interval, if set.
    pub fn interval(&self) -> Option<Duration> {
        self.every
    }

    /// The rules matching `repo`, with their index in the configuration.
    pub fn for_repo(&self, repo: &str) -> Vec<(usize, &RetentionRule)> {
        self.cfg
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.pattern.matches(repo))
            .collect()
    }
}

/// A Windows build line and update revision, from `os.version` (`10.0.20348.2340`).
fn windows_build(os_version: &str) -> Option<(String, u64)> {
    let parts: Vec<&str> = os_version.split('.').collect();
    if !(3..=4).contains(&parts.len()) || parts.iter().any(|p| p.parse::<u64>().is_err()) {
        return None;
    }
    let ubr = parts.get(3).map_or(Ok(0), |p| p.parse()).ok()?;
    Some((parts[..3].join("."), ubr))
}

/// Why tags are kept and which go, for one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Kept tags, each with every reason that keeps it.
    pub kept: BTreeMap<String, Vec<String>>,
    /// Tags to remove, sorted.
    pub remove: Vec<String>,
}

/// Decides which of `tags` the `rules` (with their configuration index) keep at `now`.
/// `always` names why a tag is never removed (protected, immutable), if it is.
pub fn plan(
    tags: &[TagRow],
    rules: &[(usize, &RetentionRule)],
    now: i64,
    always: &dyn Fn(&str) -> Option<String>,
) -> Decision {
    let mut kept: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut keep = |tag: &str, why: String| kept.entry(tag.to_owned()).or_default().push(why);
    for t in tags {
        if let Some(why) = always(&t.name) {
            keep(&t.name, why);
        }
    }
    // Most recently pushed first; equal times by tag name, greater first.
    let mut by_push: Vec<&TagRow> = tags.iter().collect();
    by_push.sort_by(|a, b| (b.pushed_at, &b.name).cmp(&(a.pushed_at, &a.name)));
    // Build line -> tag -> the newest UBR of that line in the tag's index.
    let mut lines: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
    for t in tags {
        for (line, ubr) in t.windows_versions.iter().filter_map(|v| windows_build(v)) {
            let e = lines.entry(line).or_default().entry(&t.name).or_insert(ubr);
            *e = (*e).max(ubr);
        }
    }
    for &(i, r) in rules {
        if let Some(n) = r.keep_last {
            for t in by_push.iter().take(n as usize) {
                keep(&t.name, format!("rules[{i}].keep_last = {n}"));
            }
        }
        if let Some(d) = r.keep_pulled_days {
            let since = now - i64::from(d) * 86_400;
            for t in tags {
                if t.pulled_at.is_some_and(|p| p >= since) {
                    keep(&t.name, format!("rules[{i}].keep_pulled_days = {d}"));
                }
            }
        }
        for p in &r.keep_tags {
            for t in tags.iter().filter(|t| p.matches(&t.name)) {
                keep(&t.name, format!("rules[{i}].keep_tags {:?}", p.to_string()));
            }
        }
        if let Some(n) = r.keep_windows_builds {
            for (line, by_tag) in &lines {
                let newest: BTreeSet<u64> = by_tag.values().copied().collect();
                let cut: BTreeSet<u64> = newest.iter().rev().take(n as usize).copied().collect();
                for (tag, ubr) in by_tag {
                    if cut.contains(ubr) {
                        keep(
                            tag,
                            format!("rules[{i}].keep_windows_builds = {n}: {line}.{ubr}"),
                        );
                    }
                }
            }
        }
    }
    let mut remove: Vec<String> = tags
        .iter()
        .filter(|t| !kept.contains_key(&t.name))
        .map(|t| t.name.clone())
        .collect();
    remove.sort();
    Decision { kept, remove }
}

/// One repository's part of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoReport {
    /// Tags removed (in a dry run: that would be).
    pub removed: Vec<String>,
    /// Kept tags, with the rules that keep each.
    pub kept: BTreeMap<String, Vec<String>>,
    /// Planned for removal but pushed again or moved since they were read: left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Unix seconds.
    pub started_at: i64,
    /// Whole run, milliseconds.
    pub duration_ms: u64,
    /// Tags read in the repositories rules match.
    pub tags_seen: u64,
    /// Tags removed.
    pub tags_removed: u64,
    /// Per repository a rule matches.
    pub repositories: BTreeMap<String, RepoReport>,
}

/// A run as the API and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionRun {
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
    /// The report, once finished.
    pub report: Option<serde_json::Value>,
}

impl From<RunRow> for RetentionRun {
    fn from(r: RunRow) -> Self {
        Self {
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
}

/// The registry's retention state: pulls not yet written, the run in progress.
#[derive(Default)]
pub(super) struct RetentionState {
    pulls: Mutex<HashMap<(String, String), i64>>,
    running: Mutex<Option<i64>>,
}

impl Registry {
    /// Notes that `tag` of `repo` was pulled now (written at the next flush).
    pub(super) fn record_pull(&self, repo: &str, tag: &str) {
        let now = berth_storage::now_secs();
        let mut p = self
            .retention
            .pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        p.insert((repo.to_owned(), tag.to_owned()), now);
    }

    /// Writes the pull times recorded since the last flush, in one transaction. On failure
    /// they are kept for the next flush.
    pub async fn flush_pulls(&self) -> Result<usize> {
        let batch: Vec<(String, String, i64)> = {
            let mut p = self
                .retention
                .pulls
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            p.drain().map(|((r, t), at)| (r, t, at)).collect()
        };
        if let Err(e) = self.meta.record_pulls(&batch).await {
            let mut p = self
                .retention
                .pulls
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (r, t, at) in batch {
                let e = p.entry((r, t)).or_insert(at);
                *e = (*e).max(at);
            }
            return Err(e.into());
        }
        Ok(batch.len())
    }

    /// Spawns the periodic pull-time flush.
    pub fn spawn_pull_flush(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PULL_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.flush_pulls().await {
                    tracing::warn!(error = %e, "could not write pull times");
                }
            }
        })
    }

    /// Why `tag` of `repo` is never removed by retention, if it is not.
    fn always_kept(&self, repo: &str, tag: &str) -> Option<String> {
        if let Some(rule) = self.settings.immutable.rule_for(repo, tag) {
            return Some(format!("immutable ({rule})"));
        }
        self.verify_policy(repo)
            .filter(|p| p.protected_tags.iter().any(|t| t.matches(tag)))
            .map(|p| format!("protected (verify policy {:?})", p.name))
    }

    /// Records a run and starts it in the background. A conflict while one runs.
    pub async fn start_retention(
        self: &std::sync::Arc<Self>,
        trigger: &str,
        dry_run: bool,
    ) -> Result<i64> {
        let id = self.open_retention_run(trigger, dry_run).await?;
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.execute_retention(id, dry_run).await;
        });
        Ok(id)
    }

    /// Runs retention now and waits for it (the CLI's in-process mode, the schedule).
    pub async fn run_retention(&self, trigger: &str, dry_run: bool) -> Result<(i64, Report)> {
        let id = self.open_retention_run(trigger, dry_run).await?;
        let r = self.execute_retention(id, dry_run).await?;
        Ok((id, r))
    }

    async fn open_retention_run(&self, trigger: &str, dry_run: bool) -> Result<i64> {
        {
            let mut running = self
                .retention
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(id) = *running {
                return Err(RegistryError::Conflict(format!(
                    "retention run {id} is in progress"
                )));
            }
            *running = Some(0);
        }
        if let Some(until) = self.meta.lease_held_until(LEASE).await? {
            *self
                .retention
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            return Err(RegistryError::Conflict(format!(
                "a retention run is in progress elsewhere (its lease runs for {} more seconds)",
                (until - berth_storage::now_secs()).max(0)
            )));
        }
        match self
            .meta
            .run_start(berth_storage::meta::RunKind::Retention, trigger, dry_run)
            .await
        {
            Ok(id) => {
                *self
                    .retention
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(id);
                Ok(id)
            }
            Err(e) => {
                *self
                    .retention
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                Err(e.into())
            }
        }
    }

    async fn execute_retention(&self, id: i64, dry_run: bool) -> Result<Report> {
        let holder = format!("{}:run-{id}", std::process::id());
        let out = async {
            if !self
                .meta
                .acquire_lease(LEASE, &holder, LEASE_TTL_SECS)
                .await?
            {
                return Err(RegistryError::Conflict(
                    "a retention run is in progress elsewhere".into(),
                ));
            }
            // Runs left `running` by a process that died (this one is the only live run).
            self.meta
                .runs_interrupted(berth_storage::meta::RunKind::Retention, id)
                .await?;
            let r = self.retention_pass(dry_run).await;
            if let Err(e) = self.meta.release_lease(LEASE, &holder).await {
                tracing::warn!(error = %e, "could not release the retention lease");
            }
            r
        }
        .await;
        self.cache.invalidate();
        *self
            .retention
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        match out {
            Ok(report) => {
                let json = serde_json::to_string(&report).unwrap_or_default();
                self.meta
                    .run_finish(
                        berth_storage::meta::RunKind::Retention,
                        id,
                        "succeeded",
                        &json,
                    )
                    .await?;
                tracing::info!(
                    retention.run = id,
                    dry_run,
                    tags_seen = report.tags_seen,
                    tags_removed = report.tags_removed,
                    duration_ms = report.duration_ms,
                    "retention finished"
                );
                Ok(report)
            }
            Err(e) => {
                let json = serde_json::json!({ "error": e.to_string() }).to_string();
                if let Err(e2) = self
                    .meta
                    .run_finish(berth_storage::meta::RunKind::Retention, id, "failed", &json)
                    .await
                {
                    tracing::warn!(error = %e2, "could not record the retention run's failure");
                }
                tracing::error!(retention.run = id, error = %e, "retention failed");
                Err(e)
            }
        }
    }

    /// One pass over every repository a rule matches.
    async fn retention_pass(&self, dry_run: bool) -> Result<Report> {
        let started = Instant::now();
        if let Err(e) = self.flush_pulls().await {
            tracing::warn!(error = %e, "could not write pull times before retention");
        }
        let now = berth_storage::now_secs();
        let mut report = Report {
            dry_run,
            started_at: now,
            ..Default::default()
        };
        for (repo_id, repo) in self.meta.gc_repositories().await? {
            let rules = self.settings.retention.for_repo(&repo);
            if rules.is_empty() {
                continue;
            }
            let tags = self.meta.retention_tags(repo_id).await?;
            let always = |t: &str| self.always_kept(&repo, t);
            let d = plan(&tags, &rules, now, &always);
            report.tags_seen += tags.len() as u64;
            let mut r = RepoReport {
                kept: d.kept,
                ..Default::default()
            };
            if dry_run {
                r.removed = d.remove;
            } else if !d.remove.is_empty() {
                let planned: Vec<(String, berth_oci::Digest, i64)> = tags
                    .iter()
                    .filter(|t| d.remove.binary_search(&t.name).is_ok())
                    .map(|t| (t.name.clone(), t.digest.clone(), t.pushed_at))
                    .collect();
                let immutable = |t: &str| self.settings.immutable.rule_for(&repo, t);
                r.removed = self
                    .meta
                    .retention_untag(repo_id, &planned, &immutable)
                    .await?;
                r.removed.sort();
                r.changed = d
                    .remove
                    .into_iter()
                    .filter(|t| r.removed.binary_search(t).is_err())
                    .collect();
                tracing::info!(repo.name = %repo, tags = ?r.removed, "retention removed tags");
            }
            report.tags_removed += r.removed.len() as u64;
            report.repositories.insert(repo, r);
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Past runs, newest first.
    pub async fn retention_runs(&self, limit: i64) -> Result<Vec<RetentionRun>> {
        Ok(self
            .meta
            .runs(berth_storage::meta::RunKind::Retention, limit)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// One run.
    pub async fn retention_run(&self, id: i64) -> Result<Option<RetentionRun>> {
        Ok(self
            .meta
            .run(berth_storage::meta::RunKind::Retention, id)
            .await?
            .map(Into::into))
    }

    /// Spawns the scheduled runs, if `[retention] schedule` is set.
    pub fn spawn_retention_schedule(
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
                if let Err(e) = me.run_retention("schedule", false).await {
                    tracing::warn!(error = %e, "scheduled retention did not run");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{test_registry_with, PutMode};
    use berth_oci::{Digest, Reference};

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000 * DAY;

    fn tag(name: &str, pushed_days_ago: i64, pulled_days_ago: Option<i64>, win: &[&str]) -> TagRow {
        TagRow {
            name: name.into(),
            digest: Digest::sha256(name.as_bytes()),
            pushed_at: NOW - pushed_days_ago * DAY,
            pulled_at: pulled_days_ago.map(|d| NOW - d * DAY),
            windows_versions: win.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rule(toml_text: &str) -> RetentionRule {
        toml::from_str(&format!("pattern = \"**\"\n{toml_text}")).expect("rule")
    }

    /// A planner case: its name, the tags, the rules, the tags kept as protected or
    /// immutable, and the tags the plan must remove.
    type Case = (
        &'static str,
        Vec<TagRow>,
        Vec<&'static str>,
        Vec<&'static str>,
        Vec<&'static str>,
    );

    #[test]
    fn plans() {
        let history = || {
            vec![
                tag("a", 5, None, &[]),
                tag("b", 4, Some(1), &[]),
                tag("c", 3, Some(40), &[]),
                tag("d", 2, None, &[]),
                tag("v1.0", 9, None, &[]),
            ]
        };
        // A mirrored servercore: one tag per monthly update, per build line, plus a
        // multi-line tag and `ltsc2022` moving along.
        let servercore = || {
            vec![
                tag("ltsc2019-2023-10", 60, None, &["10.0.17763.4974"]),
                tag("ltsc2019-2023-11", 30, None, &["10.0.17763.5122"]),
                tag("ltsc2019-2023-12", 1, None, &["10.0.17763.5206"]),
                tag("ltsc2022-2023-10", 60, None, &["10.0.20348.2031"]),
                tag("ltsc2022-2023-11", 30, None, &["10.0.20348.2113"]),
                tag("ltsc2022-2023-12", 1, None, &["10.0.20348.2159"]),
                tag("ltsc2022", 1, None, &["10.0.20348.2159"]),
                tag(
                    "multi-2023-10",
                    60,
                    None,
                    &["10.0.17763.4974", "10.0.20348.2031"],
                ),
                tag(
                    "ltsc2025-2024-11",
                    2,
                    None,
                    &["10.0.26100.2314", "10.0.26100.2314"],
                ),
                tag("linux", 90, None, &[]),
                tag("odd", 90, None, &["10.0", "x.y.z.w"]),
            ]
        };
        let cases: Vec<Case> = vec![
            (
                "keep_last",
                history(),
                vec!["keep_last = 2"],
                vec![],
                vec!["a", "b", "v1.0"],
            ),
            (
                "keep_last beyond",
                history(),
                vec!["keep_last = 10"],
                vec![],
                vec![],
            ),
            (
                "pulled",
                history(),
                vec!["keep_pulled_days = 7"],
                vec![],
                vec!["a", "c", "d", "v1.0"],
            ),
            (
                "pulled long",
                history(),
                vec!["keep_pulled_days = 40"],
                vec![],
                vec!["a", "d", "v1.0"],
            ),
            (
                "keep_tags",
                history(),
                vec!["keep_tags = [\"v*\", \"a\"]"],
                vec![],
                vec!["b", "c", "d"],
            ),
            (
                "any rule keeps",
                history(),
                vec![
                    "keep_last = 1",
                    "keep_tags = [\"v*\"]\nkeep_pulled_days = 2",
                ],
                vec![],
                vec!["a", "c"],
            ),
            (
                "always kept",
                history(),
                vec!["keep_last = 1"],
                vec!["a", "c"],
                vec!["b", "v1.0"],
            ),
            (
                "equal push times: greater name first",
                vec![
                    tag("x", 1, None, &[]),
                    tag("y", 1, None, &[]),
                    tag("z", 1, None, &[]),
                ],
                vec!["keep_last = 2"],
                vec![],
                vec!["x"],
            ),
            (
                "windows newest 2 per line",
                servercore(),
                vec!["keep_windows_builds = 2"],
                vec![],
                vec![
                    "ltsc2019-2023-10",
                    "ltsc2022-2023-10",
                    "linux",
                    "multi-2023-10",
                    "odd",
                ],
            ),
            (
                "windows newest 1 per line; equal UBRs are one build",
                servercore(),
                vec!["keep_windows_builds = 1"],
                vec![],
                vec![
                    "linux",
                    "ltsc2019-2023-10",
                    "ltsc2019-2023-11",
                    "ltsc2022-2023-10",
                    "ltsc2022-2023-11",
                    "multi-2023-10",
                    "odd",
                ],
            ),
            (
                "windows and keep_last",
                servercore(),
                vec!["keep_windows_builds = 1\nkeep_last = 1"],
                vec![],
                vec![
                    "linux",
                    "ltsc2019-2023-10",
                    "ltsc2019-2023-11",
                    "ltsc2022-2023-10",
                    "ltsc2022-2023-11",
                    "multi-2023-10",
                    "odd",
                ],
            ),
            ("no tags", vec![], vec!["keep_last = 1"], vec![], vec![]),
        ];
        for (name, tags, rules, always, want) in cases {
            let rules: Vec<RetentionRule> = rules.iter().map(|r| rule(r)).collect();
            let indexed: Vec<(usize, &RetentionRule)> = rules.iter().enumerate().collect();
            let always_fn = |t: &str| always.contains(&t).then(|| "protected".to_owned());
            let d = plan(&tags, &indexed, NOW, &always_fn);
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(d.remove, want, "{name}");
            // Every tag is either kept, with a reason, or removed.
            for t in &tags {
                assert_ne!(
                    d.kept.contains_key(&t.name),
                    d.remove.contains(&t.name),
                    "{name}: {}",
                    t.name
                );
            }
        }
        // The reasons name the rule and what kept the tag.
        let rules = [rule("keep_windows_builds = 1"), rule("keep_last = 1")];
        let indexed: Vec<(usize, &RetentionRule)> = rules.iter().enumerate().collect();
        let d = plan(&servercore(), &indexed, NOW, &|_| None);
        assert_eq!(
            d.kept["ltsc2022-2023-12"],
            vec![
                "rules[0].keep_windows_builds = 1: 10.0.20348.2159",
                "rules[1].keep_last = 1"
            ]
        );
        assert_eq!(
            d.kept["ltsc2019-2023-12"],
            vec!["rules[0].keep_windows_builds = 1: 10.0.17763.5206"]
        );
    }

    #[test]
    fn bad_rules_are_named() {
        for (bad, want) in [
            ("[[rules]]\nkeep_last = 3\n", "pattern"),
            (
                "[[rules]]\npattern = \"a/**\"\nkeep_last = 0\n",
                "keeps no tag",
            ),
            ("[[rules]]\npattern = \"a/**\"\n", "keeps no tag"),
            (
                "[[rules]]\npattern = \"a/**\"\nkeep_lats = 3\n",
                "keep_lats",
            ),
            (
                "[[rules]]\npattern = \"a/[b]\"\nkeep_last = 3\n",
                "rules[0].pattern",
            ),
            (
                "[[rules]]\npattern = \"a\"\nkeep_tags = [\"a/b\"]\n",
                "keep_tags[0]",
            ),
            ("schedule = \"soon\"\n", "schedule"),
            ("schedule = \"0h\"\n", "schedule"),
            ("[[rules]]\npattern = \"a\"\nkeep_last = -1\n", "keep_last"),
        ] {
            let e = toml::from_str::<RetentionConfig>(bad)
                .map_err(anyhow::Error::from)
                .and_then(Rules::new)
                .expect_err(bad);
            let e = format!("{e:#}");
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let ok: RetentionConfig = toml::from_str(
            "schedule = \"6h\"\n[[rules]]\npattern = \"a/**\"\nkeep_last = 0\nkeep_tags = [\"prod\"]\n",
        )
        .expect("parses");
        assert_eq!(
            Rules::new(ok).expect("valid").interval(),
            Some(Duration::from_secs(6 * 3600))
        );
    }

    /// A small deterministic generator (splitmix64), so a failing case can be replayed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn maybe(&mut self, n: u64) -> Option<u32> {
            (self.below(2) == 0).then(|| self.below(n) as u32)
        }
    }

    fn image(config: &Digest, n: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config, "size": 2
            },
            "layers": [],
            "annotations": { "n": n.to_string() }
        }))
        .expect("json")
    }

    fn windows_index(children: &[(Digest, usize, String)]) -> Vec<u8> {
        let manifests: Vec<_> = children
            .iter()
            .map(|(d, len, v)| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": d, "size": len,
                    "platform": { "os": "windows", "architecture": "amd64", "os.version": v }
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests
        }))
        .expect("json")
    }

    /// The oracle: a tag stays iff it is immutable, or some rule keeps it, computed
    /// tag by tag, the slow way.
    fn oracle(tags: &[TagRow], rules: &[RetentionRule], now: i64) -> Vec<String> {
        let mut out = Vec::new();
        for t in tags {
            let mut keep = t.name.starts_with("rel-");
            for r in rules {
                if let Some(n) = r.keep_last {
                    let newer = tags
                        .iter()
                        .filter(|o| (o.pushed_at, &o.name) > (t.pushed_at, &t.name))
                        .count();
                    keep |= newer < n as usize;
                }
                if let Some(d) = r.keep_pulled_days {
                    keep |= t.pulled_at.is_some_and(|p| p >= now - i64::from(d) * DAY);
                }
                keep |= r.keep_tags.iter().any(|p| p.matches(&t.name));
                if let Some(n) = r.keep_windows_builds {
                    for v in &t.windows_versions {
                        let Some((line, _)) = windows_build(v) else {
                            continue;
                        };
                        let best = |x: &TagRow| {
                            x.windows_versions
                                .iter()
                                .filter_map(|v| windows_build(v))
                                .filter(|(l, _)| *l == line)
                                .map(|(_, u)| u)
                                .max()
                        };
                        let mine = best(t).unwrap_or(0);
                        let newer: BTreeSet<u64> =
                            tags.iter().filter_map(best).filter(|u| *u > mine).collect();
                        keep |= newer.len() < n as usize;
                    }
                }
            }
            if !keep {
                out.push(t.name.clone());
            }
        }
        out
    }

    /// Over randomised tag histories (pushes, moves, pull and push times, Windows indexes
    /// of several build lines, immutable tags) and rules: the dry run lists exactly what the
    /// applied run then removes, that is what the oracle says, and nothing else goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dry_run_lists_exactly_what_the_applied_run_removes() {
        let lines = ["10.0.17763", "10.0.20348", "10.0.26100"];
        for case in 0..100u64 {
            let mut rng = Rng(case);
            let mut rules = Vec::new();
            for _ in 0..=rng.below(2) {
                let mut r = RetentionRule {
                    pattern: RepoPattern::new("app/**"),
                    keep_last: rng.maybe(6),
                    keep_pulled_days: rng.maybe(60),
                    keep_tags: if rng.below(3) == 0 {
                        vec![RepoPattern::new("t1*")]
                    } else {
                        vec![]
                    },
                    keep_windows_builds: rng.maybe(4),
                };
                if !r.keeps_something() {
                    r.keep_last = Some(1);
                }
                rules.push(r);
            }
            let cfg_rules = rules.clone();
            let (_dir, reg) = test_registry_with(move |c| {
                c.retention.rules = cfg_rules;
                c.tags.immutable = vec![crate::registry::immutable::ImmutableRule {
                    pattern: RepoPattern::new("app/**"),
                    tags: vec![RepoPattern::new("rel-*")],
                }];
            })
            .await;
            let repo = "app/x";
            let other = "other/x";
            let config = Digest::sha256(b"{}");
            // Manifests: images, and Windows indexes over some of them.
            let mut targets: Vec<Vec<u8>> = Vec::new();
            let mut images = Vec::new();
            for n in 0..4 + rng.below(4) {
                let body = image(&config, case * 100 + n);
                let d = reg
                    .put_manifest(
                        repo,
                        &Reference::Digest(Digest::sha256(&body)),
                        None,
                        &body,
                        &[],
                        PutMode::CLIENT,
                    )
                    .await
                    .expect("image")
                    .digest;
                images.push((d, body.len()));
                targets.push(body);
            }
            for _ in 0..rng.below(6) {
                let children: Vec<(Digest, usize, String)> = (0..1 + rng.below(3))
                    .map(|_| {
                        let (d, len) = images[rng.below(images.len() as u64) as usize].clone();
                        let v = format!("{}.{}", lines[rng.below(3) as usize], 1000 + rng.below(8));
                        (d, len, v)
                    })
                    .collect();
                targets.push(windows_index(&children));
            }
            let names: Vec<String> = (0..1 + rng.below(12))
                .map(|i| {
                    if rng.below(5) == 0 {
                        format!("rel-{i}")
                    } else {
                        format!("t{i}")
                    }
                })
                .collect();
            for name in &names {
                // Pushed once or moved a few times; immutable tags refuse the moves.
                for _ in 0..1 + rng.below(3) {
                    let body = &targets[rng.below(targets.len() as u64) as usize];
                    let r = Reference::Tag(name.parse().expect("tag"));
                    let ct = if body.windows(5).any(|w| w == b"index") {
                        Some("application/vnd.oci.image.index.v1+json")
                    } else {
                        None
                    };
                    match reg
                        .put_manifest(repo, &r, ct, body, &[], PutMode::CLIENT)
                        .await
                    {
                        Ok(_) | Err(RegistryError::Immutable { .. }) => {}
                        Err(e) => panic!("case {case}: push {name}: {e}"),
                    }
                }
                let pushed = NOW - rng.below(100) as i64 * DAY / 2;
                // An hour off any day boundary: the runs' clock moves on while they run.
                let pulled =
                    (rng.below(2) == 0).then(|| NOW - rng.below(100) as i64 * DAY / 2 - 3600);
                reg.meta
                    .set_tag_times(repo, name, pushed, pulled)
                    .await
                    .expect("times");
            }
            // A repository no rule matches is left alone.
            let body = image(&config, 7);
            reg.put_manifest(
                other,
                &Reference::Tag("old".parse().expect("tag")),
                None,
                &body,
                &[],
                PutMode::CLIENT,
            )
            .await
            .expect("other");
            reg.meta
                .set_tag_times(other, "old", 0, None)
                .await
                .expect("times");

            let repo_id = reg
                .meta
                .gc_repositories()
                .await
                .expect("repos")
                .into_iter()
                .find(|(_, n)| n == repo)
                .expect("repo")
                .0;
            let before = reg.meta.retention_tags(repo_id).await.expect("tags");
            // The runs judge "pulled within D days" against the clock; the history is
            // relative to NOW, so shift it to now.
            let shift = berth_storage::now_secs() - NOW;
            for t in &before {
                reg.meta
                    .set_tag_times(
                        repo,
                        &t.name,
                        t.pushed_at + shift,
                        t.pulled_at.map(|p| p + shift),
                    )
                    .await
                    .expect("times");
            }
            let want = oracle(&before, &rules, NOW);
            let (_, dry) = reg.run_retention("test", true).await.expect("dry run");
            let (_, applied) = reg.run_retention("test", false).await.expect("applied run");
            let listed = &dry.repositories[repo].removed;
            let removed = &applied.repositories[repo].removed;
            assert_eq!(
                listed, removed,
                "case {case}: dry run and applied run differ"
            );
            assert_eq!(
                removed, &want,
                "case {case}: not what the rules say; rules {rules:?}, tags {before:?}"
            );
            assert!(applied.repositories[repo].changed.is_empty(), "case {case}");
            assert!(!applied.repositories.contains_key(other), "case {case}");
            let left: Vec<String> = reg
                .meta
                .retention_tags(repo_id)
                .await
                .expect("tags")
                .into_iter()
                .map(|t| t.name)
                .collect();
            let expect_left: Vec<String> = before
                .iter()
                .map(|t| t.name.clone())
                .filter(|n| !removed.contains(n))
                .collect();
            assert_eq!(left, expect_left, "case {case}");
            assert!(reg.current_tag(other, "old").await.expect("tag").is_some());
            reg.close().await;
        }
    }

    /// Pulls are counted in memory, not written one by one: nothing reaches the database
    /// until a flush, and a run flushes first, so a tag pulled a moment ago is kept.
    #[tokio::test]
    async fn pull_times_are_batched_and_keep_pulled_tags() {
        let (_dir, reg) = test_registry_with(|c| {
            c.retention.rules = vec![RetentionRule {
                pattern: RepoPattern::new("**"),
                keep_last: None,
                keep_pulled_days: Some(1),
                keep_tags: vec![],
                keep_windows_builds: None,
            }];
        })
        .await;
        let config = Digest::sha256(b"{}");
        for (n, t) in ["pulled", "idle"].iter().enumerate() {
            let body = image(&config, n as u64);
            reg.put_manifest(
                "a/b",
                &Reference::Tag(t.parse().expect("tag")),
                None,
                &body,
                &[],
                PutMode::CLIENT,
            )
            .await
            .expect("push");
        }
        for _ in 0..100 {
            reg.pull_manifest(
                "a/b",
                &Reference::Tag("pulled".parse().expect("tag")),
                &Default::default(),
            )
            .await
            .expect("pull");
        }
        let id = reg.meta.gc_repositories().await.expect("repos")[0].0;
        let rows = reg.meta.retention_tags(id).await.expect("tags");
        assert!(
            rows.iter().all(|t| t.pulled_at.is_none()),
            "written per pull: {rows:?}"
        );
        let (_, r) = reg.run_retention("test", false).await.expect("run");
        assert_eq!(r.repositories["a/b"].removed, vec!["idle"]);
        let rows = reg.meta.retention_tags(id).await.expect("tags");
        assert_eq!(rows.len(), 1);
        assert!(rows[0].pulled_at.is_some());
    }
}
