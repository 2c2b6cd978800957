//! Mirror and pull-through cache definitions (`[[mirrors]]`, `[[proxy]]`, the admin API) and
//! their compiled filters: tag patterns, semver ranges and platform rules with Windows
//! `os.version` ranges or named builds (`ltsc2022`).

use berth_oci::platform::{normalize_arch, Platform, WindowsVersion};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A mirror: which upstream repositories, tags and platforms to copy, and where.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorDef {
    /// Name (letters, digits, `-`, `_`, `.`), used by `berth mirror run <name>` and the API.
    pub name: String,
    /// Upstream registry base URL, e.g. `https://mcr.microsoft.com`.
    pub upstream: String,
    /// How to authenticate to the upstream.
    #[serde(default)]
    pub auth: UpstreamAuth,
    /// Upstream repositories, e.g. `windows/servercore`.
    pub repositories: Vec<String>,
    /// Which tags.
    #[serde(default)]
    pub tags: TagFilter,
    /// Which index entries; empty keeps them all. An entry is kept when any rule matches.
    #[serde(default)]
    pub platforms: Vec<PlatformFilter>,
    /// Local repository prefix: `windows/servercore` lands in `<prefix>/windows/servercore`.
    #[serde(default)]
    pub prefix: String,
    /// Interval between scheduled runs in the server, e.g. `6h`, `30m`; none: runs on demand.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Foreign (non-distributable) layers: keep them as URLs, or fetch and store them.
    #[serde(default)]
    pub foreign_layers: ForeignLayers,
    /// A filtered index: `true` stores a sparse copy (same bytes, same digest, only the kept
    /// children present); `false` stores a new index naming its source digest in the
    /// `dev.berth.mirror.source-digest` annotation; unset follows the destination repository's
    /// `validation.sparse_index` policy.
    #[serde(default)]
    pub sparse_index: Option<bool>,
}

impl fmt::Debug for MirrorDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorDef")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("repositories", &self.repositories)
            .finish_non_exhaustive()
    }
}

/// A pull-through cache: local repositories under `prefix` proxy the upstream on a miss.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyDef {
    /// Local repository prefix, e.g. `hub`: `hub/library/busybox` is `library/busybox` upstream.
    pub prefix: String,
    /// Upstream registry base URL.
    pub upstream: String,
    /// How to authenticate to the upstream.
    #[serde(default)]
    pub auth: UpstreamAuth,
    /// A cached tag is checked again upstream (one HEAD) once it is older than this.
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl_secs: u64,
    /// How long to wait for the upstream to connect and start answering (response headers):
    /// past it a cached copy is served at once, and a miss fails with 502.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_secs: u64,
}

fn default_tag_ttl() -> u64 {
    300
}

fn default_upstream_timeout() -> u64 {
    5
}

impl fmt::Debug for ProxyDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyDef")
            .field("prefix", &self.prefix)
            .field("upstream", &self.upstream)
            .field("tag_ttl_secs", &self.tag_ttl_secs)
            .field("upstream_timeout_secs", &self.upstream_timeout_secs)
            .finish_non_exhaustive()
    }
}

/// Upstream credentials. Bearer challenges (`WWW-Authenticate: Bearer realm=...`, the Docker
/// token flow of Docker Hub and MCR) are answered in every mode, anonymously when no
/// credentials are given.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum UpstreamAuth {
    /// No credentials.
    #[default]
    Anonymous,
    /// HTTP Basic on every request.
    Basic(Credentials),
    /// The Docker token flow with these credentials at the realm.
    Token(Credentials),
}

/// A user name and where its password comes from: exactly one of `password`, `password_file`
/// (a mounted secret; trailing newlines are dropped) and `password_env` (a variable's name).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// The password itself (prefer the other two outside tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// An environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

impl Credentials {
    fn check(&self) -> Result<(), String> {
        let n = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            return Err("give exactly one of password, password_file, password_env".into());
        }
        Ok(())
    }

    /// The user name and the password, read from where it lives.
    pub fn resolve(&self) -> Result<(String, String), String> {
        self.check()?;
        let pw = if let Some(p) = &self.password {
            p.clone()
        } else if let Some(f) = &self.password_file {
            std::fs::read_to_string(f)
                .map_err(|e| format!("password_file {}: {e}", f.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned()
        } else {
            let v = self.password_env.as_deref().unwrap_or_default();
            std::env::var(v).map_err(|_| format!("password_env: {v} is not set"))?
        };
        Ok((self.username.clone(), pw))
    }
}

impl UpstreamAuth {
    /// The same, with an inline password replaced (for API answers).
    pub fn redacted(&self) -> Self {
        let hide = |c: &Credentials| Credentials {
            password: c.password.as_ref().map(|_| "***".to_owned()),
            ..c.clone()
        };
        match self {
            Self::Anonymous => Self::Anonymous,
            Self::Basic(c) => Self::Basic(hide(c)),
            Self::Token(c) => Self::Token(hide(c)),
        }
    }

    /// The credentials, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            Self::Anonymous => None,
            Self::Basic(c) | Self::Token(c) => Some(c),
        }
    }

    /// As [`UpstreamAuth::credentials`], to change them (paths made relative to the file).
    pub fn credentials_mut(&mut self) -> Option<&mut Credentials> {
        match self {
            Self::Anonymous => None,
            Self::Basic(c) | Self::Token(c) => Some(c),
        }
    }

    fn check(&self) -> Result<(), String> {
        self.credentials()
            .map_or(Ok(()), Credentials::check)
            .map_err(|e| format!("auth: {e}"))
    }
}

/// Which tags a mirror copies: those matching any `include` expression (all when empty), inside
/// the `semver` range (when set), and matching no `exclude` expression.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TagFilter {
    /// Regular expressions (unanchored; write `^...$` for whole tags).
    pub include: Vec<String>,
    /// A semver range, e.g. `>=1.2, <2`; tags that are not versions (a leading `v` is allowed,
    /// `1.2` reads as `1.2.0`) are left out.
    pub semver: Option<String>,
    /// Regular expressions of tags to leave out.
    pub exclude: Vec<String>,
}

/// One platform rule; unset fields match anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformFilter {
    /// `linux`, `windows`, ...
    pub os: Option<String>,
    /// `amd64`, `arm64`, ...
    pub architecture: Option<String>,
    /// `v8`, `v7`, ...
    pub variant: Option<String>,
    /// Windows builds: `ltsc2022`, `10.0.20348`, `>=10.0.20348`, `>=ltsc2019, <ltsc2025`. A
    /// version without UBR compares major.minor.build only. Entries without a parseable
    /// `os.version` never match a rule that sets it.
    pub os_version: Option<String>,
}

/// What happens to foreign layers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ForeignLayers {
    /// Leave them where their `urls` say (the manifest is unchanged either way).
    #[default]
    Keep,
    /// Fetch them (from the upstream registry, else their `urls`), check and store them.
    Fetch,
}

/// Parses `90s`, `30m`, `6h`, `1d` (or plain seconds).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not an interval like 30m, 6h or 1d"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    if n == 0 {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(Duration::from_secs(n * mul))
}

/// A comparison in an `os_version` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ge,
    Gt,
    Le,
    Lt,
}

/// A compiled `os_version` rule: every comparison must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange(Vec<(Op, WindowsVersion)>);

impl VersionRange {
    /// Parses `ltsc2022`, `10.0.20348`, `>=10.0.17763.5000`, `>=ltsc2019, <ltsc2025`, `20348`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("{s:?}: empty comparison"));
            }
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("==", Op::Eq),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(p, op)| part.strip_prefix(p).map(|r| (*op, r.trim())))
            .unwrap_or((Op::Eq, part));
            let v = if let Some(b) = WindowsVersion::build_for_name(rest) {
                WindowsVersion::ten(b)
            } else if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                WindowsVersion::ten(rest.parse().map_err(|_| format!("{rest:?}: bad build"))?)
            } else {
                rest.parse::<WindowsVersion>().map_err(|e| {
                    format!("{rest:?} is neither a Windows version (10.0.20348) nor a named build (ltsc2022): {e}")
                })?
            };
            out.push((op, v));
        }
        Ok(Self(out))
    }

    /// Whether an image's `os.version` is in the range.
    pub fn contains(&self, v: &WindowsVersion) -> bool {
        self.0.iter().all(|(op, want)| {
            let ord = if want.ubr.is_some() {
                (v.major, v.minor, v.build, v.ubr.unwrap_or(0)).cmp(&(
                    want.major,
                    want.minor,
                    want.build,
                    want.ubr.unwrap_or(0),
                ))
            } else {
                (v.major, v.minor, v.build).cmp(&(want.major, want.minor, want.build))
            };
            match op {
                Op::Eq => ord.is_eq(),
                Op::Ge => ord.is_ge(),
                Op::Gt => ord.is_gt(),
                Op::Le => ord.is_le(),
                Op::Lt => ord.is_lt(),
            }
        })
    }
}

/// A platform rule, compiled.
#[derive(Debug, Clone)]
struct PlatformRule {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
    os_version: Option<VersionRange>,
}

impl PlatformRule {
    fn matches(&self, p: &Platform) -> bool {
        let (arch, variant) = normalize_arch(&p.architecture, p.variant_str());
        if let Some(os) = &self.os {
            if !os.eq_ignore_ascii_case(&p.os) {
                return false;
            }
        }
        if let Some(a) = &self.architecture {
            if normalize_arch(a, "").0 != arch {
                return false;
            }
        }
        if let Some(v) = &self.variant {
            if !v.eq_ignore_ascii_case(&variant) && !v.eq_ignore_ascii_case(p.variant_str()) {
                return false;
            }
        }
        if let Some(r) = &self.os_version {
            match p.windows_version() {
                Some(v) if r.contains(&v) => {}
                _ => return false,
            }
        }
        true
    }
}

/// A mirror's filters, compiled.
#[derive(Debug, Clone)]
pub struct Filters {
    include: Vec<regex::Regex>,
    exclude: Vec<regex::Regex>,
    semver: Option<semver::VersionReq>,
    platforms: Vec<PlatformRule>,
}

fn lenient_semver(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = semver::Version::parse(t) {
        return Some(v);
    }
    // `1.2` and `1` read as `1.2.0` and `1.0.0`, as tag conventions use them.
    let (core, rest) = match t.find(['-', '+']) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n = core.split('.').count();
    if n == 0
        || n > 2
        || !core
            .split('.')
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let padded = if n == 1 {
        format!("{core}.0.0{rest}")
    } else {
        format!("{core}.0{rest}")
    };
    semver::Version::parse(&padded).ok()
}

impl Filters {
    /// Compiles tag and platform filters, naming the field that is wrong.
    pub fn new(tags: &TagFilter, platforms: &[PlatformFilter]) -> Result<Self, String> {
        let re = |field: &str, v: &[String]| {
            v.iter()
                .map(|s| regex::Regex::new(s).map_err(|e| format!("tags.{field}: {s:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let semver = tags
            .semver
            .as_deref()
            .map(|s| semver::VersionReq::parse(s).map_err(|e| format!("tags.semver: {s:?}: {e}")))
            .transpose()?;
        let platforms = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(PlatformRule {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                    os_version: p
                        .os_version
                        .as_deref()
                        .map(VersionRange::parse)
                        .transpose()
                        .map_err(|e| format!("platforms[{i}].os_version: {e}"))?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            include: re("include", &tags.include)?,
            exclude: re("exclude", &tags.exclude)?,
            semver,
            platforms,
        })
    }

    /// Whether a tag is mirrored.
    pub fn tag(&self, tag: &str) -> bool {
        if !self.include.is_empty() && !self.include.iter().any(|r| r.is_match(tag)) {
            return false;
        }
        if let Some(req) = &self.semver {
            match lenient_semver(tag) {
                Some(v) if req.matches(&v) => {}
                _ => return false,
            }
        }
        !self.exclude.iter().any(|r| r.is_match(tag))
    }

    /// Whether platforms are filtered at all.
    pub fn filters_platforms(&self) -> bool {
        !self.platforms.is_empty()
    }

    /// Whether an index entry with this platform is kept (entries without one are kept only
    /// when no platform rule is set).
    pub fn platform(&self, p: Option<&Platform>) -> bool {
        if self.platforms.is_empty() {
            return true;
        }
        p.is_some_and(|p| self.platforms.iter().any(|r| r.matches(p)))
    }
}

/// Checks a mirror definition; the error names the field.
pub fn validate_mirror(d: &MirrorDef) -> Result<Filters, String> {
    if d.name.is_empty()
        || !d
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "name: {:?} must be letters, digits, '-', '_' or '.'",
            d.name
        ));
    }
    validate_upstream(&d.upstream).map_err(|e| format!("upstream: {e}"))?;
    if d.repositories.is_empty() {
        return Err("repositories: name at least one".into());
    }
    for r in &d.repositories {
        r.parse::<berth_oci::RepoName>()
            .map_err(|e| format!("repositories: {r:?}: {e}"))?;
        dest_repo(&d.prefix, r)
            .parse::<berth_oci::RepoName>()
            .map_err(|e| format!("prefix: {:?} + {r:?}: {e}", d.prefix))?;
    }
    if let Some(s) = &d.schedule {
        parse_interval(s).map_err(|e| format!("schedule: {e}"))?;
    }
    d.auth.check()?;
    Filters::new(&d.tags, &d.platforms)
}

/// Checks a pull-through cache definition.
pub fn validate_proxy(p: &ProxyDef) -> Result<(), String> {
    validate_upstream(&p.upstream).map_err(|e| format!("upstream: {e}"))?;
    p.auth.check()?;
    if p.upstream_timeout_secs == 0 {
        return Err("upstream_timeout_secs: must be > 0".into());
    }
    let prefix = p.prefix.trim_end_matches('/');
    prefix
        .parse::<berth_oci::RepoName>()
        .map_err(|e| format!("prefix: {:?}: {e}", p.prefix))?;
    Ok(())
}

fn validate_upstream(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("{u:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{u:?}: an http(s) URL with a host"));
    }
    Ok(())
}

/// The local repository of an upstream one.
pub fn dest_repo(prefix: &str, repo: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        repo.to_owned()
    } else {
        format!("{p}/{repo}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(v: &str) -> Platform {
        Platform::new("windows", "amd64").with_os_version(v)
    }

    #[test]
    fn os_version_ranges_and_names() {
        let r = VersionRange::parse("ltsc2022").unwrap();
        assert!(r.contains(&"10.0.20348.2527".parse().unwrap()));
        assert!(!r.contains(&"10.0.17763.5936".parse().unwrap()));
        let r = VersionRange::parse(">=ltsc2019, <ltsc2025").unwrap();
        assert!(r.contains(&"10.0.17763.1".parse().unwrap()));
        assert!(r.contains(&"10.0.20348.9".parse().unwrap()));
        assert!(!r.contains(&"10.0.26100.1742".parse().unwrap()));
        let r = VersionRange::parse(">=10.0.20348.2000").unwrap();
        assert!(r.contains(&"10.0.20348.2527".parse().unwrap()));
        assert!(!r.contains(&"10.0.20348.999".parse().unwrap()));
        assert!(VersionRange::parse("ltsc2099").is_err());
        assert!(VersionRange::parse(">=").is_err());
        assert_eq!(
            VersionRange::parse("20348").unwrap(),
            VersionRange::parse("ltsc2022").unwrap()
        );
    }

    #[test]
    fn platform_rules() {
        let f = Filters::new(
            &TagFilter::default(),
            &[
                PlatformFilter {
                    os: Some("windows".into()),
                    os_version: Some("ltsc2022".into()),
                    ..Default::default()
                },
                PlatformFilter {
                    os: Some("linux".into()),
                    architecture: Some("arm64".into()),
                    ..Default::default()
                },
            ],
        )
        .unwrap();
        assert!(f.platform(Some(&win("10.0.20348.1"))));
        assert!(!f.platform(Some(&win("10.0.17763.1"))));
        assert!(!f.platform(Some(&Platform::new("windows", "amd64"))));
        assert!(f.platform(Some(&Platform::new("linux", "aarch64"))));
        assert!(!f.platform(Some(&Platform::new("linux", "amd64"))));
        assert!(!f.platform(None));
        let all = Filters::new(&TagFilter::default(), &[]).unwrap();
        assert!(all.platform(None));
    }

    #[test]
    fn tag_rules() {
        let f = Filters::new(
            &TagFilter {
                include: vec![r"^v?\d".into()],
                semver: Some(">=1.2, <2".into()),
                exclude: vec!["-rc".into()],
            },
            &[],
        )
        .unwrap();
        assert!(f.tag("1.2.3"));
        assert!(f.tag("v1.4"));
        assert!(!f.tag("1.1.9"));
        assert!(!f.tag("2.0.0"));
        assert!(!f.tag("1.5.0-rc1"));
        assert!(!f.tag("latest"));
        let re = Filters::new(
            &TagFilter {
                include: vec!["^ltsc".into()],
                exclude: vec!["2019".into()],
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        assert!(re.tag("ltsc2022"));
        assert!(!re.tag("ltsc2019"));
        assert!(!re.tag("latest"));
        assert!(Filters::new(
            &TagFilter {
                semver: Some("nope".into()),
                ..Default::default()
            },
            &[]
        )
        .is_err());
    }

    #[test]
    fn credentials_come_from_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = Credentials {
            username: "u".into(),
            password_file: Some(f),
            ..Default::default()
        };
        assert_eq!(c.resolve().unwrap(), ("u".into(), "s3cret".into()));
        let both = Credentials {
            password: Some("x".into()),
            ..c.clone()
        };
        assert!(both.resolve().is_err());
        let none = Credentials {
            username: "u".into(),
            ..Default::default()
        };
        assert!(none.resolve().is_err());
        let a = UpstreamAuth::Basic(Credentials {
            username: "u".into(),
            password: Some("p".into()),
            ..Default::default()
        });
        assert_eq!(
            a.redacted().credentials().unwrap().password.as_deref(),
            Some("***")
        );
        let t: UpstreamAuth =
            serde_json::from_str(r#"{"type":"token","username":"u","password_env":"X"}"#).unwrap();
        assert!(matches!(t, UpstreamAuth::Token(_)));
        assert!(serde_json::from_str::<UpstreamAuth>(
            r#"{"type":"token","username":"u","pasword":"X"}"#
        )
        .is_err());
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("6h").unwrap(), Duration::from_secs(21600));
        assert_eq!(parse_interval("90").unwrap(), Duration::from_secs(90));
        assert!(parse_interval("0m").is_err());
        assert!(parse_interval("5y").is_err());
    }
}
