//! Validation policy per repository pattern: how strictly index entries are checked against
//! their images, whether sparse indexes are accepted, and where foreign layers may live.

use berth_oci::RepoPattern;
use serde::{Deserialize, Serialize};

/// What happens when an index entry disagrees with its image config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlatformCheck {
    /// Refuse the index with MANIFEST_INVALID naming the entry and the fields.
    Reject,
    /// Accept it, answer with `Warning: 299` headers and store a finding.
    #[default]
    Warn,
    /// Do not check.
    Off,
}

/// A rule for the repositories matching `pattern`. Unset fields fall back to the defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoRule {
    /// Repository pattern (`*` within a component, `**` across).
    pub pattern: RepoPattern,
    /// Platform check for these repositories.
    #[serde(default)]
    pub platform_check: Option<PlatformCheck>,
    /// Accept indexes whose children are absent.
    #[serde(default)]
    pub sparse_index: Option<bool>,
}

/// The validation section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Validation {
    /// Default platform check.
    pub platform_check: PlatformCheck,
    /// Default for sparse indexes.
    pub sparse_index: bool,
    /// Regular expressions a foreign layer URL must match (one of them).
    pub foreign_layer_allow: Vec<String>,
    /// Regular expressions no foreign layer URL may match.
    pub foreign_layer_deny: Vec<String>,
    /// Per-repository rules; the first matching rule wins.
    pub repositories: Vec<RepoRule>,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            platform_check: PlatformCheck::Warn,
            sparse_index: false,
            // The image spec expects registries to take existing images with non-distributable
            // layers, wherever their URLs point; a Windows mirror can narrow this to Microsoft's.
            foreign_layer_allow: vec![r"^https://".into()],
            foreign_layer_deny: vec![],
            repositories: vec![],
        }
    }
}

/// The policy that applies to one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    /// Platform check.
    pub platform_check: PlatformCheck,
    /// Sparse indexes accepted.
    pub sparse_index: bool,
}

/// Compiled validation settings.
#[derive(Debug, Clone)]
pub struct Policies {
    validation: Validation,
    allow: Vec<regex::Regex>,
    deny: Vec<regex::Regex>,
}

impl Policies {
    /// Compiles the URL expressions.
    pub fn new(validation: Validation) -> Result<Self, regex::Error> {
        let compile = |v: &[String]| {
            v.iter()
                .map(|s| regex::Regex::new(s))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow: compile(&validation.foreign_layer_allow)?,
            deny: compile(&validation.foreign_layer_deny)?,
            validation,
        })
    }

    /// The policy for `repo`.
    pub fn for_repo(&self, repo: &str) -> Effective {
        let v = &self.validation;
        let rule = v.repositories.iter().find(|r| r.pattern.matches(repo));
        Effective {
            platform_check: rule
                .and_then(|r| r.platform_check)
                .unwrap_or(v.platform_check),
            sparse_index: rule.and_then(|r| r.sparse_index).unwrap_or(v.sparse_index),
        }
    }

    /// Why a foreign layer URL is refused, or `None` when it is allowed.
    pub fn refuse_url(&self, url: &str) -> Option<String> {
        if let Some(d) = self.deny.iter().find(|d| d.is_match(url)) {
            return Some(format!(
                "URL {url:?} matches the deny rule {:?}",
                d.as_str()
            ));
        }
        if !self.allow.iter().any(|a| a.is_match(url)) {
            return Some(format!("URL {url:?} matches no foreign-layer allow rule"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_accepts_any_https_url() {
        let p = Policies::new(Validation::default()).unwrap();
        assert!(p.refuse_url("https://store.example.com/blobs/x").is_none());
        assert!(p.refuse_url("https://mcr.microsoft.com/v2/x").is_none());
        assert!(p.refuse_url("http://store.example.com/blobs/x").is_some());
        assert!(p.refuse_url("file:///etc/passwd").is_some());
    }

    #[test]
    fn rules_and_urls() {
        let mut v = Validation {
            foreign_layer_allow: vec![
                r"^https://mcr\.microsoft\.com/".into(),
                r"^https://go\.microsoft\.com/".into(),
            ],
            ..Validation::default()
        };
        v.repositories.push(RepoRule {
            pattern: RepoPattern::new("mirror/**"),
            platform_check: Some(PlatformCheck::Reject),
            sparse_index: Some(true),
        });
        v.foreign_layer_deny.push(r"\.evil$".into());
        let p = Policies::new(v).unwrap();
        assert_eq!(
            p.for_repo("mirror/mcr.microsoft.com/windows/servercore")
                .platform_check,
            PlatformCheck::Reject
        );
        assert!(p.for_repo("mirror/x").sparse_index);
        assert_eq!(p.for_repo("team/app").platform_check, PlatformCheck::Warn);
        assert!(!p.for_repo("team/app").sparse_index);
        assert!(p
            .refuse_url("https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:x")
            .is_none());
        assert!(p.refuse_url("http://mcr.microsoft.com/x").is_some());
        assert!(p.refuse_url("https://example.com/layer").is_some());
        assert!(p.refuse_url("https://go.microsoft.com/x.evil").is_some());
    }
}
