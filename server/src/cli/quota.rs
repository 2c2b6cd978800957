//! `berth quota`: usage per quota, and `recompute`, which counts every quota again from the
//! links and sets the figures beside the running counters. In-process on the data directory
//! of `--config`/`--data-dir`, or through a running registry's admin API (`--registry`).

use super::mirror::{Remote, Target};
use berth_server::config::Config;
use serde_json::{json, Value};

async fn in_process<F, T>(t: &Target, f: F) -> anyhow::Result<Value>
where
    F: AsyncFnOnce(
        &berth_server::registry::Registry,
    ) -> Result<T, berth_server::registry::RegistryError>,
    T: serde::Serialize,
{
    let mut cfg = Config::load(t.config.as_deref(), true)?;
    if let Some(d) = &t.data_dir {
        cfg.data_dir = d.clone();
    }
    cfg.validate()?;
    let opened = berth_server::open(&cfg).await?;
    let out = f(&opened.registry).await;
    opened.registry.close().await;
    let v = out.map_err(|e| anyhow::anyhow!(e.to_string()))?;
    Ok(json!({ "quotas": v }))
}

/// `berth quota status`.
pub async fn status(t: &Target, json_out: bool) -> anyhow::Result<bool> {
    let v = match &t.registry {
        None => in_process(t, async |r| r.quotas().await).await?,
        Some(base) => {
            Remote::new(t, base)?
                .call(reqwest::Method::GET, "/berth/v1/quotas")
                .await?
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    let quotas = v["quotas"].as_array().cloned().unwrap_or_default();
    if quotas.is_empty() {
        println!("no quotas are configured ([[quotas]] in the configuration)");
    }
    for q in quotas {
        let used = q["used"].as_u64().unwrap_or(0);
        let limit = q["limit"].as_u64().unwrap_or(0).max(1);
        println!(
            "{}: {} of {} ({:.1}%), {} blobs",
            q["pattern"].as_str().unwrap_or("?"),
            indicatif::HumanBytes(used),
            indicatif::HumanBytes(limit),
            used as f64 * 100.0 / limit as f64,
            q["blobs"].as_u64().unwrap_or(0),
        );
    }
    Ok(true)
}

/// `berth quota recompute [--fix]`: false (exit 1) when a counter differs and was not fixed.
pub async fn recompute(t: &Target, fix: bool, json_out: bool) -> anyhow::Result<bool> {
    let v = match &t.registry {
        None => in_process(t, async |r| r.quota_recount(fix).await).await?,
        Some(base) => {
            Remote::new(t, base)?
                .send(
                    reqwest::Method::POST,
                    "/berth/v1/quotas/recount",
                    Some(&json!({ "fix": fix })),
                )
                .await?
        }
    };
    let quotas = v["quotas"].as_array().cloned().unwrap_or_default();
    let n = |q: &Value, k: &str| q[k].as_u64().unwrap_or(0);
    let mut ok = true;
    for q in &quotas {
        let same = n(q, "counted") == n(q, "recounted")
            && n(q, "counted_blobs") == n(q, "recounted_blobs");
        ok &= same || q["fixed"].as_bool().unwrap_or(false);
        if !json_out {
            println!(
                "{}: counter {} bytes in {} blobs, recount {} bytes in {} blobs: {}",
                q["pattern"].as_str().unwrap_or("?"),
                n(q, "counted"),
                n(q, "counted_blobs"),
                n(q, "recounted"),
                n(q, "recounted_blobs"),
                if same {
                    "same"
                } else if fix {
                    "DIFFERENT, counter replaced"
                } else {
                    "DIFFERENT (run with --fix to replace the counter)"
                }
            );
        }
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if quotas.is_empty() {
        println!("no quotas are configured ([[quotas]] in the configuration)");
    }
    Ok(ok)
}
