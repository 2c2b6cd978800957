//! Where `berth user`, `robot`, `grant`, `grants` and `revoke` act: the server's metadata
//! database (`--config`/`--data-dir`, on the registry host), or a running registry's admin API
//! (`--registry URL`, from anywhere). Both answer the same questions the same way.

use anyhow::Context;
use berth_server::accounts;
use berth_server::config::Config;
use berth_storage::meta::Meta;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Where the accounts are: the same `--config`/`--data-dir` as `serve`, or `--registry`.
#[derive(clap::Args)]
pub struct DbArgs {
    /// TOML configuration file (a relative `data_dir` in it is relative to the file).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// A running registry to change through its admin API instead of a local database. The
    /// admin's credentials: --username with BERTH_PASSWORD, BERTH_USERNAME/BERTH_PASSWORD, or
    /// the registry's entry in docker's config.json (`docker login`).
    #[arg(long, global = true, conflicts_with_all = ["config", "data_dir"])]
    pub registry: Option<String>,
    /// Admin user for --registry.
    #[arg(long, env = "BERTH_USERNAME", global = true)]
    pub username: Option<String>,
}

/// A permission rule as listed.
#[derive(serde::Serialize)]
pub struct Rule {
    pub id: i64,
    pub principal: String,
    pub pattern: String,
    pub actions: String,
}

/// A user as listed.
pub struct UserRow {
    pub name: String,
    pub admin: bool,
    pub groups: Vec<String>,
}

/// The accounts of one registry.
pub enum Store {
    Local(Meta),
    Remote(crate::cli::creds::Session),
}

const ADMIN: &str = "the admin API";
const ADMIN_SCOPE: &str = "registry:admin:*";

fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Store {
    /// Opens the database (saying which, on stderr) or a session with the registry.
    pub async fn open(db: &DbArgs) -> anyhow::Result<Self> {
        if let Some(r) = &db.registry {
            let creds = crate::cli::creds::Args {
                username: db.username.clone(),
                password: std::env::var("BERTH_PASSWORD").ok(),
                password_stdin: false,
            };
            return Ok(Self::Remote(crate::cli::creds::Session::new(r, &creds)?));
        }
        let mut cfg = Config::load(db.config.as_deref(), true)?;
        if let Some(d) = &db.data_dir {
            cfg.data_dir = d.clone();
        }
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let path = std::path::absolute(cfg.data_dir.join("berth.db"))?;
        eprintln!("using metadata database {}", path.display());
        Ok(Self::Local(Meta::open_sqlite(&path).await?))
    }

    pub async fn close(self) {
        if let Self::Local(m) = self {
            m.close().await;
        }
    }

    /// An admin API call: the status and JSON body (401/403 are errors already).
    async fn call(
        s: &crate::cli::creds::Session,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let url = s.base.join(path)?;
        s.request(
            || {
                let b = s.http.request(method.clone(), url.clone());
                match &body {
                    Some(v) => b.json(v),
                    None => b,
                }
            },
            ADMIN,
            ADMIN_SCOPE,
        )
        .await
        .with_context(|| format!("{method} {url}"))
    }

    /// A call that must succeed; answers its body.
    async fn ok(
        s: &crate::cli::creds::Session,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, v) = Self::call(s, method, path, body).await?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(crate::cli::client::api_error(status, &v))
        }
    }

    /// A call on something that may not exist: false on 404.
    async fn found(
        s: &crate::cli::creds::Session,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Option<Value>> {
        let (status, v) = Self::call(s, method, path, body).await?;
        match status.as_u16() {
            404 => Ok(None),
            _ if status.is_success() => Ok(Some(v)),
            _ => Err(crate::cli::client::api_error(status, &v)),
        }
    }

    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        admin: bool,
        groups: &[String],
    ) -> anyhow::Result<()> {
        match self {
            Self::Local(m) => accounts::add_user(m, name, password, admin, groups).await,
            Self::Remote(s) => Self::ok(
                s,
                reqwest::Method::POST,
                "/berth/v1/users",
                Some(json!({"name": name, "password": password, "admin": admin, "groups": groups})),
            )
            .await
            .map(drop),
        }
    }

    pub async fn set_password(&self, name: &str, password: &str) -> anyhow::Result<bool> {
        match self {
            Self::Local(m) => accounts::set_password(m, name, password).await,
            Self::Remote(s) => Ok(Self::found(
                s,
                reqwest::Method::PUT,
                &format!("/berth/v1/users/{}", seg(name)),
                Some(json!({ "password": password })),
            )
            .await?
            .is_some()),
        }
    }

    pub async fn delete_user(&self, name: &str) -> anyhow::Result<bool> {
        match self {
            Self::Local(m) => Ok(m.delete_user(name).await?),
            Self::Remote(s) => Ok(Self::found(
                s,
                reqwest::Method::DELETE,
                &format!("/berth/v1/users/{}", seg(name)),
                None,
            )
            .await?
            .is_some()),
        }
    }

    pub async fn users(&self) -> anyhow::Result<Vec<UserRow>> {
        match self {
            Self::Local(m) => Ok(m
                .users()
                .await?
                .into_iter()
                .map(|u| UserRow {
                    name: u.name,
                    admin: u.admin,
                    groups: u.groups,
                })
                .collect()),
            Self::Remote(s) => {
                let v = Self::ok(s, reqwest::Method::GET, "/berth/v1/users", None).await?;
                Ok(v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| UserRow {
                        name: u["name"].as_str().unwrap_or("").to_owned(),
                        admin: u["admin"] == true,
                        groups: u["groups"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|g| g.as_str().map(str::to_owned))
                            .collect(),
                    })
                    .collect())
            }
        }
    }

    /// Revokes the refresh tokens of `kind` (`user`/`robot`) `name`; None when it does not exist.
    pub async fn revoke_tokens(&self, kind: &str, name: &str) -> anyhow::Result<Option<u64>> {
        match self {
            Self::Local(m) => {
                let exists = match kind {
                    "user" => m.user(name).await?.is_some(),
                    _ => m.robot(name).await?.is_some(),
                };
                if !exists {
                    return Ok(None);
                }
                Ok(Some(
                    m.revoke_refresh_tokens(&format!("{kind}:{name}")).await?,
                ))
            }
            Self::Remote(s) => Ok(Self::found(
                s,
                reqwest::Method::POST,
                &format!("/berth/v1/{kind}s/{}/revoke-tokens", seg(name)),
                None,
            )
            .await?
            .map(|v| v["revoked"].as_u64().unwrap_or(0))),
        }
    }

    pub async fn create_robot(
        &self,
        name: &str,
        allow: &[String],
        expires: Option<&str>,
    ) -> anyhow::Result<String> {
        match self {
            Self::Local(m) => {
                let exp = expires.map(accounts::parse_duration).transpose()?;
                accounts::create_robot(m, name, allow, exp).await
            }
            Self::Remote(s) => {
                let v = Self::ok(
                    s,
                    reqwest::Method::POST,
                    "/berth/v1/robots",
                    Some(json!({"name": name, "allow": allow, "expires": expires})),
                )
                .await?;
                v["secret"]
                    .as_str()
                    .map(str::to_owned)
                    .context("the registry answered without the robot's secret")
            }
        }
    }

    /// Robots (without `robot$`) and when they expire (Unix seconds).
    pub async fn robots(&self) -> anyhow::Result<Vec<(String, Option<i64>)>> {
        match self {
            Self::Local(m) => Ok(m
                .robots()
                .await?
                .into_iter()
                .map(|r| (r.name, r.expires_at))
                .collect()),
            Self::Remote(s) => {
                let v = Self::ok(s, reqwest::Method::GET, "/berth/v1/robots", None).await?;
                Ok(v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let n = r["name"].as_str().unwrap_or("");
                        (
                            n.strip_prefix("robot$").unwrap_or(n).to_owned(),
                            r["expires_at"].as_i64(),
                        )
                    })
                    .collect())
            }
        }
    }

    pub async fn delete_robot(&self, name: &str) -> anyhow::Result<bool> {
        match self {
            Self::Local(m) => Ok(m.delete_robot(name).await?),
            Self::Remote(s) => Ok(Self::found(
                s,
                reqwest::Method::DELETE,
                &format!("/berth/v1/robots/{}", seg(name)),
                None,
            )
            .await?
            .is_some()),
        }
    }

    pub async fn grant(&self, principal: &str, pattern: &str, actions: &str) -> anyhow::Result<()> {
        match self {
            Self::Local(m) => accounts::grant(m, principal, pattern, actions).await,
            Self::Remote(s) => Self::ok(
                s,
                reqwest::Method::POST,
                "/berth/v1/permissions",
                Some(json!({"principal": principal, "pattern": pattern, "actions": actions})),
            )
            .await
            .map(drop),
        }
    }

    /// Every rule, or those of one principal, oldest first.
    pub async fn grants(&self, principal: Option<&str>) -> anyhow::Result<Vec<Rule>> {
        match self {
            Self::Local(m) => {
                let only: Vec<String> = principal.map(str::to_owned).into_iter().collect();
                Ok(m.permissions(&only)
                    .await?
                    .into_iter()
                    .map(|p| Rule {
                        id: p.id,
                        principal: p.principal,
                        pattern: p.pattern,
                        actions: p.actions,
                    })
                    .collect())
            }
            Self::Remote(s) => {
                let path = match principal {
                    Some(p) => format!("/berth/v1/permissions?principal={}", seg(p)),
                    None => "/berth/v1/permissions".to_owned(),
                };
                let v = Self::ok(s, reqwest::Method::GET, &path, None).await?;
                Ok(v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| Rule {
                        id: r["id"].as_i64().unwrap_or(0),
                        principal: r["principal"].as_str().unwrap_or("").to_owned(),
                        pattern: r["pattern"].as_str().unwrap_or("").to_owned(),
                        actions: r["actions"].as_str().unwrap_or("").to_owned(),
                    })
                    .collect())
            }
        }
    }

    /// Removes the rule `id`; false when there is none.
    pub async fn revoke_id(&self, id: i64) -> anyhow::Result<bool> {
        match self {
            Self::Local(m) => Ok(m.delete_permission(id).await?),
            Self::Remote(s) => Ok(Self::found(
                s,
                reqwest::Method::DELETE,
                &format!("/berth/v1/permissions/{id}"),
                None,
            )
            .await?
            .is_some()),
        }
    }

    /// Removes the rules of `principal` on exactly `pattern`; answers how many.
    pub async fn revoke(&self, principal: &str, pattern: &str) -> anyhow::Result<u64> {
        if let Self::Local(m) = self {
            return Ok(m.delete_permissions(principal, pattern).await?);
        }
        let mut n = 0;
        for r in self.grants(Some(principal)).await? {
            if r.pattern == pattern && self.revoke_id(r.id).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}
