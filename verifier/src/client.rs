//! The worker's registry client: the verification API under `/berth/v1/verify/` (Basic
//! credentials of a robot holding `verify`) and the distribution API under `/v2/` (the Docker
//! token flow when the registry asks for it). Every manifest and blob it downloads is checked
//! against its digest before anything uses it.

use anyhow::{anyhow, bail, Context, Result};
use berth_oci::worker_protocol::{
    Assignment, ClaimRequest, Heartbeat, Report, Worker, WorkerRegistration,
};
use berth_oci::{Digest, Hasher};
use reqwest::header::{HeaderMap, ACCEPT, WWW_AUTHENTICATE};
use reqwest::{Client as Http, RequestBuilder, Response, StatusCode, Url};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Manifest media types the worker accepts.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest accepted.
const MAX_MANIFEST: usize = 4 << 20;

/// What a heartbeat learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The lease was extended.
    Kept,
    /// The job is no longer ours (expired and taken, or finished).
    Lost,
}

/// A client of one registry.
pub struct Client {
    http: Http,
    base: Url,
    username: Option<String>,
    password: Option<String>,
    /// Bearer tokens per repository (pull scope).
    tokens: Mutex<HashMap<String, String>>,
    /// Origins besides the registry's own that may receive the credentials as a token
    /// realm (`BERTH_VERIFIER_TRUSTED_REALMS`, comma-separated URLs).
    trusted_realms: Vec<Url>,
    /// Longest wait for the next bytes of a blob download.
    blob_stall: Duration,
}

/// The environment variable naming extra token-realm origins the worker sends its
/// credentials to (comma-separated URLs, e.g. `https://auth.example.com`).
pub const TRUSTED_REALMS_ENV: &str = "BERTH_VERIFIER_TRUSTED_REALMS";

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Whether a Bearer challenge's realm may receive the worker's credentials: only on the
/// registry's own origin, or an origin configured as trusted. A registry (or whoever can
/// make it answer a challenge) cannot send the robot's secret elsewhere.
pub fn realm_gets_credentials(base: &Url, realm: &Url, trusted: &[Url]) -> bool {
    same_origin(base, realm) || trusted.iter().any(|t| same_origin(t, realm))
}

fn trusted_from_env() -> Result<Vec<Url>> {
    let Ok(v) = std::env::var(TRUSTED_REALMS_ENV) else {
        return Ok(vec![]);
    };
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Url::parse(s).with_context(|| format!("{TRUSTED_REALMS_ENV}: {s:?}")))
        .collect()
}

impl Client {
    /// A client for `base` (e.g. `http://registry:5000`).
    pub fn new(base: &str, username: Option<String>, password: Option<String>) -> Result<Self> {
        let base = Url::parse(base).with_context(|| format!("registry URL {base:?}"))?;
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("berth-verifier/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            username,
            password,
            tokens: Mutex::new(HashMap::new()),
            trusted_realms: trusted_from_env()?,
            blob_stall: Duration::from_secs(60),
        })
    }

    /// Sets the longest wait for the next bytes of a blob download (a stalled download fails).
    pub fn with_blob_stall(mut self, d: Duration) -> Self {
        self.blob_stall = d;
        self
    }

    fn url(&self, path: &str) -> Result<Url> {
        Ok(self.base.join(path)?)
    }

    fn api(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.username {
            Some(u) => rb.basic_auth(u, self.password.as_deref()),
            None => rb,
        }
    }

    async fn api_json<T: serde::de::DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = self.api(rb).send().await?;
        let resp = check(resp).await?;
        Ok(resp.json().await?)
    }

    /// Registers this worker; returns its id.
    pub async fn register(&self, reg: &WorkerRegistration) -> Result<Worker> {
        let rb = self
            .http
            .post(self.url("/berth/v1/verify/workers")?)
            .timeout(Duration::from_secs(30))
            .json(reg);
        self.api_json(rb).await.context("registering the worker")
    }

    /// Waits up to `wait_secs` for a job.
    pub async fn claim(&self, worker: &str, wait_secs: u64) -> Result<Option<Assignment>> {
        let rb = self
            .http
            .post(self.url("/berth/v1/verify/claim")?)
            .timeout(Duration::from_secs(wait_secs + 30))
            .json(&ClaimRequest {
                worker: worker.to_owned(),
                wait_secs,
            });
        let resp = self.api(rb).send().await.context("claiming a job")?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let resp = check(resp).await.context("claiming a job")?;
        Ok(Some(resp.json().await?))
    }

    /// Extends a lease.
    pub async fn heartbeat(&self, job: i64, lease: &str, phase: &str) -> Result<Beat> {
        let rb = self
            .http
            .post(self.url(&format!("/berth/v1/verify/jobs/{job}/heartbeat"))?)
            .timeout(Duration::from_secs(20))
            .json(&Heartbeat {
                lease: lease.to_owned(),
                phase: phase.to_owned(),
            });
        let resp = self.api(rb).send().await?;
        if resp.status() == StatusCode::CONFLICT || resp.status() == StatusCode::NOT_FOUND {
            return Ok(Beat::Lost);
        }
        check(resp).await?;
        Ok(Beat::Kept)
    }

    /// Reports a result. `Ok(false)` when the lease was lost meanwhile.
    pub async fn report(&self, job: i64, report: &Report) -> Result<bool> {
        let rb = self
            .http
            .post(self.url(&format!("/berth/v1/verify/jobs/{job}/result"))?)
            .timeout(Duration::from_secs(60))
            .json(report);
        let resp = self.api(rb).send().await?;
        if resp.status() == StatusCode::CONFLICT {
            return Ok(false);
        }
        check(resp).await?;
        Ok(true)
    }

    // === /v2/ ===

    /// Sends a `/v2/` request, answering a Bearer challenge with a token for `repo`.
    async fn v2(&self, repo: &str, make: impl Fn() -> RequestBuilder) -> Result<Response> {
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(repo)
            .cloned();
        let send = |token: Option<&str>| {
            let rb = make();
            match token {
                Some(t) => rb.bearer_auth(t),
                None => match &self.username {
                    Some(u) => rb.basic_auth(u, self.password.as_deref()),
                    None => rb,
                },
            }
        };
        let resp = send(cached.as_deref()).send().await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        else {
            bail!("registry refused the credentials ({challenge})");
        };
        let token = self.fetch_token(&parse_challenge(params), repo).await?;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo.to_owned(), token.clone());
        Ok(send(Some(&token)).send().await?)
    }

    async fn fetch_token(&self, ch: &HashMap<String, String>, repo: &str) -> Result<String> {
        let realm = ch
            .get("realm")
            .ok_or_else(|| anyhow!("Bearer challenge without realm"))?;
        let mut url = Url::parse(realm).with_context(|| format!("token realm {realm:?}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = ch.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &format!("repository:{repo}:pull"));
        }
        let rb = self.http.get(url.clone()).timeout(Duration::from_secs(30));
        let rb = if realm_gets_credentials(&self.base, &url, &self.trusted_realms) {
            self.api(rb)
        } else {
            tracing::warn!(realm = %realm, "token realm is not on the registry's origin nor trusted ({TRUSTED_REALMS_ENV}): asking without credentials");
            rb
        };
        let resp = rb.send().await.context("getting a pull token")?;
        let v: serde_json::Value = check(resp)
            .await
            .context("getting a pull token")?
            .json()
            .await?;
        v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("token answer without a token"))
    }

    /// A manifest by digest, its bytes checked: (bytes, media type).
    pub async fn manifest(&self, repo: &str, digest: &Digest) -> Result<(Vec<u8>, String)> {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"))?;
        let resp = self
            .v2(repo, || {
                self.http
                    .get(url.clone())
                    .header(ACCEPT, ACCEPT_MANIFESTS)
                    .timeout(Duration::from_secs(60))
            })
            .await?;
        let resp = check(resp)
            .await
            .with_context(|| format!("fetching manifest {repo}@{digest}"))?;
        let media_type = content_type(resp.headers());
        let body = resp.bytes().await?;
        if body.len() > MAX_MANIFEST {
            bail!("manifest {digest} is larger than {MAX_MANIFEST} bytes");
        }
        let got = Digest::compute(digest.algorithm(), &body);
        if &got != digest {
            bail!("manifest {repo}@{digest}: the registry sent content with digest {got}");
        }
        Ok((body.to_vec(), media_type))
    }

    /// Downloads a blob to `path`, checking size and digest; returns its size.
    pub async fn blob_to_file(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<u64> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let mut resp = check(
            self.v2(repo, || self.http.get(url.clone()))
                .await
                .with_context(|| format!("fetching blob {digest}"))?,
        )
        .await
        .with_context(|| format!("fetching blob {digest}"))?;
        let mut f = tokio::fs::File::create(path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        let mut h = Hasher::new(digest.algorithm());
        let mut n = 0u64;
        loop {
            let chunk = match tokio::time::timeout(self.blob_stall, resp.chunk()).await {
                Ok(c) => c?,
                Err(_) => bail!(
                    "blob {digest}: no data for {}s after {n} bytes (stalled download)",
                    self.blob_stall.as_secs()
                ),
            };
            let Some(chunk) = chunk else { break };
            n += chunk.len() as u64;
            if n > size {
                bail!("blob {digest} is larger than its descriptor's {size} bytes");
            }
            h.update(&chunk);
            f.write_all(&chunk).await?;
        }
        f.flush().await?;
        if n != size {
            bail!("blob {digest}: got {n} bytes, the descriptor says {size}");
        }
        let got = h.finish();
        if &got != digest {
            bail!("blob {digest}: the registry sent content with digest {got}");
        }
        Ok(n)
    }
}

fn content_type(h: &HeaderMap) -> String {
    h.get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default()
}

/// Turns an error answer into an error with the registry's message.
async fn check(resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let e = &v["errors"][0];
            Some(format!(
                "{} {}",
                e["code"].as_str()?,
                e["message"].as_str().unwrap_or("")
            ))
        })
        .unwrap_or_else(|| text.chars().take(200).collect());
    bail!("{status}: {msg}")
}

/// `realm="…",service="…",scope="…"` → map.
pub fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        out.insert(k, val.to_owned());
        rest = tail.trim_start_matches([',', ' ']);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"realm="http://127.0.0.1:5000/auth/token",service="berth",scope="repository:a/b:pull""#,
        );
        assert_eq!(c["realm"], "http://127.0.0.1:5000/auth/token");
        assert_eq!(c["service"], "berth");
        assert_eq!(c["scope"], "repository:a/b:pull");
        let c = parse_challenge("realm=x, service=y");
        assert_eq!((c["realm"].as_str(), c["service"].as_str()), ("x", "y"));
    }

    #[test]
    fn credentials_go_only_to_the_registrys_own_realm() {
        let u = |s: &str| Url::parse(s).unwrap();
        let base = u("http://127.0.0.1:5000");
        assert!(realm_gets_credentials(
            &base,
            &u("http://127.0.0.1:5000/auth/token"),
            &[]
        ));
        assert!(realm_gets_credentials(
            &u("https://Reg.example"),
            &u("https://reg.example:443/t"),
            &[]
        ));
        for evil in [
            "http://evil.example/auth/token",
            "http://127.0.0.1:5001/auth/token",
            "https://127.0.0.1:5000/auth/token",
            "http://127.0.0.1.evil.example:5000/auth/token",
        ] {
            assert!(!realm_gets_credentials(&base, &u(evil), &[]), "{evil}");
        }
        let trusted = [u("https://auth.example.com")];
        assert!(realm_gets_credentials(
            &base,
            &u("https://auth.example.com/token"),
            &trusted
        ));
        assert!(!realm_gets_credentials(
            &base,
            &u("http://auth.example.com/token"),
            &trusted
        ));
    }

    /// The real client against a registry that challenges with a foreign realm: the token
    /// request reaches that realm without the Authorization header.
    #[tokio::test]
    async fn foreign_realm_gets_no_credentials() {
        use tokio::io::AsyncReadExt;
        let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let evil_addr = evil.local_addr().unwrap();
        let reg = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reg_addr = reg.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = reg.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "{}";
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{evil_addr}/auth/token\",service=\"berth\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let seen = tokio::spawn(async move {
            let (mut s, _) = evil.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let _ = s
                .write_all(b"HTTP/1.1 500 Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            req
        });
        let c = Client::new(
            &format!("http://{reg_addr}"),
            Some("robot$verifier".into()),
            Some("top-secret".into()),
        )
        .unwrap();
        let d: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        assert!(c.manifest("app/x", &d).await.is_err());
        let req = seen.await.unwrap();
        assert!(req.starts_with("GET /auth/token"), "{req}");
        assert!(
            !req.to_ascii_lowercase().contains("authorization:"),
            "credentials sent to a foreign realm:\n{req}"
        );
    }
}
