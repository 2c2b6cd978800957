//! `berth verify`: queue the checks of a reference, show them, or wait for them in CI.
//!
//! Exit codes of `berth verify wait`: 0 when every required check passed, 1 when one ended
//! without passing (failed, error, or only a simulated pass), 2 on timeout, 3 on usage or
//! connection errors.

use anyhow::{bail, Context};
use berth_oci::worker_protocol::build_of;
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

    /// Job `id`; `repo` (when the caller knows it) names the pull scope a token is asked for.
    async fn job(&self, id: i64, repo: Option<&str>) -> anyhow::Result<Value> {
        let url = self.s.base.join(&format!("/berth/v1/verify/jobs/{id}"))?;
        let (name, scope) = match repo {
            Some(r) => (r.to_owned(), format!("repository:{r}:pull")),
            None => (format!("job {id}"), String::new()),
        };
        self.s
            .send(|| self.s.http.get(url.clone()), &name, &scope)
            .await
    }

    async fn workers(&self) -> anyhow::Result<Value> {
        let url = self.s.base.join("/berth/v1/verify/workers")?;
        self.s
            .send(|| self.s.http.get(url.clone()), "the worker list", "")
            .await
    }

    /// Adds `cause` (the first meaningful line of the job's log tail) to every check that
    /// ended without passing, so the generic message is not all a person sees.
    async fn add_causes(&self, st: &mut Value, reference: &str) {
        let Some(checks) = st["checks"].as_array_mut() else {
            return;
        };
        for c in checks {
            if !matches!(c["state"].as_str(), Some("failed" | "error")) {
                continue;
            }
            let Some(id) = c["job"].as_i64() else {
                continue;
            };
            if let Ok(j) = self.job(id, Some(repo_of(reference))).await {
                if let Some(cause) = cause_line(j["log_tail"].as_str().unwrap_or("")) {
                    c["cause"] = Value::String(cause);
                }
            }
        }
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

/// The first line of a log tail that says what went wrong: a line naming an error (runc's
/// `msg="..."` unwrapped), else the last non-empty line.
pub fn cause_line(log: &str) -> Option<String> {
    const MARKS: [&str; 7] = [
        "no such file",
        "not found",
        "permission denied",
        "exec format error",
        "exec:",
        "error",
        "fail",
    ];
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pick = MARKS
        .iter()
        .find_map(|m| lines.iter().find(|l| l.to_ascii_lowercase().contains(m)))
        .or(lines.last())?;
    let mut line = match pick.split_once("msg=\"") {
        Some((_, rest)) => rest
            .rsplit_once('"')
            .map_or(rest, |(m, _)| m)
            .replace("\\\"", "\""),
        None => (*pick).to_owned(),
    };
    if line.chars().count() > 300 {
        line = line.chars().take(300).collect::<String>() + "…";
    }
    Some(line)
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
    if let Some(e) = c["previous_exit_code"].as_i64() {
        s.push_str(&format!(" (previous attempt: exit {e})"));
    }
    if let Some(m) = c["message"].as_str().filter(|m| !m.is_empty()) {
        s.push_str(&format!(" {m}"));
    }
    if let Some(m) = c["cause"].as_str() {
        s.push_str(&format!("\n      cause: {m}"));
    }
    s
}

/// `os/arch` (and the host build on Windows) of every required, unfinished check that no
/// registered worker can run.
fn unserved(st: &Value, workers: &Value) -> Vec<String> {
    let ws: Vec<&Value> = workers["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut out = Vec::new();
    for c in st["checks"].as_array().into_iter().flatten() {
        if !c["required"].as_bool().unwrap_or(true)
            || !matches!(c["state"].as_str(), Some("queued" | "missing"))
        {
            continue;
        }
        let (os, arch) = (
            c["platform"]["os"].as_str().unwrap_or("?"),
            c["platform"]["architecture"].as_str().unwrap_or("?"),
        );
        let build = c["host_build"].as_str();
        let served = ws.iter().any(|w| {
            let p = &w["platform"];
            p["os"].as_str() == Some(os)
                && p["architecture"].as_str() == Some(arch)
                && build.is_none_or(|b| {
                    p["os.version"].as_str().and_then(build_of).as_deref() == Some(b)
                })
        });
        let what = match build {
            Some(b) => format!("{os}/{arch} host build {b}"),
            None => format!("{os}/{arch}"),
        };
        if !served && !out.contains(&what) {
            out.push(what);
        }
    }
    out
}

fn warn_unserved(missing: &[String]) {
    for m in missing {
        eprintln!("berth: no worker registered for {m}: its checks cannot run until one registers");
    }
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
    let r = runtime().and_then(|rt| {
        rt.block_on(async {
            let c = conn.client()?;
            let mut st = c.status(reference).await?;
            c.add_causes(&mut st, reference).await;
            Ok(st)
        })
    });
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
        let mut warned = false;
        loop {
            let mut st = match c.status(reference).await {
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
            // Said at once when no registered worker can run a required check (the wait would
            // otherwise run out its timeout in silence), and again at the timeout.
            let unserved_now = if !warned || start.elapsed() >= timeout {
                match c.workers().await {
                    Ok(w) => unserved(&st, &w),
                    Err(_) => Vec::new(),
                }
            } else {
                Vec::new()
            };
            if !warned {
                warn_unserved(&unserved_now);
                warned = true;
            }
            let line = summary(&st);
            if line != last {
                println!("[{:>5}s] {reference}: {line}", start.elapsed().as_secs());
                last = line;
            }
            if st["complete"].as_bool() == Some(true) {
                c.add_causes(&mut st, reference).await;
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
                warn_unserved(&unserved_now);
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

/// `berth verify logs <ref|job-id>`: the stored log tail of a job, or of every check's job of
/// a reference.
pub fn logs(conn: &Conn, target: &str) -> ExitCode {
    let r = runtime().and_then(|rt| {
        rt.block_on(async {
            let c = conn.client()?;
            let by_id = target.parse::<i64>().ok();
            let ids: Vec<i64> = match by_id {
                Some(id) => vec![id],
                None => {
                    let st = c.status(target).await?;
                    st["checks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["job"].as_i64())
                        .collect()
                }
            };
            if ids.is_empty() {
                bail!("{target}: no verification job yet");
            }
            let repo = by_id.is_none().then(|| repo_of(target));
            let mut jobs = Vec::new();
            for id in ids {
                jobs.push(c.job(id, repo).await?);
            }
            Ok(jobs)
        })
    });
    match r {
        Ok(jobs) => {
            for j in jobs {
                let p = &j["platform"];
                println!(
                    "== job {} {}/{} {} {}: {} (attempt {}) {}",
                    j["id"],
                    p["os"].as_str().unwrap_or("?"),
                    p["architecture"].as_str().unwrap_or("?"),
                    j["isolation"].as_str().unwrap_or("?"),
                    j["host_build"].as_str().unwrap_or("-"),
                    j["state"].as_str().unwrap_or("?"),
                    j["attempts"],
                    j["message"].as_str().unwrap_or(""),
                );
                let tail = j["log_tail"].as_str().unwrap_or("");
                if tail.is_empty() {
                    println!("(no log output stored)");
                } else {
                    print!("{tail}");
                    if !tail.ends_with('\n') {
                        println!();
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes() {
        let log = "starting\ntime=\"x\" level=error msg=\"runc create failed: exec: \\\"/bin/sh\\\": no such file or directory\"\n";
        assert_eq!(
            cause_line(log).unwrap(),
            "runc create failed: exec: \"/bin/sh\": no such file or directory"
        );
        assert_eq!(cause_line("a\nb\n").unwrap(), "b");
        assert_eq!(cause_line("\n"), None);
    }

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
