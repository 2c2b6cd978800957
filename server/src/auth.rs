//! Access control at the HTTP edge: the Docker token flow's challenges, token checks per
//! request, the token endpoint and failed-login rate limiting. Decisions come from
//! `berth_auth`; this module only speaks HTTP.

use crate::config::AuthConfig;
use crate::error::ApiError;
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use berth_auth::scope::covers;
use berth_auth::{Action, Authorizer, Claims, KeySet, Principal};
use berth_oci::{ErrorCode, RepoPattern};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a request needs.
#[derive(Debug, Clone)]
pub enum Need {
    /// `GET /v2/`: any valid token.
    Base,
    /// The catalog: any valid token; the list is filtered afterwards.
    Catalog,
    /// An action on a repository.
    Repo(String, Action),
}

/// Who is calling, once checked.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off: everything is allowed.
    Open,
    /// No token, but the request is allowed to anyone (public pull).
    Anonymous,
    /// A verified token.
    Token(Box<Claims>),
}

/// Auth state of a registry running in `token` mode.
pub struct AuthState {
    /// Signing and trusted keys.
    pub keys: KeySet,
    /// Credentials and rules.
    pub authorizer: Authorizer,
    /// Settings.
    pub cfg: AuthConfig,
    /// Whether berth serves TLS itself (for the default realm's scheme).
    pub tls: bool,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl AuthState {
    /// Loads (or creates) the signing key under `data_dir/auth` and the trusted issuers.
    pub fn new(
        cfg: AuthConfig,
        data_dir: &Path,
        meta: berth_storage::meta::Meta,
        tls: bool,
    ) -> anyhow::Result<Self> {
        let mut keys =
            KeySet::load_or_create(&data_dir.join("auth").join("signing-key.pem"), &cfg.issuer)?;
        for t in &cfg.trust {
            if let Some(j) = &t.jwks {
                keys.trust_jwks(&t.issuer, &std::fs::read_to_string(j)?)?;
            }
            if let Some(p) = &t.public_key {
                keys.trust_pem(&t.issuer, &std::fs::read_to_string(p)?)?;
            }
        }
        let public = cfg
            .anonymous_pull
            .iter()
            .map(|p| RepoPattern::new(p.clone()))
            .collect();
        Ok(Self {
            keys,
            authorizer: Authorizer::new(meta, public),
            cfg,
            tls,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The token endpoint URL for challenges.
    pub fn realm(&self, headers: &HeaderMap) -> String {
        if !self.cfg.realm.is_empty() {
            return self.cfg.realm.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}/auth/token")
    }

    fn challenge(&self, headers: &HeaderMap, need: &Need, error: Option<&str>) -> ApiError {
        let mut c = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers),
            self.cfg.service
        );
        match need {
            Need::Base => {}
            Need::Catalog => c.push_str(",scope=\"registry:catalog:*\""),
            Need::Repo(repo, a) => {
                let actions = match a {
                    Action::Push => "pull,push",
                    other => other.as_str(),
                };
                c.push_str(&format!(",scope=\"repository:{repo}:{actions}\""));
            }
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        ApiError::oci(ErrorCode::Unauthorized, "authentication required")
            .header("www-authenticate", c)
    }

    /// Checks a request against what it needs.
    pub fn check(&self, headers: &HeaderMap, need: &Need) -> Result<Caller, ApiError> {
        let authz = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let token = match authz {
            None => {
                if let Need::Repo(repo, Action::Pull) = need {
                    if self.authorizer.public(repo) {
                        return Ok(Caller::Anonymous);
                    }
                }
                return Err(self.challenge(headers, need, None));
            }
            Some(v) => match v.split_once(' ') {
                Some((scheme, t))
                    if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() =>
                {
                    t.trim()
                }
                _ => return Err(self.challenge(headers, need, Some("invalid_request"))),
            },
        };
        let claims = match self.keys.verify(token, &self.cfg.service, false) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(reason = %e, "token refused");
                return Err(self.challenge(headers, need, Some("invalid_token")));
            }
        };
        if let Need::Repo(repo, action) = need {
            let granted = claims
                .access
                .iter()
                .filter(|a| a.kind == "repository" && &a.name == repo)
                .any(|a| covers(&a.action_set(), *action));
            let public = *action == Action::Pull && self.authorizer.public(repo);
            if !granted && !public {
                return Err(ApiError::oci(
                    ErrorCode::Denied,
                    format!(
                        "requested access to the resource is denied: {} on {repo}",
                        action.as_str()
                    ),
                )
                .detail(serde_json::json!({"name": repo, "action": action.as_str()})));
            }
        }
        Ok(Caller::Token(Box::new(claims)))
    }

    /// Whether a checked caller may also do `action` on `repo` (cross-repository mounts).
    pub fn may(&self, caller: &Caller, repo: &str, action: Action) -> bool {
        match caller {
            Caller::Open => true,
            Caller::Anonymous => action == Action::Pull && self.authorizer.public(repo),
            Caller::Token(c) => {
                c.access.iter().any(|a| {
                    a.kind == "repository" && a.name == repo && covers(&a.action_set(), action)
                }) || (action == Action::Pull && self.authorizer.public(repo))
            }
        }
    }

    /// The principal behind a caller (for catalog filtering and the admin API).
    pub async fn principal(&self, caller: &Caller) -> berth_storage::Result<Option<Principal>> {
        match caller {
            Caller::Open => Ok(None),
            Caller::Anonymous => Ok(Some(Principal::Anonymous)),
            Caller::Token(c) if c.iss == self.cfg.issuer => self.authorizer.principal(&c.sub).await,
            Caller::Token(_) => Ok(Some(Principal::Anonymous)),
        }
    }

    /// Refuses a client that failed too often; returns the seconds to wait.
    pub fn throttled(&self, ip: IpAddr) -> Option<u64> {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (n, since) = m.get(&ip).copied()?;
        let elapsed = since.elapsed();
        if elapsed >= WINDOW {
            m.remove(&ip);
            return None;
        }
        (n >= self.cfg.failed_login_limit).then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    /// Counts a failed login.
    pub fn failed(&self, ip: IpAddr) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            m.retain(|_, (_, t)| t.elapsed() < WINDOW);
        }
        let e = m.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// Decodes `Authorization: Basic`. `None` when absent; `Some(Err)` when malformed.
pub fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = match base64::engine::general_purpose::STANDARD.decode(rest.trim()) {
        Ok(d) => d,
        Err(_) => return Some(Err(())),
    };
    let Ok(s) = String::from_utf8(decoded) else {
        return Some(Err(()));
    };
    match s.split_once(':') {
        Some((u, p)) => Some(Ok((u.to_owned(), p.to_owned()))),
        None => Some(Err(())),
    }
}

/// A 429 for a throttled client.
pub fn too_many(retry_after: u64) -> ApiError {
    ApiError::oci(
        ErrorCode::TooManyRequests,
        "too many failed logins; try again later",
    )
    .header("retry-after", retry_after.to_string())
}

/// A 401 for bad credentials at the token endpoint.
pub fn bad_credentials() -> ApiError {
    ApiError::oci(ErrorCode::Unauthorized, "invalid username or password")
        .status(StatusCode::UNAUTHORIZED)
}
