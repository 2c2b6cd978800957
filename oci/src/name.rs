//! Repository names, by the distribution spec's grammar:
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The longest name berth accepts (the spec lets registries cap it; 255 is what clients expect).
pub const MAX_NAME_LEN: usize = 255;

/// Why a repository name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, too long, or outside the grammar.
    #[error("invalid repository name {name:?}: {why}")]
    Invalid {
        /// The rejected name (truncated).
        name: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// A validated repository name such as `mirror/mcr.microsoft.com/windows/servercore`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn component_ok(c: &str) -> Result<(), &'static str> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err("empty path component");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("a component must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return Err("only lowercase letters, digits and . _ __ - are allowed"),
        }
        if i >= b.len() || !alnum(b[i]) || i == start {
            return Err("separators must stand between letters or digits");
        }
    }
    Ok(())
}

impl FromStr for RepoName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| NameError::Invalid {
            name: s.chars().take(300).collect(),
            why,
        };
        if s.is_empty() {
            return Err(err("empty name"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(err("longer than 255 characters"));
        }
        for c in s.split('/') {
            component_ok(c).map_err(err)?;
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl TryFrom<String> for RepoName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RepoName> for String {
    fn from(n: RepoName) -> String {
        n.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "a",
            "library/ubuntu",
            "mirror/mcr.microsoft.com/windows/servercore",
            "a/b/c/d/e/f/g/h/i/j/k",
            "foo__bar",
            "foo---bar",
            "foo.bar_baz-qux",
            "x/blobs/y",
            "manifests",
            "0",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok:?} rejected");
        }
        let long = "a".repeat(255);
        assert!(long.parse::<RepoName>().is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        let too_long = "a".repeat(256);
        for bad in [
            "",
            "A",
            "Library/ubuntu",
            "/a",
            "a/",
            "a//b",
            "-a",
            "a-",
            "a___b",
            "a..b",
            "a._b",
            "a b",
            "a:b",
            "a@b",
            ".a",
            too_long.as_str(),
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} accepted");
        }
    }
}
