//! Who is asking, and what they may do: credentials are checked against users and robots,
//! and permission rules (principal × repository pattern × actions) decide the grant.

use crate::password;
use crate::scope::{Access, Action, Scope};
use berth_oci::RepoPattern;
use berth_storage::meta::{Meta, Permission};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The prefix of robot account names.
pub const ROBOT_PREFIX: &str = "robot$";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A user.
    User {
        /// Name.
        name: String,
        /// Admin: everything.
        admin: bool,
        /// Group memberships.
        groups: Vec<String>,
    },
    /// A robot account.
    Robot {
        /// Name without `robot$`.
        name: String,
    },
}

impl Principal {
    /// The token subject.
    pub fn subject(&self) -> String {
        match self {
            Principal::Anonymous => String::new(),
            Principal::User { name, .. } => name.clone(),
            Principal::Robot { name } => format!("{ROBOT_PREFIX}{name}"),
        }
    }

    fn rule_keys(&self) -> Vec<String> {
        let mut keys = vec!["anonymous".to_owned()];
        match self {
            Principal::Anonymous => {}
            Principal::User { name, groups, .. } => {
                keys.push(format!("user:{name}"));
                keys.extend(groups.iter().map(|g| format!("group:{g}")));
            }
            Principal::Robot { name } => keys.push(format!("robot:{name}")),
        }
        keys
    }
}

/// The rules that apply to one principal, loaded once.
#[derive(Debug, Clone)]
pub struct Rules {
    admin: bool,
    rules: Vec<(RepoPattern, BTreeSet<Action>)>,
}

impl Rules {
    /// Actions allowed on `repo`.
    pub fn allowed(&self, repo: &str) -> BTreeSet<Action> {
        if self.admin {
            return [Action::All].into();
        }
        let mut out = BTreeSet::new();
        for (p, a) in &self.rules {
            if p.matches(repo) {
                out.extend(a.iter().copied());
            }
        }
        // A verifier robot pulls the images it verifies.
        if out.contains(&Action::Verify) {
            out.insert(Action::Pull);
        }
        out
    }

    /// Whether the principal is an admin.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

/// Checks credentials and computes grants.
#[derive(Clone)]
pub struct Authorizer {
    meta: Meta,
    anonymous_pull: Vec<RepoPattern>,
    pool: Arc<VerifyPool>,
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for argon2 verifications. Each verification allocates ~19 MiB; on
/// tokio's blocking pool every thread keeps its own allocator arena, so hundreds of logins
/// spread over hundreds of threads would keep hundreds of those blocks resident. A few
/// dedicated threads reuse theirs. Callers bound the queue (berth-server's login semaphore).
struct VerifyPool {
    tx: std::sync::mpsc::Sender<Job>,
}

impl VerifyPool {
    fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("berth-argon2-{i}"))
                .spawn(move || loop {
                    let job = {
                        let g = rx.lock().unwrap_or_else(|p| p.into_inner());
                        match g.recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        }
                    };
                    job();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a password-verification thread");
            }
        }
        Self { tx }
    }

    /// Runs `f` on a pool thread; `None` if the pool is gone.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A caller that went away (a cancelled request) has already given back its
            // login slot: its verification must not run behind the others' backs.
            if !otx.is_closed() {
                let _ = otx.send(f());
            }
        });
        self.tx.send(job).ok()?;
        orx.await.ok()
    }
}

impl Authorizer {
    /// An authorizer over the metadata, with the configured public patterns; argon2 runs on
    /// as many dedicated threads as there are CPUs.
    pub fn new(meta: Meta, anonymous_pull: Vec<RepoPattern>) -> Self {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::with_verify_threads(meta, anonymous_pull, n)
    }

    /// The same with `threads` password-verification threads.
    pub fn with_verify_threads(
        meta: Meta,
        anonymous_pull: Vec<RepoPattern>,
        threads: usize,
    ) -> Self {
        Self {
            meta,
            anonymous_pull,
            pool: Arc::new(VerifyPool::new(threads)),
        }
    }

    async fn verify_blocking(&self, secret: String, hash: String) -> bool {
        self.pool
            .run(move || password::verify(&secret, &hash))
            .await
            .unwrap_or(false)
    }

    /// Checks a username and password (or `robot$name` and secret). `None` when they are
    /// wrong, the account is unknown or the robot expired. argon2 runs on a blocking thread,
    /// and every failing name costs one argon2 verification: unknown users, unknown and
    /// expired robots spend the same time as a wrong password, so names cannot be probed by
    /// timing.
    pub async fn authenticate(
        &self,
        username: &str,
        secret: &str,
    ) -> berth_storage::Result<Option<Principal>> {
        if let Some(robot) = username.strip_prefix(ROBOT_PREFIX) {
            let live = self
                .meta
                .robot(robot)
                .await?
                .filter(|r| r.expires_at.is_none_or(|e| e > berth_storage::now_secs()));
            let Some(r) = live else {
                let _ = self.verify_blocking(secret.to_owned(), dummy_hash()).await;
                return Ok(None);
            };
            let ok = self.verify_blocking(secret.to_owned(), r.secret_hash).await;
            return Ok(ok.then(|| Principal::Robot {
                name: robot.to_owned(),
            }));
        }
        let Some(u) = self.meta.user(username).await? else {
            let _ = self.verify_blocking(secret.to_owned(), dummy_hash()).await;
            return Ok(None);
        };
        let ok = self
            .verify_blocking(secret.to_owned(), u.password_hash)
            .await;
        Ok(ok.then_some(Principal::User {
            name: u.name,
            admin: u.admin,
            groups: u.groups,
        }))
    }

    /// The principal a token subject names, if it still exists (refresh tokens).
    pub async fn principal(&self, sub: &str) -> berth_storage::Result<Option<Principal>> {
        if sub.is_empty() {
            return Ok(Some(Principal::Anonymous));
        }
        if let Some(robot) = sub.strip_prefix(ROBOT_PREFIX) {
            let r = self.meta.robot(robot).await?;
            return Ok(r
                .filter(|r| r.expires_at.is_none_or(|e| e > berth_storage::now_secs()))
                .map(|_| Principal::Robot {
                    name: robot.to_owned(),
                }));
        }
        Ok(self.meta.user(sub).await?.map(|u| Principal::User {
            name: u.name,
            admin: u.admin,
            groups: u.groups,
        }))
    }

    /// Loads the rules for a principal.
    pub async fn rules(&self, p: &Principal) -> berth_storage::Result<Rules> {
        let rows: Vec<Permission> = self.meta.permissions(&p.rule_keys()).await?;
        let mut rules: Vec<(RepoPattern, BTreeSet<Action>)> = self
            .anonymous_pull
            .iter()
            .map(|pat| (pat.clone(), [Action::Pull].into()))
            .collect();
        rules.extend(
            rows.into_iter()
                .map(|r| (RepoPattern::new(r.pattern), Action::parse_list(&r.actions))),
        );
        Ok(Rules {
            admin: matches!(p, Principal::User { admin: true, .. }),
            rules,
        })
    }

    /// Computes the dummy hash unknown names are checked against (call once at start).
    pub async fn warm_up(&self) {
        let _ = self.pool.run(dummy_hash).await;
    }

    /// Whether anonymous callers may pull `repo` (no token needed).
    pub fn public(&self, repo: &str) -> bool {
        self.anonymous_pull.iter().any(|p| p.matches(repo))
    }

    /// The intersection of what was asked and what is allowed. Scopes with nothing granted
    /// are left out; asking is never an error.
    pub async fn grant(
        &self,
        p: &Principal,
        scopes: &[Scope],
    ) -> berth_storage::Result<Vec<Access>> {
        let rules = self.rules(p).await?;
        let mut out: Vec<Access> = Vec::new();
        for s in scopes {
            let granted: Vec<String> = match s.kind.as_str() {
                // A scope must name one repository: patterns are not names.
                "repository" if s.name.parse::<berth_oci::RepoName>().is_err() => vec![],
                "repository" => {
                    let allowed = rules.allowed(&s.name);
                    s.actions
                        .iter()
                        .filter_map(|a| Action::parse(a).map(|x| (a, x)))
                        .filter(|(_, x)| crate::scope::covers(&allowed, *x))
                        .map(|(a, _)| a.clone())
                        .fold(Vec::new(), |mut v, a| {
                            if !v.contains(&a) {
                                v.push(a);
                            }
                            v
                        })
                }
                // Anyone authenticated may list the catalog; the list itself is filtered.
                "registry" if s.name == "catalog" && !matches!(p, Principal::Anonymous) => s
                    .actions
                    .iter()
                    .filter(|a| a.as_str() == "*")
                    .cloned()
                    .collect(),
                // The admin API (`/berth/v1/` users, robots, rules) with a Bearer token: only
                // for admins, and only when the token asked for it.
                "registry" if s.name == "admin" && rules.is_admin() => s
                    .actions
                    .iter()
                    .filter(|a| a.as_str() == "*")
                    .cloned()
                    .collect(),
                _ => vec![],
            };
            if granted.is_empty() {
                continue;
            }
            match out
                .iter_mut()
                .find(|a| a.kind == s.kind && a.name == s.name)
            {
                Some(a) => {
                    for g in granted {
                        if !a.actions.contains(&g) {
                            a.actions.push(g);
                        }
                    }
                }
                None => out.push(Access {
                    kind: s.kind.clone(),
                    name: s.name.clone(),
                    actions: granted,
                }),
            }
        }
        Ok(out)
    }
}

/// A real argon2 hash of a throwaway password, made once, to spend time on unknown users.
/// [`Authorizer::warm_up`] makes it at start so the first failed login is not slower.
fn dummy_hash() -> String {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| password::hash("berth-dummy-password").unwrap_or_default())
        .clone()
}

#[cfg(test)]
mod pool_tests {
    use super::VerifyPool;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Found in review: the queue outlived cancelled callers, so send-then-cancel piled up
    /// argon2 runs beyond the login semaphore's bound.
    #[tokio::test]
    async fn cancelled_verifications_do_not_run() {
        let pool = VerifyPool::new(1);
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let mut blocker = Box::pin(pool.run(move || {
            let _ = started_tx.send(());
            let _ = gate_rx.recv();
        }));
        // Poll it once (the job is sent on the first poll) and wait until the one thread runs it.
        let _ = tokio::time::timeout(Duration::from_millis(10), &mut blocker).await;
        started_rx.recv().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let r = ran.clone();
            let fut = pool.run(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            // Queued behind the blocker, then the caller goes away.
            let _ = tokio::time::timeout(Duration::from_millis(1), fut).await;
        }
        gate_tx.send(()).unwrap();
        blocker.await.unwrap();
        let r = ran.clone();
        pool.run(move || r.load(Ordering::SeqCst)).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
