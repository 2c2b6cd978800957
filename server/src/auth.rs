//! Access control at the HTTP edge: the Docker token flow's challenges, token checks per
//! request, the token endpoint and failed-login rate limiting. Decisions come from
//! `berth_auth`; this module only speaks HTTP.

use crate::config::AuthConfig;
use crate::error::{ApiError, Refusal};
use axum::http::{header, Extensions, HeaderMap};
use berth_auth::scope::covers;
use berth_auth::{Action, Authorizer, Claims, KeySet, Principal};
use berth_oci::RepoPattern;
use berth_storage::meta::Meta;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

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

/// The local address a connection came in on (a request extension set per connection):
/// the default realm's host when berth listens on an unspecified address.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub SocketAddr);

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
    /// The metadata store (refresh tokens).
    pub meta: Meta,
    /// The realm when none is configured and the listen address is specific.
    listen_realm: Option<String>,
    limiter: Limiter,
    logins: Semaphore,
    max_logins: usize,
    login_queue: AtomicUsize,
}

const WINDOW: Duration = Duration::from_secs(60);
/// How long a login waits for a free password-verification slot before 429.
const LOGIN_WAIT: Duration = Duration::from_secs(5);
/// Logins that may wait for a slot, per slot.
const QUEUE_PER_SLOT: usize = 4;

/// Failed-login counting, per (account, client IP) pair only: one account's wrong passwords
/// never throttle another account, an admin or a request with a valid token from the same IP
/// (a NAT, a CI fleet, an office). An attempt is reserved (counted as failed) before the
/// password is verified and given back when it succeeds, so parallel guesses cannot all pass
/// the check before any of them is counted. Failures per IP over all accounts are counted
/// too, but only to log a warning (a password spray): docs/AUTH.md has the trade-off.
struct Limiter {
    per_account: u32,
    spray_warn: u32,
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    accounts: HashMap<(String, IpAddr), (u32, Instant)>,
    ips: HashMap<IpAddr, (u32, Instant)>,
}

fn live(e: &mut (u32, Instant)) -> &mut (u32, Instant) {
    if e.1.elapsed() >= WINDOW {
        *e = (0, Instant::now());
    }
    e
}

fn wait_of(e: &(u32, Instant)) -> u64 {
    WINDOW.saturating_sub(e.1.elapsed()).as_secs().max(1)
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reserve(&self, account: &str, ip: IpAddr) -> Result<(), u64> {
        let mut m = self.lock();
        if m.accounts.len() > 100_000 {
            m.accounts.retain(|_, (_, t)| t.elapsed() < WINDOW);
        }
        let acc = live(
            m.accounts
                .entry((account.to_owned(), ip))
                .or_insert((0, Instant::now())),
        );
        if acc.0 >= self.per_account {
            return Err(wait_of(acc));
        }
        acc.0 += 1;
        Ok(())
    }

    fn refund(&self, account: &str, ip: IpAddr) {
        if let Some(e) = self.lock().accounts.get_mut(&(account.to_owned(), ip)) {
            e.0 = e.0.saturating_sub(1);
        }
    }

    /// Counts a failed login from `ip` over all accounts; never refuses anything. Warns once
    /// per window when the IP reaches `spray_warn` failures.
    fn failed(&self, ip: IpAddr) {
        let mut m = self.lock();
        if m.ips.len() > 100_000 {
            m.ips.retain(|_, (_, t)| t.elapsed() < WINDOW);
        }
        let e = live(m.ips.entry(ip).or_insert((0, Instant::now())));
        e.0 += 1;
        if e.0 == self.spray_warn {
            tracing::warn!(
                client.ip = %ip,
                failures = e.0,
                "many failed logins from one client IP within a minute, over several accounts \
                 (a password spray, or a misconfigured fleet behind one address); logins are \
                 throttled per account and IP only"
            );
        }
    }
}

/// Gives a login's queue place back.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The pseudo-account failed refresh grants and malformed credentials count against.
pub const NO_ACCOUNT: &str = "\0no-account";

impl AuthState {
    /// Loads (or creates) the signing key under `data_dir/auth` and the trusted issuers.
    /// `listen` is the bound address, for the default realm.
    pub fn new(
        cfg: AuthConfig,
        data_dir: &Path,
        meta: Meta,
        tls: bool,
        listen: Option<SocketAddr>,
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
        let scheme = if tls { "https" } else { "http" };
        let listen_realm = listen
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| format!("{scheme}://{a}/auth/token"));
        let max_logins = match cfg.max_concurrent_logins {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let limit = cfg.failed_login_limit.max(1);
        Ok(Self {
            keys,
            authorizer: Authorizer::with_verify_threads(meta.clone(), public, max_logins),
            limiter: Limiter {
                per_account: limit,
                spray_warn: limit.saturating_mul(10),
                state: Mutex::new(LimiterState::default()),
            },
            logins: Semaphore::new(max_logins),
            max_logins,
            login_queue: AtomicUsize::new(0),
            listen_realm,
            meta,
            cfg,
            tls,
        })
    }

    /// The token endpoint URL for challenges: configured, else from the listen address (or,
    /// listening on an unspecified address, the connection's local address). The request's
    /// Host header is never used: it is the client's to choose.
    pub fn realm(&self, ext: &Extensions) -> String {
        if !self.cfg.realm.is_empty() {
            return self.cfg.realm.clone();
        }
        if let Some(r) = &self.listen_realm {
            return r.clone();
        }
        let scheme = if self.tls { "https" } else { "http" };
        match ext.get::<LocalAddr>() {
            Some(LocalAddr(a)) => format!("{scheme}://{a}/auth/token"),
            None => format!("{scheme}://localhost/auth/token"),
        }
    }

    fn challenge(&self, ext: &Extensions, need: &Need, error: Option<&str>) -> ApiError {
        let realm = self.realm(ext);
        let mut params = vec![
            ("realm", realm.as_str()),
            ("service", self.cfg.service.as_str()),
        ];
        let scope = match need {
            Need::Base => None,
            Need::Catalog => Some("registry:catalog:*".to_owned()),
            Need::Repo(repo, a) => {
                let actions = match a {
                    Action::Push => "pull,push",
                    other => other.as_str(),
                };
                Some(format!("repository:{repo}:{actions}"))
            }
        };
        if let Some(s) = &scope {
            params.push(("scope", s));
        }
        if let Some(e) = error {
            params.push(("error", e));
        }
        Refusal::Unauthenticated {
            message: "authentication required",
            challenge: berth_auth::header::render_challenge("Bearer", &params),
        }
        .into()
    }

    /// Counts an attempt that needs no password check (malformed credentials) against
    /// `account` from `ip` before it is checked; 429 when that pair is throttled. [`AuthState::refund`] gives it back on success.
    pub fn reserve(&self, account: &str, ip: IpAddr) -> Result<(), ApiError> {
        self.limiter.reserve(account, ip).map_err(too_many)
    }

    /// Gives back an attempt counted by [`AuthState::reserve`] that succeeded.
    pub fn refund(&self, account: &str, ip: IpAddr) {
        self.limiter.refund(account, ip);
    }

    /// Checks a username and password, rate limited and bounded: the attempt is counted
    /// before argon2 runs (and given back when it succeeds), at most `max_concurrent_logins`
    /// verifications run at once with a short queue, and anything beyond gets 429.
    /// `Ok(None)`: wrong credentials.
    pub async fn login(
        &self,
        ip: IpAddr,
        user: &str,
        pass: &str,
    ) -> Result<Option<Principal>, ApiError> {
        self.limiter.reserve(user, ip).map_err(too_many)?;
        let queued = Queued(&self.login_queue);
        if self.login_queue.fetch_add(1, Ordering::SeqCst) >= self.max_logins * (1 + QUEUE_PER_SLOT)
        {
            drop(queued);
            self.limiter.refund(user, ip);
            return Err(busy());
        }
        let permit = match tokio::time::timeout(LOGIN_WAIT, self.logins.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                drop(queued);
                self.limiter.refund(user, ip);
                return Err(busy());
            }
        };
        let r = self.authorizer.authenticate(user, pass).await;
        drop(permit);
        drop(queued);
        match r? {
            Some(p) => {
                self.limiter.refund(user, ip);
                Ok(Some(p))
            }
            None => {
                tracing::info!(user = user, client.ip = %ip, "failed login");
                self.limiter.failed(ip);
                Ok(None)
            }
        }
    }

    /// Checks a request against what it needs.
    pub fn check(
        &self,
        headers: &HeaderMap,
        ext: &Extensions,
        need: &Need,
    ) -> Result<Caller, ApiError> {
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
                return Err(self.challenge(ext, need, None));
            }
            Some(v) => match berth_auth::header::parse_bearer(v) {
                Some(t) => t,
                None => return Err(self.challenge(ext, need, Some("invalid_request"))),
            },
        };
        let claims = match self.keys.verify(token, &self.cfg.service, false) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(reason = %e, "token refused");
                return Err(self.challenge(ext, need, Some("invalid_token")));
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
                return Err(Refusal::AccessDenied {
                    repo: repo.clone(),
                    action: *action,
                }
                .into());
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
}

/// Decodes `Authorization: Basic`. `None` when absent; `Some(Err)` when malformed.
pub fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    berth_auth::header::parse_basic(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// A 429 for a throttled client.
pub fn too_many(retry_after: u64) -> ApiError {
    Refusal::TooManyFailedLogins { retry_after }.into()
}

/// A 429 when every password-verification slot is taken and the queue is full.
pub fn busy() -> ApiError {
    Refusal::LoginsBusy.into()
}

/// A 401 for bad credentials at the token endpoint.
pub fn bad_credentials() -> ApiError {
    Refusal::BadCredentials("invalid username or password").into()
}
