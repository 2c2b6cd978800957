//! Scopes as the Docker token spec writes them: `repository:team/app:pull,push`,
//! `registry:catalog:*`; and the `access` claim entries that grant them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// One action on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Upload blobs, put manifests.
    Push,
    /// Delete manifests, tags, blobs.
    Delete,
    /// Claim and report verification jobs of the repository (berth-verifier robots); implies
    /// pull, which a worker needs to fetch the candidate image.
    Verify,
    /// Everything (also "*").
    #[serde(rename = "*")]
    All,
}

impl Action {
    /// Parses one action; `admin` is an alias of `*`.
    pub fn parse(s: &str) -> Option<Action> {
        match s.trim() {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "verify" => Some(Action::Verify),
            "*" | "admin" => Some(Action::All),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Verify => "verify",
            Action::All => "*",
        }
    }

    /// Parses a comma-separated list, ignoring unknown actions.
    pub fn parse_list(s: &str) -> BTreeSet<Action> {
        s.split(',').filter_map(Action::parse).collect()
    }
}

/// Whether `granted` covers `needed` (`*` covers everything; `verify` covers `pull`).
pub fn covers(granted: &BTreeSet<Action>, needed: Action) -> bool {
    granted.contains(&Action::All)
        || granted.contains(&needed)
        || (needed == Action::Pull && granted.contains(&Action::Verify))
}

/// A requested scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `repository` or `registry`.
    pub kind: String,
    /// Repository name, or `catalog`.
    pub name: String,
    /// Actions asked for (raw strings, unknown ones kept so they can be refused).
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses `type:name:actions`. The name may contain `:` (a port in a host-qualified name
    /// never appears here, but be lenient): the type is before the first `:`, the actions
    /// after the last.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
        })
    }

    /// Parses the `scope` parameters of a token request (each may hold several scopes
    /// separated by spaces, as OAuth2 allows).
    pub fn parse_all<'a>(params: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
        params
            .into_iter()
            .flat_map(|p| p.split(' '))
            .filter_map(Scope::parse)
            .collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Repository name or `catalog`.
    pub name: String,
    /// Granted actions.
    pub actions: Vec<String>,
}

impl Access {
    /// The granted actions as a set.
    pub fn action_set(&self) -> BTreeSet<Action> {
        self.actions
            .iter()
            .filter_map(|a| Action::parse(a))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes() {
        let s = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("repository", "team/app")
        );
        assert_eq!(s.actions, vec!["pull", "push"]);
        let all = Scope::parse_all(["repository:a:pull repository:b:push", "registry:catalog:*"]);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].actions, vec!["*"]);
        assert!(Scope::parse("nonsense").is_none());
        assert!(Scope::parse("repository::pull").is_none());
        assert!(covers(&Action::parse_list("*"), Action::Delete));
        assert!(!covers(&Action::parse_list("pull"), Action::Push));
        assert!(covers(&Action::parse_list("verify"), Action::Pull));
        assert!(!covers(&Action::parse_list("verify"), Action::Push));
        assert!(!covers(&Action::parse_list("pull"), Action::Verify));
    }
}
