//! `berth verify`: queue the checks of a reference, show them, or wait for them in CI.
//!
//! Exit codes of `berth verify wait`: 0 when every required check passed, 1 when one ended
//! without passing (failed, error, or only a simulated pass), 2 on timeout, 3 on usage or
//! connection errors.

use anyhow::{bail, Context};
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where the registry is and who asks.
#[derive(Clone, clap::Args)]
pub struct Conn {
    /// Registry URL.
    #[arg(
        long,
        env = "BERTH_URL",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    pub registry: String,
    #[command(flatten)]
    pub creds: crate::cli::creds::Args,
}

impl Conn {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client {
            s: crate::cli::creds::Session::new(&self.registry, &self.creds)?,
        })
    }
}

struct Client {
    s: crate::cli::creds::Session,
}

fn repo_of(reference: &str) -> &str {
    match reference.split_once('@') {
        Some((r, _)) => r,
        None => match reference.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => r,
            _ => reference,
        },
    }
}

impl Client {
    async fn status(&self, reference: &str) -> anyhow::Result<Value> {
        let mut url = self.s.base.join("/berth/v1/verify/status")?;
        url.query_pairs_mut().append_pair("reference", reference);
        let repo = repo_of(reference);
        self.s
            .send(
                || self.s.http.get(url.clone()),
                repo,
                &format!("repository:{repo}:pull"),
            )
            .await
    }

    async fn queue(&self, reference: &str) -> anyhow::Result<Value> {
        let url = self.s.base.join("/berth/v1/verify/jobs")?;
        let repo = repo_of(reference);
        self.s
            .send(
                || {
                    self.s
                        .http
                        .post(url.clone())
                        .json(&serde_json::json!({ "reference": reference }))
                },
                repo,
                &format!("repository:{repo}:pull,push,verify"),
            )
            .await
    }
}

/// Parses `30m`, `90s`, `500ms`, `2h`, `1h30m` or plain seconds.
pub fn parse_timeout(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total_ms = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        bail!("invalid duration {s:?}: empty");
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            bail!("invalid duration {s:?}: expected a number before {rest:?}");
        }
        let n: u64 = rest[..digits]
            .parse()
            .with_context(|| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => bail!("invalid duration {s:?}: a number without a unit at the end"),
            u => bail!("invalid duration {s:?}: unit {u:?} (use ms, s, m, h, d)"),
        };
        total_ms = n
            .checked_mul(ms)
            .and_then(|v| v.checked_add(total_ms))
            .with_context(|| format!("invalid duration {s:?}: too long"))?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

fn check_line(c: &Value) -> String {
    let p = &c["platform"];
    let mut plat = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("?"),
        p["architecture"].as_str().unwrap_or("?")
    );
    if let Some(v) = p["variant"].as_str() {
        plat.push('/');
        plat.push_str(v);
    }
    if let Some(v) = p["os.version"].as_str() {
        plat.push(' ');
        plat.push_str(v);
    }
    let mut s = format!(
        "  {:<34} {:<8} {:<11} {:<12}",
        plat,
        c["isolation"].as_str().unwrap_or("?"),
        c["host_build"].as_str().unwrap_or("-"),
        c["state"].as_str().unwrap_or("?"),
    );
    if c["simulated"].as_bool() == Some(true) {
        s.push_str(" simulated (does not count)");
    }
    if !c["required"].as_bool().unwrap_or(true) {
        s.push_str(" not required");
    }
    if let Some(e) = c["exit_code"].as_i64() {
        s.push_str(&format!(" exit {e}"));
    }
    if let Some(m) = c["message"].as_str().filter(|m| !m.is_empty()) {
        s.push_str(&format!(" {m}"));
    }
    s
}

fn print_status(st: &Value) {
    println!(
        "{} policy {}: {}/{} required checks passed, {} pending, {} failed",
        st["digest"].as_str().unwrap_or("?"),
        st["policy"].as_str().unwrap_or("(none)"),
        st["passed"],
        st["required"],
        st["pending"],
        st["failed"],
    );
    for c in st["checks"].as_array().into_iter().flatten() {
        println!("{}", check_line(c));
    }
}

fn summary(st: &Value) -> String {
    format!(
        "{}/{} passed, {} pending, {} failed",
        st["passed"], st["required"], st["pending"], st["failed"]
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("berth: {e:#}");
    ExitCode::from(3)
}

/// `berth verify <ref>`: queue every check again.
pub fn queue(conn: &Conn, reference: &str, json: bool) -> ExitCode {
    let r = runtime().and_then(|rt| {
        rt.block_on(async {
            let c = conn.client()?;
            c.queue(reference).await
        })
    });
    match r {
        Ok(v) => {
            if json {
                println!("{v:#}");
            } else {
                let n = v["queued"].as_array().map_or(0, Vec::len);
                println!("{reference}: {n} checks queued");
                print_status(&v["status"]);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `berth verify status <ref>`: exit 0 when every required check passed, 1 otherwise.
pub fn status(conn: &Conn, reference: &str, json: bool) -> ExitCode {
    let r = runtime().and_then(|rt| rt.block_on(async { conn.client()?.status(reference).await }));
    match r {
        Ok(v) => {
            if json {
                println!("{v:#}");
            } else {
                print_status(&v);
            }
            if v["ok"].as_bool() == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(e),
    }
}

/// `berth verify wait <ref> --timeout 30m`: polls until every required check ended.
pub fn wait(conn: &Conn, reference: &str, timeout: Duration, interval: Duration) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    rt.block_on(async {
        let c = match conn.client() {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let start = Instant::now();
        let mut last = String::new();
        let mut errors = 0;
        loop {
            let st = match c.status(reference).await {
                Ok(v) => {
                    errors = 0;
                    v
                }
                Err(e) => {
                    // A registry restart must not fail a CI job: retry a few times.
                    errors += 1;
                    if errors >= 5 {
                        return fail(e);
                    }
                    eprintln!("berth: {e:#} (retrying)");
                    tokio::time::sleep(interval).await;
                    continue;
                }
            };
            let line = summary(&st);
            if line != last {
                println!("[{:>5}s] {reference}: {line}", start.elapsed().as_secs());
                last = line;
            }
            if st["complete"].as_bool() == Some(true) {
                print_status(&st);
                return if st["ok"].as_bool() == Some(true) {
                    println!("{reference}: every required check passed");
                    ExitCode::SUCCESS
                } else {
                    println!("{reference}: verification did not pass");
                    ExitCode::from(1)
                };
            }
            if start.elapsed() >= timeout {
                print_status(&st);
                println!(
                    "{reference}: timed out after {}s with checks pending",
                    timeout.as_secs()
                );
                return ExitCode::from(2);
            }
            let left = timeout.saturating_sub(start.elapsed());
            tokio::time::sleep(interval.min(left)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_timeout("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_timeout("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_timeout("5x").is_err());
        assert!(parse_timeout("").is_err());
        assert!(parse_timeout("5m3").is_err());
    }
}
