//! `berth mirror run` and `berth mirror status`: against a running registry's admin API
//! (`--registry`), or in-process on the server's `--config`/`--data-dir`. Progress bars on a
//! terminal, plain lines otherwise.

use anyhow::{bail, Context};
use berth_oci::Digest;
use berth_server::config::Config;
use berth_server::mirror::{Mirrors, Progress, RunReport};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the mirrors are.
#[derive(clap::Args)]
pub struct Target {
    /// A running registry to drive through its admin API; without it, the mirror runs
    /// in this process on the data directory of --config/--data-dir.
    #[arg(long)]
    pub registry: Option<String>,
    /// Admin user for --registry.
    #[arg(long, env = "BERTH_USERNAME")]
    pub username: Option<String>,
    /// Its password.
    #[arg(long, env = "BERTH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// TOML configuration file (in-process mode).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (in-process mode).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Progress on a terminal (bars) or as lines.
struct CliProgress {
    tty: bool,
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl CliProgress {
    fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Self {
            tty,
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }
}

fn short(d: &Digest) -> &str {
    let s = d.as_str();
    s.get(..19).unwrap_or(s)
}

impl Progress for CliProgress {
    fn line(&self, s: &str) {
        if self.tty {
            let _ = self.multi.println(s);
        } else {
            println!("{s}");
        }
    }

    fn blob_start(&self, digest: &Digest, size: u64, offset: u64) {
        if !self.tty {
            println!("fetching {digest} ({size} bytes, from byte {offset})");
            return;
        }
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(short(digest).to_owned());
        bar.set_position(offset);
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), bar);
    }

    fn blob_bytes(&self, digest: &Digest, n: u64) {
        if let Some(b) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            b.inc(n);
        }
    }

    fn blob_done(&self, digest: &Digest) {
        if let Some(b) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest)
        {
            b.finish_and_clear();
        }
        if !self.tty {
            println!("fetched {digest}");
        }
    }
}

fn summary(r: &RunReport) {
    println!(
        "run {} of {}: {} (copied {}, skipped {}, failed {}, {} bytes)",
        r.id, r.mirror, r.state, r.copied, r.skipped, r.failed, r.bytes
    );
    for i in r.items.iter().filter(|i| i.outcome == "failed") {
        println!(
            "failed: {}{}: {}",
            i.repository,
            i.tag
                .as_deref()
                .map(|t| format!(":{t}"))
                .unwrap_or_default(),
            i.detail.as_deref().unwrap_or("")
        );
    }
}

async fn open_local(t: &Target) -> anyhow::Result<(Arc<Mirrors>, berth_storage::meta::Meta)> {
    let mut cfg = Config::load(t.config.as_deref(), true)?;
    if let Some(d) = &t.data_dir {
        cfg.data_dir = d.clone();
    }
    cfg.validate()?;
    let berth_server::Opened { registry, records } = berth_server::open(&cfg).await?;
    let m = Mirrors::new(
        registry,
        records.clone(),
        cfg.mirrors.clone(),
        cfg.proxy.clone(),
    )?;
    Ok((Arc::new(m), records))
}

pub(crate) struct Remote {
    base: reqwest::Url,
    http: reqwest::Client,
    user: Option<(String, String)>,
}

impl Remote {
    pub(crate) fn new(t: &Target, base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            base: reqwest::Url::parse(base).with_context(|| format!("--registry {base:?}"))?,
            http: reqwest::Client::new(),
            user: t
                .username
                .clone()
                .map(|u| (u, t.password.clone().unwrap_or_default())),
        })
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(method, path, None).await
    }

    /// A call with a JSON body.
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.base.join(path)?;
        let mut req = self.http.request(method, url.clone());
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some((u, p)) = &self.user {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.with_context(|| format!("{url}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            let msg = body["errors"][0]["message"]
                .as_str()
                .unwrap_or("request failed");
            bail!("{url}: {status}: {msg}");
        }
        Ok(body)
    }
}

/// `berth mirror run <name>`. False when items failed.
pub async fn run(name: &str, t: &Target, json: bool) -> anyhow::Result<bool> {
    let report = match &t.registry {
        None => {
            let (m, meta) = open_local(t).await?;
            let r = m.run(name, "cli", Arc::new(CliProgress::new())).await;
            meta.close().await;
            r?
        }
        Some(base) => {
            let remote = Remote::new(t, base)?;
            let started = remote
                .call(
                    reqwest::Method::POST,
                    &format!("/berth/v1/mirrors/{name}/runs"),
                )
                .await?;
            let id = started["id"].as_i64().context("no run id in the answer")?;
            let tty = std::io::stderr().is_terminal();
            let bar = if tty {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.enable_steady_tick(Duration::from_millis(120));
                Some(b)
            } else {
                if !json {
                    println!("run {id} of {name} started");
                }
                None
            };
            loop {
                let v = remote
                    .call(
                        reqwest::Method::GET,
                        &format!("/berth/v1/mirrors/{name}/runs/{id}"),
                    )
                    .await?;
                let r: RunReport = serde_json::from_value(v)?;
                if r.state != "running" {
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    break r;
                }
                if let Some(b) = &bar {
                    b.set_message(format!(
                        "copied {} skipped {} failed {} {} {}",
                        r.copied,
                        r.skipped,
                        r.failed,
                        indicatif::HumanBytes(r.bytes.max(0) as u64),
                        r.current.as_deref().unwrap_or("")
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        summary(&report);
    }
    if report.failed > 0 {
        bail!("{} item(s) failed", report.failed);
    }
    Ok(true)
}

/// `berth mirror status [name]`.
pub async fn status(name: Option<&str>, t: &Target, json: bool, n: i64) -> anyhow::Result<bool> {
    let runs: Vec<RunReport> = match &t.registry {
        None => {
            let (m, meta) = open_local(t).await?;
            let r = match name {
                Some(n2) => m.runs(Some(n2), n).await,
                None => {
                    let mut out = Vec::new();
                    for (d, _) in m.list().await? {
                        out.extend(m.runs(Some(&d.name), 1).await?);
                    }
                    Ok(out)
                }
            };
            meta.close().await;
            r?
        }
        Some(base) => {
            let remote = Remote::new(t, base)?;
            match name {
                Some(n2) => {
                    let v = remote
                        .call(
                            reqwest::Method::GET,
                            &format!("/berth/v1/mirrors/{n2}/runs?n={n}"),
                        )
                        .await?;
                    serde_json::from_value(v["runs"].clone())?
                }
                None => {
                    let v = remote
                        .call(reqwest::Method::GET, "/berth/v1/mirrors")
                        .await?;
                    v["mirrors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| serde_json::from_value(m["last_run"].clone()).ok())
                        .collect()
                }
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(true);
    }
    println!(
        "{:<20} {:>6} {:<12} {:<9} {:>7} {:>7} {:>6} {:>12}",
        "MIRROR", "RUN", "STATE", "TRIGGER", "COPIED", "SKIPPED", "FAILED", "BYTES"
    );
    for r in &runs {
        println!(
            "{:<20} {:>6} {:<12} {:<9} {:>7} {:>7} {:>6} {:>12}",
            r.mirror, r.id, r.state, r.trigger, r.copied, r.skipped, r.failed, r.bytes
        );
    }
    Ok(true)
}
