//! Credentials of the client commands (`inspect`, `resolve`, `verify`): `--username` with
//! `--password-stdin` (or `--password`), `BERTH_USERNAME`/`BERTH_PASSWORD`, else docker's own
//! credential file (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`: an `auths`
//! entry's base64 `user:pass`, or the `identitytoken` docker login stores), as skopeo reads it.
//! Requests follow the registry token flow: without credentials a 401 challenge is answered
//! with an anonymous token, with an identity token by a refresh grant.

use anyhow::Context;
use base64::Engine;
use serde_json::Value;

/// The `NO_CREDS` message: nothing was given and the registry wants credentials.
pub const NO_CREDS: &str = "no credentials given (use --username/--password-stdin, BERTH_USERNAME/BERTH_PASSWORD or docker login)";

/// Credential flags shared by the client commands.
#[derive(Clone, Default, clap::Args)]
pub struct Args {
    /// User or robot (`robot$name`). Without it (and without BERTH_USERNAME) the registry's
    /// entry in docker's config.json ($DOCKER_CONFIG or ~/.docker; `docker login`) is used,
    /// else the command asks anonymously.
    #[arg(long, env = "BERTH_USERNAME", global = true)]
    pub username: Option<String>,
    /// Read the password or robot secret from standard input (one line).
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// The password (prefer --password-stdin or BERTH_PASSWORD: arguments are visible to
    /// other users of the machine).
    #[arg(long, env = "BERTH_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
}

/// What a request is sent with.
#[derive(Clone, Debug, PartialEq)]
pub enum Creds {
    None,
    Basic(String, String),
    /// A refresh token from `docker login` (config.json `identitytoken`).
    Identity(String),
}

/// `host[:port]` of a registry URL, as docker names registries.
pub fn registry_host(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

fn normalize_key(k: &str) -> String {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    k.split('/').next().unwrap_or("").to_ascii_lowercase()
}

/// The entry for `host` in a docker config.json text.
pub fn from_docker_config(text: &str, host: &str) -> Option<Creds> {
    let v: Value = serde_json::from_str(text).ok()?;
    let host = host.to_ascii_lowercase();
    let entry = v["auths"]
        .as_object()?
        .iter()
        .find(|(k, _)| normalize_key(k) == host)?
        .1;
    if let Some(t) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
        return Some(Creds::Identity(t.to_owned()));
    }
    let (u, p) = match entry["auth"].as_str().filter(|a| !a.is_empty()) {
        Some(a) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            (u.to_owned(), p.to_owned())
        }
        None => (
            entry["username"].as_str()?.to_owned(),
            entry["password"].as_str()?.to_owned(),
        ),
    };
    (!u.is_empty()).then_some(Creds::Basic(u, p))
}

fn docker_config_path() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(std::path::PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker/config.json"))
}

impl Args {
    /// Flags and environment first, then docker's config.json.
    pub fn resolve(&self, registry: &reqwest::Url) -> anyhow::Result<Creds> {
        if let Some(u) = &self.username {
            let p = if self.password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                self.password.clone().unwrap_or_default()
            };
            return Ok(Creds::Basic(u.clone(), p));
        }
        if self.password_stdin {
            anyhow::bail!("--password-stdin needs --username");
        }
        let host = registry_host(registry);
        Ok(docker_config_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| from_docker_config(&t, &host))
            .unwrap_or(Creds::None))
    }
}

/// An HTTP client for one registry's `/berth/v1/` API with the credentials resolved.
pub struct Session {
    pub http: reqwest::Client,
    pub base: reqwest::Url,
    pub creds: Creds,
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Session {
    pub fn new(registry: &str, args: &Args) -> anyhow::Result<Self> {
        let base =
            reqwest::Url::parse(registry).with_context(|| format!("registry URL {registry:?}"))?;
        let creds = args.resolve(&base)?;
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
            base,
            creds,
        })
    }

    fn wrong(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "wrong username or password for {}",
            registry_host(&self.base)
        )
    }

    /// A token from a Bearer challenge's realm: anonymous, or by the identity token's refresh
    /// grant (sent only to a realm on the registry's own origin).
    async fn token(
        &self,
        params: &std::collections::HashMap<String, String>,
        scope: &str,
    ) -> anyhow::Result<String> {
        let realm = params
            .get("realm")
            .context("a Bearer challenge without realm")?;
        let realm = reqwest::Url::parse(realm).with_context(|| format!("token realm {realm:?}"))?;
        let service = params.get("service").cloned().unwrap_or_default();
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| scope.to_owned());
        let resp = match &self.creds {
            Creds::Identity(t) if same_origin(&realm, &self.base) => {
                self.http
                    .post(realm.clone())
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", t.as_str()),
                        ("service", service.as_str()),
                        ("scope", scope.as_str()),
                        ("client_id", "berth-cli"),
                    ])
                    .send()
                    .await
            }
            _ => {
                self.http
                    .get(realm.clone())
                    .query(&[("service", service.as_str()), ("scope", scope.as_str())])
                    .send()
                    .await
            }
        }
        .with_context(|| format!("GET {realm}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.wrong());
        }
        if !status.is_success() {
            return Err(crate::cli::client::api_error(status, &body));
        }
        body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .map(str::to_owned)
            .context("the token endpoint answered without a token")
    }

    /// Sends a request (built fresh for each try by `build`) and answers its JSON. `repo`
    /// names the repository for messages; `scope` is asked for when the challenge names none.
    pub async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
        repo: &str,
        scope: &str,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.request(build, repo, scope).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(crate::cli::client::api_error(status, &body))
        }
    }

    /// As [`Session::send`], but answers any status past authentication with its body (for
    /// callers that tell a 404 from other errors); 401 and 403 are errors that say which.
    pub async fn request(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
        repo: &str,
        scope: &str,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let first = match &self.creds {
            Creds::Basic(u, p) => build().basic_auth(u, Some(p)),
            _ => build(),
        };
        let mut resp = first.send().await.context("contacting the registry")?;
        let mut bearer = false;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            if matches!(self.creds, Creds::Basic(..)) {
                return Err(self.wrong());
            }
            let challenge = resp
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(berth_auth::header::parse_challenge)
                .find(|(s, _)| s.eq_ignore_ascii_case("bearer"));
            let Some((_, params)) = challenge else {
                return Err(match self.creds {
                    Creds::None => anyhow::anyhow!(NO_CREDS),
                    _ => self.wrong(),
                });
            };
            let tok = self.token(&params, scope).await?;
            resp = build()
                .bearer_auth(tok)
                .send()
                .await
                .context("contacting the registry")?;
            bearer = true;
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let msg = body["errors"][0]["message"].as_str().unwrap_or("");
        match (status.as_u16(), &self.creds) {
            (401 | 403, Creds::None) => Err(anyhow::anyhow!(NO_CREDS)),
            (401, _) if bearer => Err(self.wrong()),
            (403, _) => Err(anyhow::anyhow!("access denied to {repo}: {msg}")),
            _ => Ok((status, body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = serde_json::json!({"auths": {
            "other:5000": {"auth": b64("x:y")},
            "http://127.0.0.1:5000/v2/": {"auth": b64("alice:p:w")},
            "id.example": {"auth": b64("bob:"), "identitytoken": "tok"},
        }})
        .to_string();
        assert_eq!(
            from_docker_config(&text, "127.0.0.1:5000"),
            Some(Creds::Basic("alice".into(), "p:w".into()))
        );
        assert_eq!(
            from_docker_config(&text, "ID.example"),
            Some(Creds::Identity("tok".into()))
        );
        assert_eq!(from_docker_config(&text, "127.0.0.1:5001"), None);
        assert_eq!(from_docker_config("not json", "x"), None);
    }
}
