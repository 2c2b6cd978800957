//! Repository patterns for policies and permissions: `*` matches within one path component,
//! `**` matches any run of characters including `/`, everything else matches itself.
//! `team/*` matches `team/app` but not `team/a/b`; `mirror/**` matches every name under
//! `mirror/`; `**` matches every name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A compiled repository pattern.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct RepoPattern(String);

impl From<String> for RepoPattern {
    fn from(s: String) -> Self {
        RepoPattern(s)
    }
}

impl From<RepoPattern> for String {
    fn from(p: RepoPattern) -> String {
        p.0
    }
}

impl fmt::Debug for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RepoPattern {
    /// A pattern from its text.
    pub fn new(s: impl Into<String>) -> Self {
        RepoPattern(s.into())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    /// Checks the text as a repository pattern: lowercase letters, digits, `.`, `_`, `-`,
    /// `/` between components, and `*` or `**`. The error says what is wrong.
    pub fn check_repo(&self) -> Result<(), String> {
        let s = &self.0;
        check_common(s)?;
        if let Some(c) = s
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-' | '/' | '*'))
        {
            return Err(format!(
                "{s:?}: {c:?} is not allowed in a repository pattern (lowercase letters, digits, \".\", \"_\", \"-\", \"/\", \"*\", \"**\")"
            ));
        }
        if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return Err(format!("{s:?}: empty path component"));
        }
        Ok(())
    }

    /// Checks the text as a tag pattern: the characters of a tag (letters, digits, `.`, `_`,
    /// `-`) and `*`.
    pub fn check_tag(&self) -> Result<(), String> {
        let s = &self.0;
        check_common(s)?;
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
        {
            return Err(format!(
                "{s:?}: {c:?} is not allowed in a tag pattern (letters, digits, \".\", \"_\", \"-\", \"*\")"
            ));
        }
        if s.len() > 128 {
            return Err(format!("{s:?}: longer than a tag can be (128)"));
        }
        Ok(())
    }
}

fn check_common(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty pattern".into());
    }
    if s.contains("***") {
        return Err(format!(
            "{s:?}: \"***\" is not a wildcard (use \"*\" or \"**\")"
        ));
    }
    Ok(())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            // `**/` may also match nothing at all: `a/**/b` matches `a/b`.
            if rest.first() == Some(&b'/') && glob(&rest[1..], s) {
                return true;
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("**", "a/b/c", true),
            ("team/*", "team/app", true),
            ("team/*", "team/a/b", false),
            ("team/*", "team", false),
            ("team/**", "team/a/b", true),
            (
                "mirror/**/servercore",
                "mirror/mcr.microsoft.com/windows/servercore",
                true,
            ),
            ("mirror/**/servercore", "mirror/servercore", true),
            ("a/*/c", "a/b/c", true),
            ("a/*/c", "a/b/d/c", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*-dev", "app-dev", true),
            ("*-dev", "x/app-dev", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(RepoPattern::new(p).matches(s), want, "{p} ~ {s}");
        }
    }

    #[test]
    fn pattern_syntax() {
        let repo = [
            ("**", true),
            ("team/*", true),
            ("mirror/**/servercore", true),
            ("a.b_c-d/e", true),
            ("", false),
            ("Team/*", false),
            ("team/[ab]", false),
            ("team/***", false),
            ("/team", false),
            ("team/", false),
            ("a//b", false),
            ("team/{a,b}", false),
        ];
        for (p, ok) in repo {
            assert_eq!(RepoPattern::new(p).check_repo().is_ok(), ok, "repo {p:?}");
        }
        let tag = [
            ("v*", true),
            ("*", true),
            ("1.2.*-rc_1", true),
            ("LTSC2022", true),
            ("", false),
            ("v/*", false),
            ("v[0-9]", false),
            ("v***", false),
        ];
        for (p, ok) in tag {
            assert_eq!(RepoPattern::new(p).check_tag().is_ok(), ok, "tag {p:?}");
        }
    }
}
