//! Configuration: embedded defaults, then a TOML file, then `BERTH_*` environment variables,
//! then command-line flags. Library crates never read configuration; they take typed values.

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Where blobs, uploads and the SQLite database live.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Blob storage.
    pub storage: StorageConfig,
    /// Request limits.
    pub limits: Limits,
    /// Upload sessions.
    pub uploads: Uploads,
    /// Manifest validation policies.
    pub validation: crate::registry::policy::Validation,
    /// Access control.
    pub auth: AuthConfig,
    /// HTTPS.
    pub tls: TlsConfig,
    /// The verification gate (docs/VERIFY.md).
    pub verify: crate::registry::verification::VerifyConfig,
    /// Mirrors of upstream repositories (docs/MIRROR.md).
    pub mirrors: Vec<crate::mirror::def::MirrorDef>,
    /// Pull-through caches (docs/MIRROR.md).
    pub proxy: Vec<crate::mirror::def::ProxyDef>,
    /// Garbage collection (docs/LIFECYCLE.md).
    pub gc: crate::registry::gc::GcConfig,
    /// Byte quotas per repository pattern (`[[quotas]]`).
    pub quotas: Vec<crate::registry::quota::QuotaDef>,
    /// Tag rules: immutable tags (docs/LIFECYCLE.md).
    pub tags: crate::registry::immutable::TagsConfig,
    /// Retention: which tags are removed on a schedule (docs/LIFECYCLE.md).
    pub retention: crate::registry::retention::RetentionConfig,
}

/// Access control (docs/AUTH.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` or `token`.
    pub mode: AuthMode,
    /// `service` in challenges, `aud` of tokens.
    pub service: String,
    /// `iss` of the tokens berth signs.
    pub issuer: String,
    /// Token endpoint for challenges (e.g. `https://registry.example.com/auth/token`); empty:
    /// `<scheme>://<listen address>/auth/token`, where an unspecified listen IP (`0.0.0.0`,
    /// `::`) is replaced by the local address the client connected to. Never the Host header.
    pub realm: String,
    /// Access token lifetime (at least 60).
    pub token_ttl_secs: u64,
    /// Refresh token lifetime.
    pub refresh_ttl_secs: u64,
    /// Repository patterns anyone may pull.
    pub anonymous_pull: Vec<String>,
    /// Failed logins per (account, client IP) pair per minute before that pair gets 429.
    /// Other accounts from the same IP are never throttled by it (ten times as many failures
    /// from one IP over all accounts are only logged).
    pub failed_login_limit: u32,
    /// Password verifications (argon2, ~19 MiB each) running at once; 0: the number of CPUs.
    /// Logins beyond these and a short queue get 429.
    pub max_concurrent_logins: usize,
    /// External issuers whose tokens are accepted.
    pub trust: Vec<TrustConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            service: "berth".into(),
            issuer: "berth".into(),
            realm: String::new(),
            token_ttl_secs: 300,
            refresh_ttl_secs: 30 * 24 * 3600,
            anonymous_pull: vec![],
            failed_login_limit: 10,
            max_concurrent_logins: 0,
            trust: vec![],
        }
    }
}

/// Auth modes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone may do everything.
    None,
    /// Docker registry token authentication.
    Token,
}

/// An external token issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Its `iss`.
    pub issuer: String,
    /// A JWKS file with its keys.
    #[serde(default)]
    pub jwks: Option<PathBuf>,
    /// A PEM public key (EC P-256 or RSA).
    #[serde(default)]
    pub public_key: Option<PathBuf>,
}

/// HTTPS settings: both files set means berth serves TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// A client that has not completed the TLS handshake this long after connecting is
    /// disconnected.
    pub handshake_timeout_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            handshake_timeout_secs: 10,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:5000".into(),
            data_dir: PathBuf::from("./berth-data"),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            limits: Limits::default(),
            uploads: Uploads::default(),
            validation: Default::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            verify: Default::default(),
            mirrors: vec![],
            proxy: vec![],
            gc: Default::default(),
            quotas: vec![],
            tags: Default::default(),
            retention: Default::default(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `berth_server=debug,info`. `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Blob storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Which backend keeps blob bytes.
    pub backend: Backend,
    /// Whether DELETE of manifests, tags and blobs is allowed (else 405 UNSUPPORTED).
    pub delete_enabled: bool,
    /// fsync blob bytes before acknowledging them (default). `false` trades power-loss
    /// durability for speed on slow disks; a killed process still loses nothing.
    pub fsync: bool,
    /// The S3 backend's settings (`backend = "s3"`).
    pub s3: berth_storage::blob::s3::S3Settings,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Filesystem,
            delete_enabled: true,
            fsync: true,
            s3: Default::default(),
        }
    }
}

/// Blob storage backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files under `data_dir`.
    Filesystem,
    /// An S3 bucket (`[storage.s3]`).
    S3,
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest manifest accepted; larger ones get 413.
    pub manifest_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            manifest_max_bytes: 4 << 20,
        }
    }
}

/// Upload sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uploads {
    /// An upload untouched for this long is removed with its bytes.
    pub ttl_secs: u64,
    /// How often stale uploads are looked for.
    pub purge_interval_secs: u64,
}

impl Default for Uploads {
    fn default() -> Self {
        Self {
            ttl_secs: 24 * 3600,
            purge_interval_secs: 600,
        }
    }
}

/// The top-level keys of [`Config`], which `BERTH_*` variables may set.
const CONFIG_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "log",
    "storage",
    "limits",
    "uploads",
    "validation",
    "auth",
    "tls",
    "verify",
    "mirrors",
    "proxy",
    "gc",
    "tags",
    "retention",
    "quotas",
];

/// One configuration error in the file's own terms: the key as TOML writes it
/// (`mirrors[0].upstream`), where it came from (the file, or the `BERTH_*` variable), and what
/// is wrong, with the keys the section takes. figment's own text names its profile
/// (`default.storage...`), quotes lists in doubled backticks and names the file twice.
fn describe(e: figment::Error) -> String {
    use figment::error::Kind;
    let mut path: Vec<String> = e.path.iter().map(|k| k.to_ascii_lowercase()).collect();
    if let Kind::MissingField(f) = &e.kind {
        path.push(f.to_string());
    }
    let key = |p: &[String]| {
        p.iter().fold(String::new(), |mut k, seg| {
            if seg.parse::<usize>().is_ok() {
                k.push_str(&format!("[{seg}]"));
            } else {
                if !k.is_empty() {
                    k.push('.');
                }
                k.push_str(seg);
            }
            k
        })
    };
    let section = match path.len() {
        0 | 1 => "the top level".to_owned(),
        n => format!("[{}]", key(&path[..n - 1])),
    };
    let one_of = |got: &str, names: &[&str]| {
        let close = names
            .iter()
            .map(|n| (strsim::levenshtein(got, n), n))
            .filter(|(d, n)| *d <= 2.max(n.len() / 4))
            .min();
        let hint = close.map_or(String::new(), |(_, n)| format!(" (did you mean {n:?}?)"));
        format!("{}{hint}", names.join(", "))
    };
    let what = match &e.kind {
        Kind::UnknownField(f, names) => {
            format!("unknown key; {section} takes {}", one_of(f, names))
        }
        Kind::UnknownVariant(v, names) => {
            format!("unknown value {v:?}; accepted: {}", one_of(v, names))
        }
        Kind::MissingField(_) => format!("missing: {section} needs it"),
        Kind::InvalidType(got, want) | Kind::InvalidValue(got, want) => {
            format!("expected {want}, found {got}")
        }
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    };
    let from = match e.metadata.as_ref() {
        Some(m) => match &m.source {
            Some(figment::Source::File(f)) => Some(f.display().to_string()),
            _ if m.name.contains("environment") => Some(format!(
                "environment variable BERTH_{}",
                e.path.join("__").to_ascii_uppercase()
            )),
            _ => None,
        },
        None => None,
    };
    match (path.is_empty(), from) {
        (true, Some(from)) => format!("{from}: {what}"),
        (true, None) => what,
        (false, Some(from)) => format!("key {:?} in {from}: {what}", key(&path)),
        (false, None) => format!("key {:?}: {what}", key(&path)),
    }
}

impl Config {
    /// Defaults, then the file (if any), then `BERTH_*` variables.
    pub fn load(file: Option<&Path>, with_env: bool) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        if with_env {
            // Only variables that name a configuration section: BERTH_URL (the CLI's registry)
            // and other BERTH_* variables of tools around berth must not stop it starting.
            fig = fig.merge(Env::prefixed("BERTH_").split("__").filter(|k| {
                // Keys keep the variable's case (figment's `Uncased`): compare in lowercase.
                let top = k
                    .as_str()
                    .split('.')
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                CONFIG_KEYS.contains(&top.as_str())
            }));
        }
        let mut cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(describe).collect();
            anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
        })?;
        // The rest names keys, not where they came from: say which file was read.
        let name_file = |e: anyhow::Error| match file {
            Some(f) => anyhow::anyhow!("{}: {e:#}", f.display()),
            None => e,
        };
        if let Some(f) = file {
            cfg.relative_to_file(&fig, f).map_err(name_file)?;
        }
        cfg.validate().map_err(name_file)?;
        Ok(cfg)
    }

    /// Relative paths written in the file name files beside it, wherever the command runs
    /// (`berth user add --config /etc/berth/berth.toml` from any directory uses the server's
    /// database). Paths from `BERTH_*` variables and flags stay relative to the working directory.
    fn relative_to_file(&mut self, fig: &Figment, file: &Path) -> anyhow::Result<()> {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::fs::canonicalize(parent)
            .with_context(|| format!("the directory of {}", file.display()))?;
        let in_file = |key: &str| {
            fig.find_metadata(key)
                .and_then(|m| m.source.as_ref())
                .is_some_and(|s| matches!(s, figment::Source::File(_)))
        };
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                let rel: PathBuf = p
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::CurDir))
                    .collect();
                *p = base.join(rel);
            }
        };
        if in_file("data_dir") {
            fix(&mut self.data_dir);
        }
        if in_file("tls.cert") {
            self.tls.cert.iter_mut().for_each(fix);
        }
        if in_file("tls.key") {
            self.tls.key.iter_mut().for_each(fix);
        }
        if in_file("auth.trust") {
            for t in &mut self.auth.trust {
                t.jwks
                    .iter_mut()
                    .chain(t.public_key.iter_mut())
                    .for_each(fix);
            }
        }
        // Each list comes from one source as a whole (arrays are not merged key by key).
        let mut auths: Vec<&mut crate::mirror::def::UpstreamAuth> = Vec::new();
        if in_file("mirrors") {
            auths.extend(self.mirrors.iter_mut().map(|m| &mut m.auth));
        }
        if in_file("proxy") {
            auths.extend(self.proxy.iter_mut().map(|p| &mut p.auth));
        }
        for c in auths.into_iter().filter_map(|a| a.credentials_mut()) {
            c.password_file.iter_mut().for_each(fix);
        }
        Ok(())
    }

    /// Reads the files the configuration names, as `serve` will: the TLS certificate and key,
    /// trusted issuers' keys, mirror password files. `check-config` and `serve` run it before
    /// anything starts, so a missing file is named up front.
    pub fn check_files(&self) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            crate::tls::check(cert, key)?;
        }
        for t in &self.auth.trust {
            let bad = |what: &Path, e: String| {
                anyhow::anyhow!(
                    "invalid value for key \"auth.trust\": issuer {:?}: {}: {e}",
                    t.issuer,
                    what.display()
                )
            };
            if let Some(j) = &t.jwks {
                let text = std::fs::read_to_string(j).map_err(|e| bad(j, e.to_string()))?;
                berth_auth::token::KeySet::check_jwks(&text).map_err(|e| bad(j, e.to_string()))?;
            }
            if let Some(p) = &t.public_key {
                let text = std::fs::read_to_string(p).map_err(|e| bad(p, e.to_string()))?;
                berth_auth::token::KeySet::check_pem(&text).map_err(|e| bad(p, e.to_string()))?;
            }
        }
        let named = self
            .mirrors
            .iter()
            .map(|m| (format!("mirror {:?}", m.name), &m.auth))
            .chain(
                self.proxy
                    .iter()
                    .map(|p| (format!("proxy {:?}", p.prefix), &p.auth)),
            );
        for (who, a) in named {
            if let Some(f) = a.credentials().and_then(|c| c.password_file.as_ref()) {
                std::fs::metadata(f).map_err(|e| {
                    anyhow::anyhow!("{who}: auth.password_file {}: {e}", f.display())
                })?;
            }
        }
        Ok(())
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen.parse::<SocketAddr>().map_err(|e| {
            anyhow::anyhow!("invalid value for key \"listen\": {:?}: {e}", self.listen)
        })?;
        if self.limits.manifest_max_bytes == 0 {
            anyhow::bail!("invalid value for key \"limits.manifest_max_bytes\": must be > 0");
        }
        if self.uploads.ttl_secs == 0 || self.uploads.purge_interval_secs == 0 {
            anyhow::bail!(
                "invalid value for key \"uploads\": ttl_secs and purge_interval_secs must be > 0"
            );
        }
        crate::registry::policy::Policies::new(self.validation.clone())
            .map_err(|e| anyhow::anyhow!("invalid value for key \"validation\": {e}"))?;
        self.gc.interval()?;
        crate::registry::quota::validate(&self.quotas)?;
        crate::registry::immutable::Rules::new(self.tags.clone())
            .map_err(|e| anyhow::anyhow!("invalid value for key \"tags\": {e:#}"))?;
        crate::registry::retention::Rules::new(self.retention.clone())
            .map_err(|e| anyhow::anyhow!("invalid value for key \"retention\": {e:#}"))?;
        crate::registry::verification::Policies::new(self.verify.clone())
            .map_err(|e| anyhow::anyhow!("invalid value for key \"verify\": {e}"))?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            anyhow::anyhow!(
                "invalid value for key \"log.level\": {:?}: {e}",
                self.log.level
            )
        })?;
        if self.auth.token_ttl_secs < 60 {
            anyhow::bail!("invalid value for key \"auth.token_ttl_secs\": must be at least 60");
        }
        if self.tls.handshake_timeout_secs == 0 {
            anyhow::bail!("invalid value for key \"tls.handshake_timeout_secs\": must be > 0");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            anyhow::bail!("invalid value for key \"tls\": set both cert and key, or neither");
        }
        for t in &self.auth.trust {
            if t.jwks.is_none() && t.public_key.is_none() {
                anyhow::bail!(
                    "invalid value for key \"auth.trust\": issuer {:?} needs jwks or public_key",
                    t.issuer
                );
            }
            // Local principals are recognised by berth's own `iss`: a trusted issuer of the
            // same name would mint tokens for local users and admins.
            if t.issuer == self.auth.issuer {
                anyhow::bail!(
                    "invalid value for key \"auth.trust\": issuer {:?} is auth.issuer, berth's own \
                     name; give this berth (or the trusted one) another auth.issuer",
                    t.issuer
                );
            }
        }
        if self.storage.backend == Backend::S3 {
            if self.storage.s3.bucket.is_empty() {
                anyhow::bail!(
                    "invalid value for key \"storage.s3.bucket\": required when backend = \"s3\""
                );
            }
            if self.storage.s3.part_size < berth_storage::blob::s3::MIN_PART {
                anyhow::bail!(
                    "invalid value for key \"storage.s3.part_size\": at least 5 MiB (5242880)"
                );
            }
        }
        crate::mirror::validate_config(&self.mirrors, &self.proxy)?;
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!("invalid value for key \"data_dir\": empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, false).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5000");
        assert!(c.storage.delete_enabled);
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure type")]
    fn env_overrides_nested_keys_and_ignores_others() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BERTH_STORAGE__DELETE_ENABLED", "false");
            jail.set_env("BERTH_LIMITS__MANIFEST_MAX_BYTES", "1024");
            jail.set_env("BERTH_LISTEN", "127.0.0.1:1234");
            jail.set_env("BERTH_URL", "http://elsewhere");
            let c = Config::load(None, true).map_err(|e| e.to_string())?;
            assert!(!c.storage.delete_enabled);
            assert_eq!(c.limits.manifest_max_bytes, 1024);
            assert_eq!(c.listen, "127.0.0.1:1234");
            Ok(())
        });
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[storage]\nbogus = 1\n").unwrap();
        let e = Config::load(Some(&f), false).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&f, "listen = \"nope\"\n").unwrap();
        let e = Config::load(Some(&f), false).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        std::fs::write(&f, "[log]\nformat = \"xml\"\n").unwrap();
        let e = Config::load(Some(&f), false).unwrap_err().to_string();
        assert!(e.contains("format"), "{e}");
    }

    /// Found in review: a trusted issuer named like berth's own made its tokens name local
    /// users (and admins), since local principals are recognised by `iss`.
    #[test]
    fn a_trusted_issuer_cannot_share_berths_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[auth]\nissuer = \"berth\"\n[[auth.trust]]\nissuer = \"berth\"\npublic_key = \"k.pem\"\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), false).unwrap_err().to_string();
        assert!(e.contains("auth.trust") && e.contains("auth.issuer"), "{e}");
    }

    #[test]
    fn mirrors_and_proxies() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let ok = r#"
[[mirrors]]
name = "servercore"
upstream = "https://mcr.microsoft.com"
repositories = ["windows/servercore", "windows/nanoserver"]
prefix = "mirror/mcr.microsoft.com"
schedule = "6h"
foreign_layers = "fetch"
sparse_index = true
auth = { type = "token", username = "u", password = "p" }
tags = { include = ["^ltsc"], exclude = ["-amd64$"] }
[[mirrors.platforms]]
os = "windows"
os_version = ">=ltsc2022"

[[proxy]]
prefix = "hub"
upstream = "https://registry-1.docker.io"
tag_ttl_secs = 60
"#;
        std::fs::write(&f, ok).unwrap();
        let c = Config::load(Some(&f), false).unwrap();
        assert_eq!(
            c.mirrors[0].platforms[0].os_version.as_deref(),
            Some(">=ltsc2022")
        );
        assert_eq!(c.proxy[0].tag_ttl_secs, 60);
        let bad = ok.replace("\">=ltsc2022\"", "\"ltsc2099\"");
        std::fs::write(&f, bad).unwrap();
        let e = Config::load(Some(&f), false).unwrap_err().to_string();
        assert!(e.contains("os_version"), "{e}");
        let bad = ok.replace("schedule = \"6h\"", "shedule = \"6h\"");
        std::fs::write(&f, bad).unwrap();
        let e = Config::load(Some(&f), false).unwrap_err().to_string();
        assert!(e.contains("shedule"), "{e}");
    }
}
