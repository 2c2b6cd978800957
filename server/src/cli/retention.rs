//! `berth retention`: a retention run, in-process on the data directory of
//! `--config`/`--data-dir`, or through a running registry's admin API (`--registry`). A
//! summary per repository, or the whole report with `--json`.

use super::mirror::{Remote, Target};
use anyhow::Context;
use berth_server::config::Config;
use serde_json::{json, Value};
use std::time::Duration;

/// `berth retention [--dry-run] [--json]`.
pub async fn run(t: &Target, dry_run: bool, json: bool) -> anyhow::Result<bool> {
    let (id, report) = match &t.registry {
        None => {
            let mut cfg = Config::load(t.config.as_deref(), true)?;
            if let Some(d) = &t.data_dir {
                cfg.data_dir = d.clone();
            }
            cfg.validate()?;
            let opened = berth_server::open(&cfg).await?;
            let out = opened.registry.run_retention("cli", dry_run).await;
            opened.registry.close().await;
            let (id, r) = out.map_err(|e| anyhow::anyhow!(e.to_string()))?;
            (id, serde_json::to_value(r)?)
        }
        Some(base) => {
            let remote = Remote::new(t, base)?;
            let started = remote
                .send(
                    reqwest::Method::POST,
                    "/berth/v1/retention/runs",
                    Some(&json!({ "dry_run": dry_run })),
                )
                .await?;
            let id = started["id"].as_i64().context("no run id in the answer")?;
            loop {
                let v = remote
                    .call(
                        reqwest::Method::GET,
                        &format!("/berth/v1/retention/runs/{id}"),
                    )
                    .await?;
                match v["state"].as_str() {
                    Some("running") => tokio::time::sleep(Duration::from_millis(200)).await,
                    Some("succeeded") => break (id, v["report"].clone()),
                    state => {
                        let why = v["report"]["error"].as_str().unwrap_or("no report");
                        anyhow::bail!("run {id} {}: {why}", state.unwrap_or("?"));
                    }
                }
            }
        }
    };
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
    let verb = if r["dry_run"].as_bool().unwrap_or(false) {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "retention run {id}: {verb} {} of {} tags in {} ms",
        r["tags_removed"].as_u64().unwrap_or(0),
        r["tags_seen"].as_u64().unwrap_or(0),
        r["duration_ms"].as_u64().unwrap_or(0),
    );
    let Some(repos) = r["repositories"].as_object() else {
        return;
    };
    for (name, x) in repos {
        let list = |k: &str| -> Vec<String> {
            x[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let removed = list("removed");
        let kept = x["kept"].as_object().map_or(0, |k| k.len());
        println!("  {name}: {verb} {}, kept {kept}", removed.len());
        for t in removed {
            println!("    - {t}");
        }
        let changed = list("changed");
        if !changed.is_empty() {
            println!("    left (changed since read): {}", changed.join(", "));
        }
    }
}
