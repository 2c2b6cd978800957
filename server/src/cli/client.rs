//! The client side of `berth resolve` and `berth inspect`: they ask a running registry's
//! `/berth/v1/` API and print the answer.

use anyhow::Context;
use serde_json::Value;
use std::process::ExitCode;

/// Runs a client future on a small runtime and turns the result into an exit code.
pub fn run(f: impl std::future::Future<Output = anyhow::Result<bool>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `repo:tag` / `repo@digest`.
fn split_ref(r: &str) -> anyhow::Result<(String, String)> {
    if let Some((repo, d)) = r.split_once('@') {
        return Ok((repo.to_owned(), d.to_owned()));
    }
    match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => Ok((repo.to_owned(), tag.to_owned())),
        _ => Ok((r.to_owned(), "latest".to_owned())),
    }
}

/// GET of berth's API with the client credentials (`cli::creds`): pull on the repository.
async fn get_json(
    registry: &str,
    creds: &crate::cli::creds::Args,
    url: reqwest::Url,
    repo: &str,
) -> anyhow::Result<Value> {
    let session = crate::cli::creds::Session::new(registry, creds)?;
    session
        .send(
            || session.http.get(url.clone()),
            repo,
            &format!("repository:{repo}:pull"),
        )
        .await
        .with_context(|| format!("GET {url}"))
}

/// A registry's error answer (the spec's error JSON) as `STATUS CODE: message`.
pub(crate) fn api_error(status: reqwest::StatusCode, body: &Value) -> anyhow::Error {
    let msg = body["errors"][0]["message"]
        .as_str()
        .unwrap_or("request failed");
    let code = body["errors"][0]["code"].as_str().unwrap_or("");
    anyhow::anyhow!("{status} {code}: {msg}")
}

/// `berth resolve`. Succeeds (true) when some manifest is chosen.
pub async fn resolve(
    registry: &str,
    reference: &str,
    platform: &str,
    isolation: &str,
    rule: &str,
    json: bool,
    creds: &crate::cli::creds::Args,
) -> anyhow::Result<bool> {
    isolation
        .parse::<berth_oci::platform::Isolation>()
        .map_err(|e| anyhow::anyhow!("--isolation: {e}"))?;
    rule.parse::<berth_oci::platform::ClientRule>()
        .map_err(|e| anyhow::anyhow!("--rule: {e}"))?;
    let (repo, r) = split_ref(reference)?;
    let mut url = reqwest::Url::parse(registry)?.join("/berth/v1/resolve")?;
    url.query_pairs_mut()
        .append_pair("repository", &repo)
        .append_pair("reference", &r)
        .append_pair("platform", platform)
        .append_pair("isolation", isolation)
        .append_pair("rule", rule);
    let v = get_json(registry, creds, url, &repo).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{repo}:{r} ({}) for {platform} {isolation} [{rule}]",
            v["digest"].as_str().unwrap_or("")
        );
        for c in v["resolution"]["verdicts"].as_array().into_iter().flatten() {
            let mark = if c["rank"] == 0 {
                "=>"
            } else if c["kept"] == true {
                " +"
            } else {
                " -"
            };
            println!(
                "{mark} [{}] {} {}",
                c["index"],
                c["digest"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            );
        }
        match v["chosen"].as_str() {
            Some(d) => {
                let p = &v["resolution"]["chosen"]["platform"];
                let mut plat = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or("?"),
                    p["architecture"].as_str().unwrap_or("?")
                );
                if let Some(var) = p["variant"].as_str().filter(|s| !s.is_empty()) {
                    plat = format!("{plat}/{var}");
                }
                match p["os.version"].as_str().filter(|s| !s.is_empty()) {
                    Some(ver) => println!("chosen: {d} ({plat}, os.version {ver})"),
                    None => println!("chosen: {d} ({plat})"),
                }
            }
            None => println!("chosen: none (no matching manifest)"),
        }
        for f in v["chosen_findings"].as_array().into_iter().flatten() {
            println!(
                "warning: the chosen entry has a finding: {}",
                f.as_str().unwrap_or("")
            );
        }
        if v["resolution"]["process_mismatch"] == true {
            println!("warning: the chosen image cannot run under process isolation on this host");
        }
        for n in v["resolution"]["notes"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or(""));
        }
    }
    Ok(v["chosen"].is_string())
}

/// `berth inspect`.
pub async fn inspect(
    registry: &str,
    reference: &str,
    json: bool,
    creds: &crate::cli::creds::Args,
) -> anyhow::Result<bool> {
    let (repo, r) = split_ref(reference)?;
    let mut url = reqwest::Url::parse(registry)?.join("/berth/v1/inspect")?;
    url.query_pairs_mut()
        .append_pair("repository", &repo)
        .append_pair("reference", &r);
    let v = get_json(registry, creds, url, &repo).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    println!(
        "{repo}:{r} {} {}",
        v["digest"].as_str().unwrap_or(""),
        v["mediaType"].as_str().unwrap_or("")
    );
    println!(
        "{:<4} {:<22} {:<18} {:>12} {:>6}  {:<20} FINDINGS",
        "#", "PLATFORM", "OS.VERSION", "SIZE", "LAYERS", "DIGEST"
    );
    for x in v["variants"].as_array().into_iter().flatten() {
        let p = &x["platform"];
        let plat = format!(
            "{}/{}{}",
            p["os"].as_str().unwrap_or("?"),
            p["architecture"].as_str().unwrap_or("?"),
            p["variant"]
                .as_str()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        );
        let digest = x["digest"].as_str().unwrap_or("");
        let short = digest.get(..19).unwrap_or(digest);
        println!(
            "{:<4} {:<22} {:<18} {:>12} {:>6}  {:<20} {}",
            x["position"]
                .as_i64()
                .map(|p| p.to_string())
                .unwrap_or("-".into()),
            plat,
            p["os.version"].as_str().unwrap_or(""),
            x["size"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or(if x["present"] == false {
                    "absent".into()
                } else {
                    "?".into()
                }),
            x["layers"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            short,
            x["findings"].as_array().map(|f| f.len()).unwrap_or(0)
        );
    }
    for x in v["variants"].as_array().into_iter().flatten() {
        for f in x["findings"].as_array().into_iter().flatten() {
            println!("finding: {}", f.as_str().unwrap_or(""));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(split_ref("a/b:v1").unwrap(), ("a/b".into(), "v1".into()));
        assert_eq!(split_ref("a/b").unwrap(), ("a/b".into(), "latest".into()));
        assert_eq!(
            split_ref("a/b@sha256:x").unwrap(),
            ("a/b".into(), "sha256:x".into())
        );
    }
}
