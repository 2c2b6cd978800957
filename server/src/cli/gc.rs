//! `berth gc`: a garbage collection run, in-process on the data directory of
//! `--config`/`--data-dir`, or through a running registry's admin API (`--registry`). A
//! progress bar on a terminal; a summary, or the whole report with `--json`.

use super::mirror::{Remote, Target};
use anyhow::Context;
use berth_server::config::Config;
use berth_server::registry::gc::GcMode;
use berth_storage::gc::{Phase, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::time::Duration;

fn phase_name(p: &str) -> &str {
    match p {
        "mark" => "marking repositories",
        "manifests" => "removing manifests",
        "links" => "removing blob links",
        "blobs" => "removing blobs",
        "orphans" => "removing orphans",
        other => other,
    }
}

/// A bar on a terminal, nothing otherwise.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{msg:22} [{bar:40.cyan/blue}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Self(Some(b))
    }

    fn show(&self, phase: &str, done: u64, total: u64) {
        if let Some(b) = &self.0 {
            b.set_message(phase_name(phase).to_owned());
            b.set_length(total);
            b.set_position(done);
        }
    }

    fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Mark => "mark",
        Phase::Manifests => "manifests",
        Phase::Links => "links",
        Phase::Blobs => "blobs",
        Phase::Orphans => "orphans",
    }
}

/// `berth gc [--dry-run] [--json]`.
pub async fn run(t: &Target, mode: GcMode, json: bool) -> anyhow::Result<bool> {
    let dry_run = mode.dry_run;
    let bar = Bar::new();
    let (id, report) = match &t.registry {
        None => {
            let mut cfg = Config::load(t.config.as_deref(), true)?;
            if let Some(d) = &t.data_dir {
                cfg.data_dir = d.clone();
            }
            cfg.validate()?;
            let opened = berth_server::open(&cfg).await?;
            let progress = |p: Progress| bar.show(phase_str(p.phase), p.done, p.total);
            let out = opened.registry.run_gc("cli", mode, &progress).await;
            opened.registry.close().await;
            let (id, r) = out.map_err(|e| anyhow::anyhow!(e.to_string()))?;
            (id, serde_json::to_value(r)?)
        }
        Some(base) => {
            let remote = Remote::new(t, base)?;
            let started = remote
                .send(
                    reqwest::Method::POST,
                    "/berth/v1/gc/runs",
                    Some(&json!({ "dry_run": dry_run, "orphans": mode.orphans })),
                )
                .await?;
            let id = started["id"].as_i64().context("no run id in the answer")?;
            loop {
                let v = remote
                    .call(reqwest::Method::GET, &format!("/berth/v1/gc/runs/{id}"))
                    .await?;
                match v["state"].as_str() {
                    Some("running") => {
                        let p = &v["progress"];
                        bar.show(
                            p["phase"].as_str().unwrap_or("mark"),
                            p["done"].as_u64().unwrap_or(0),
                            p["total"].as_u64().unwrap_or(0),
                        );
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Some("succeeded") => break (id, v["report"].clone()),
                    state => {
                        bar.done();
                        let why = v["report"]["error"].as_str().unwrap_or("no report");
                        anyhow::bail!("run {id} {}: {why}", state.unwrap_or("?"));
                    }
                }
            }
        }
    };
    bar.done();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "id": id, "report": report }))?
        );
    } else {
        summary(id, &report);
    }
    Ok(true)
}

fn summary(id: i64, r: &Value) {
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let verb = if r["dry_run"].as_bool().unwrap_or(false) {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "gc run {id}: {verb} {} manifests, {} blob links, {} blobs ({}) in {} ms; marked {} manifests, {} edges in {} ms",
        n("manifests"),
        n("links"),
        n("blobs"),
        indicatif::HumanBytes(n("bytes")),
        n("duration_ms"),
        n("manifests_seen"),
        n("edges"),
        n("mark_ms"),
    );
    if let Some(o) = r["orphans"].as_object() {
        let m = |k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "orphan pass: listed {} objects; {} unknown to the metadata and older than the grace window ({}), {} removed; {} unknown but younger, left",
            m("listed"),
            m("found"),
            indicatif::HumanBytes(m("bytes")),
            m("removed"),
            m("young"),
        );
    }
    if n("resumed_blobs") > 0 {
        println!(
            "finished removing {} blobs an interrupted run had started on",
            n("resumed_blobs")
        );
    }
    if let Some(repos) = r["repositories"].as_object() {
        for (name, x) in repos {
            println!(
                "  {name}: {} manifests, {} links ({})",
                x["manifests"].as_u64().unwrap_or(0),
                x["links"].as_u64().unwrap_or(0),
                indicatif::HumanBytes(x["link_bytes"].as_u64().unwrap_or(0)),
            );
        }
    }
}
