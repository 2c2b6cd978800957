//! A client for an upstream registry: tags, manifests (GET and HEAD) and blobs, with Basic
//! credentials or the Docker token flow (`WWW-Authenticate: Bearer realm=...,service=...`),
//! and upstream failures sorted into what the mirror and the cache do about them.

use super::def::UpstreamAuth;
use berth_oci::Digest;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Every manifest type berth stores, for `Accept`.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// 404: no such repository, tag, manifest or blob.
    #[error("not found upstream")]
    NotFound,
    /// 429: the upstream's rate limit, with its `Retry-After`.
    #[error("upstream rate limit (429), retry after {retry_after:?}")]
    TooMany {
        /// The upstream's `Retry-After`, passed on as it came.
        retry_after: Option<String>,
    },
    /// Unreachable, timed out, or a 5xx.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// Credentials refused.
    #[error("upstream refused the credentials: {0}")]
    Denied(String),
    /// Anything else: an unexpected status, a digest that does not match.
    #[error("{0}")]
    Other(String),
}

type Result<T, E = UpstreamError> = std::result::Result<T, E>;

/// One upstream registry.
pub struct Upstream {
    base: url::Url,
    /// Send Basic credentials on every request.
    basic_always: bool,
    /// User name and password, resolved.
    creds: Option<(String, String)>,
    http: reqwest::Client,
    /// Bearer tokens by scope.
    tokens: Mutex<HashMap<String, String>>,
    /// Longest upstream `Retry-After` to wait out (mirror runs); zero: pass 429 on at once.
    patience: Duration,
    /// Longest wait for a connection and the response headers of one request (the token
    /// exchange included); the body then streams under the per-read timeout.
    first_byte: Duration,
}

/// The default of [`Upstream::first_byte`] (mirror runs have no client waiting).
const FIRST_BYTE: Duration = Duration::from_secs(60);

fn http_client(connect: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("berth-mirror/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect)
        .read_timeout(Duration::from_secs(60))
        .build()?)
}

/// A manifest as the upstream sent it.
#[derive(Debug, Clone)]
pub struct UpManifest {
    /// The exact bytes.
    pub bytes: bytes::Bytes,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// Digest of the bytes (checked against `Docker-Content-Digest` when sent).
    pub digest: Digest,
}

use berth_auth::header::parse_challenge;

fn send_error(e: reqwest::Error) -> UpstreamError {
    UpstreamError::Unavailable(format!("{e}"))
}

impl Upstream {
    /// A client for the registry at `base`.
    pub fn new(base: &str, auth: UpstreamAuth) -> anyhow::Result<Self> {
        let mut base = url::Url::parse(base)?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = http_client(Duration::from_secs(10))?;
        let creds = auth
            .credentials()
            .map(|c| c.resolve())
            .transpose()
            .map_err(|e| anyhow::anyhow!("upstream credentials: {e}"))?;
        Ok(Self {
            base,
            basic_always: matches!(auth, UpstreamAuth::Basic(_)),
            creds,
            http,
            tokens: Mutex::new(HashMap::new()),
            patience: Duration::ZERO,
            first_byte: FIRST_BYTE,
        })
    }

    /// Gives up on a request whose connection or response headers take longer than `d` (the
    /// pull-through cache, where a client waits and a cached copy may answer instead).
    pub fn impatient(mut self, d: Duration) -> anyhow::Result<Self> {
        self.http = http_client(d.min(Duration::from_secs(10)))?;
        self.first_byte = d;
        Ok(self)
    }

    /// Waits out an upstream 429 whose `Retry-After` (seconds) is at most `max`, up to three
    /// times per request, instead of failing (for mirror runs, which have no client waiting).
    #[must_use]
    pub fn patient(mut self, max: Duration) -> Self {
        self.patience = max;
        self
    }

    fn url(&self, repo: &str, tail: &str) -> Result<url::Url> {
        self.base
            .join(&format!("v2/{repo}/{tail}"))
            .map_err(|e| UpstreamError::Other(format!("bad upstream URL: {e}")))
    }

    fn scope(repo: &str) -> String {
        format!("repository:{repo}:pull")
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.get(scope).cloned()
    }

    /// Gets a token from the realm a Bearer challenge names.
    async fn fetch_token(&self, params: &HashMap<String, String>, scope: &str) -> Result<String> {
        let realm = params
            .get("realm")
            .ok_or_else(|| UpstreamError::Other("Bearer challenge without realm".into()))?;
        let mut url = url::Url::parse(realm)
            .map_err(|e| UpstreamError::Other(format!("bad token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", params.get("scope").map_or(scope, |s| s.as_str()));
        }
        let mut req = self.http.get(url);
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(send_error)?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(too_many(resp.headers()));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Denied(format!(
                "token endpoint answered {status}"
            )));
        }
        if status.is_server_error() {
            return Err(UpstreamError::Unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(UpstreamError::Other(format!(
                "token endpoint answered {status}"
            )));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| UpstreamError::Other(format!("token answer: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| UpstreamError::Other("token answer without a token".into()))
    }

    /// Sends a request for `repo`, waiting out rate limits as patient as this client is.
    async fn send(
        &self,
        method: Method,
        repo: &str,
        url: url::Url,
        headers: HeaderMap,
    ) -> Result<reqwest::Response> {
        let mut waited = 0;
        loop {
            let once = tokio::time::timeout(
                self.first_byte,
                self.send_once(method.clone(), repo, url.clone(), headers.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Unavailable(format!(
                    "no answer from the upstream within {} s",
                    self.first_byte.as_secs_f32()
                )))
            });
            match once {
                Err(UpstreamError::TooMany { retry_after }) if waited < 3 => {
                    let secs = retry_after
                        .as_deref()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(5);
                    let wait = Duration::from_secs(secs.max(1));
                    if wait > self.patience {
                        return Err(UpstreamError::TooMany { retry_after });
                    }
                    tracing::info!(url = %url, wait_secs = secs, "upstream rate limit; waiting");
                    tokio::time::sleep(wait).await;
                    waited += 1;
                }
                r => return r,
            }
        }
    }

    /// Sends a request for `repo`, answering one authentication challenge.
    async fn send_once(
        &self,
        method: Method,
        repo: &str,
        url: url::Url,
        headers: HeaderMap,
    ) -> Result<reqwest::Response> {
        let scope = Self::scope(repo);
        let build = |auth: Option<HeaderValue>| {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            req
        };
        let basic = || {
            self.creds.as_ref().and_then(|(u, p)| {
                use base64::Engine;
                let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                HeaderValue::from_str(&format!("Basic {v}")).ok()
            })
        };
        let first = match self.cached_token(&scope) {
            Some(t) => HeaderValue::from_str(&format!("Bearer {t}")).ok(),
            None if self.basic_always => basic(),
            None => None,
        };
        let resp = build(first).send().await.map_err(send_error)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return check(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge);
        let retry = match challenge {
            Some((scheme, params)) if scheme == "bearer" => {
                let token = self.fetch_token(&params, &scope).await?;
                {
                    let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                    t.insert(scope.clone(), token.clone());
                }
                HeaderValue::from_str(&format!("Bearer {token}")).ok()
            }
            Some((scheme, _)) if scheme == "basic" && self.creds.is_some() => basic(),
            _ => {
                return Err(UpstreamError::Denied(
                    "401 without a challenge berth can answer".into(),
                ))
            }
        };
        let resp = build(retry).send().await.map_err(send_error)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(UpstreamError::Denied("401 after authenticating".into()));
        }
        check(resp)
    }

    /// Every tag of `repo`, following `Link` pages.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut url = self.url(repo, "tags/list?n=1000")?;
        for _ in 0..1000 {
            let resp = self
                .send(Method::GET, repo, url.clone(), HeaderMap::new())
                .await?;
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| {
                    let start = l.find('<')? + 1;
                    let end = l.find('>')?;
                    l.contains("rel=\"next\"").then(|| l[start..end].to_owned())
                });
            let body: serde_json::Value = resp
                .json()
                .await
                .map_err(|e| UpstreamError::Other(format!("tags list: {e}")))?;
            if let Some(tags) = body.get("tags").and_then(|t| t.as_array()) {
                out.extend(tags.iter().filter_map(|t| t.as_str()).map(str::to_owned));
            }
            match next {
                Some(n) => {
                    url = url
                        .join(&n)
                        .map_err(|e| UpstreamError::Other(format!("tags Link: {e}")))?
                }
                None => return Ok(out),
            }
        }
        Ok(out)
    }

    /// The digest a reference points at upstream, by HEAD (cheap against rate limits). `None`
    /// when the upstream does not say (no `Docker-Content-Digest`).
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<Digest>> {
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self.send(Method::HEAD, repo, url, h).await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// A manifest, its digest checked against `want` (by-digest references) or the
    /// `Docker-Content-Digest` header.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        want: Option<&Digest>,
        max_bytes: u64,
    ) -> Result<UpManifest> {
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self.send(Method::GET, repo, url, h).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
        let header: Option<Digest> = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(UpstreamError::Other(format!(
                "manifest {repo}:{reference} is larger than {max_bytes} bytes"
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("reading manifest: {e}")))?;
        if bytes.len() as u64 > max_bytes {
            return Err(UpstreamError::Other(format!(
                "manifest {repo}:{reference} is larger than {max_bytes} bytes"
            )));
        }
        let expect = want.or(header.as_ref());
        let digest = match expect {
            Some(d) => {
                let got = Digest::compute(d.algorithm(), &bytes);
                if &got != d {
                    return Err(UpstreamError::Other(format!(
                        "manifest {repo}:{reference}: upstream said {d}, content is {got}"
                    )));
                }
                got
            }
            None => Digest::sha256(&bytes),
        };
        Ok(UpManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// A blob from `offset` on. The answer is 206 when the upstream honoured the range, 200
    /// when it sent the whole blob.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<reqwest::Response> {
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let mut h = HeaderMap::new();
        if offset > 0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                h.insert(reqwest::header::RANGE, v);
            }
        }
        self.send(Method::GET, repo, url, h).await
    }

    /// A foreign layer from one of its `urls` (no credentials are sent there).
    pub async fn get_url(&self, url: &str) -> Result<reqwest::Response> {
        let resp = self.http.get(url).send().await.map_err(send_error)?;
        check(resp)
    }
}

fn too_many(h: &HeaderMap) -> UpstreamError {
    UpstreamError::TooMany {
        retry_after: h
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    Err(match status {
        StatusCode::NOT_FOUND => UpstreamError::NotFound,
        StatusCode::TOO_MANY_REQUESTS => too_many(resp.headers()),
        StatusCode::FORBIDDEN => UpstreamError::Denied(format!("{} answered 403", resp.url())),
        s if s.is_server_error() => {
            UpstreamError::Unavailable(format!("{} answered {s}", resp.url()))
        }
        s => UpstreamError::Other(format!("{} answered {s}", resp.url())),
    })
}
