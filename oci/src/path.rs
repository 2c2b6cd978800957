//! The path of a distribution-spec request: the text after `/v2/` split into its endpoint and
//! parameters (`OciPath`). Repository names contain `/`, so the path is read from the right,
//! where the reference, digest and upload id never contain `/`. Pure: the server maps
//! [`PathError`] to its error responses.

use crate::reference::ReferenceError;
use crate::{Digest, Reference, RepoName};
use std::fmt;

/// The endpoint families of the spec, with their parsed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciPath {
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        /// Repository.
        name: RepoName,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/manifests/<reference>` whose reference is neither a tag nor a digest: no
    /// manifest has it (GET, HEAD and DELETE answer 404), and a PUT cannot create it (400).
    ManifestBadTag {
        /// Repository.
        name: RepoName,
        /// Why the reference is not a tag.
        why: String,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        /// Repository.
        name: RepoName,
        /// Digest.
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart {
        /// Repository.
        name: RepoName,
    },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload {
        /// Repository.
        name: RepoName,
        /// Session id (unparsed: an unknown or malformed id is BLOB_UPLOAD_UNKNOWN).
        id: String,
    },
    /// `/v2/<name>/tags/list`
    Tags {
        /// Repository.
        name: RepoName,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        /// Repository.
        name: RepoName,
        /// Subject digest.
        digest: Digest,
    },
}

/// Why a path is refused, in the order the parser checks: the endpoint, then the name, then
/// the digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// No endpoint of the spec has this shape.
    #[error("no such endpoint")]
    NoEndpoint,
    /// The repository name breaks the name grammar.
    #[error("{0}")]
    NameInvalid(String),
    /// A digest (of a blob, a subject, or a manifest reference with a `:`) is invalid.
    #[error("{0}")]
    DigestInvalid(String),
}

fn name(s: &str) -> Result<RepoName, PathError> {
    s.parse()
        .map_err(|e: crate::NameError| PathError::NameInvalid(e.to_string()))
}

fn digest(s: &str) -> Result<Digest, PathError> {
    s.parse()
        .map_err(|e: crate::DigestError| PathError::DigestInvalid(e.to_string()))
}

impl OciPath {
    /// Parses the text after `/v2/`: `a/b/manifests/v1`, `a/b/blobs/uploads/`, ...
    pub fn parse(rest: &str) -> Result<Self, PathError> {
        let (head, last) = rest.rsplit_once('/').ok_or(PathError::NoEndpoint)?;
        // `/v2/<name>/blobs/uploads/` (trailing slash) and `/v2/<name>/blobs/uploads/<id>`.
        if let Some(n) = head.strip_suffix("/blobs/uploads") {
            if last.is_empty() {
                return Ok(Self::UploadStart { name: name(n)? });
            }
            return Ok(Self::Upload {
                name: name(n)?,
                id: last.to_owned(),
            });
        }
        if last.is_empty() {
            return Err(PathError::NoEndpoint);
        }
        // `/v2/<name>/blobs/uploads` without the slash is accepted too.
        if last == "uploads" {
            if let Some(n) = head.strip_suffix("/blobs") {
                return Ok(Self::UploadStart { name: name(n)? });
            }
        }
        let (n, kind) = head.rsplit_once('/').ok_or(PathError::NoEndpoint)?;
        Ok(match (kind, last) {
            ("manifests", r) => {
                let name = name(n)?;
                match r.parse() {
                    Ok(reference) => Self::Manifest { name, reference },
                    Err(ReferenceError::Tag(t)) => Self::ManifestBadTag {
                        name,
                        why: t.to_string(),
                    },
                    Err(e) => return Err(PathError::DigestInvalid(e.to_string())),
                }
            }
            ("blobs", d) => Self::Blob {
                name: name(n)?,
                digest: digest(d)?,
            },
            ("tags", "list") => Self::Tags { name: name(n)? },
            ("referrers", d) => Self::Referrers {
                name: name(n)?,
                digest: digest(d)?,
            },
            _ => return Err(PathError::NoEndpoint),
        })
    }

    /// The repository the path is about.
    pub fn name(&self) -> &RepoName {
        match self {
            Self::Manifest { name, .. }
            | Self::ManifestBadTag { name, .. }
            | Self::Blob { name, .. }
            | Self::UploadStart { name }
            | Self::Upload { name, .. }
            | Self::Tags { name }
            | Self::Referrers { name, .. } => name,
        }
    }
}

/// The canonical path after `/v2/` (`UploadStart` with its trailing slash). A
/// `ManifestBadTag` keeps no reference and renders as `<name>/manifests/`, which no parse
/// returns as one.
impl fmt::Display for OciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Manifest { name, reference } => write!(f, "{name}/manifests/{reference}"),
            Self::ManifestBadTag { name, .. } => write!(f, "{name}/manifests/"),
            Self::Blob { name, digest } => write!(f, "{name}/blobs/{digest}"),
            Self::UploadStart { name } => write!(f, "{name}/blobs/uploads/"),
            Self::Upload { name, id } => write!(f, "{name}/blobs/uploads/{id}"),
            Self::Tags { name } => write!(f, "{name}/tags/list"),
            Self::Referrers { name, digest } => write!(f, "{name}/referrers/{digest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_from_the_right() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            OciPath::parse("a/b/manifests/v1"),
            Ok(OciPath::Manifest { .. })
        ));
        match OciPath::parse(&format!("x/blobs/y/blobs/{d}")).unwrap() {
            OciPath::Blob { name, .. } => assert_eq!(name.as_str(), "x/blobs/y"),
            p => panic!("{p:?}"),
        }
        match OciPath::parse("manifests/blobs/uploads/").unwrap() {
            OciPath::UploadStart { name } => assert_eq!(name.as_str(), "manifests"),
            p => panic!("{p:?}"),
        }
        match OciPath::parse("a/blobs/uploads").unwrap() {
            OciPath::UploadStart { name } => assert_eq!(name.as_str(), "a"),
            p => panic!("{p:?}"),
        }
        match OciPath::parse("a/tags/list/tags/list").unwrap() {
            OciPath::Tags { name } => assert_eq!(name.as_str(), "a/tags/list"),
            p => panic!("{p:?}"),
        }
        match OciPath::parse("mirror/mcr.microsoft.com/windows/servercore/blobs/uploads/abc")
            .unwrap()
        {
            OciPath::Upload { name, id } => {
                assert_eq!(name.as_str(), "mirror/mcr.microsoft.com/windows/servercore");
                assert_eq!(id, "abc");
            }
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            OciPath::parse(&format!("a/referrers/{d}")),
            Ok(OciPath::Referrers { .. })
        ));
    }

    #[test]
    fn maps_bad_parts_to_errors() {
        let name = |r| matches!(r, Err(PathError::NameInvalid(_)));
        let digest = |r| matches!(r, Err(PathError::DigestInvalid(_)));
        assert!(name(OciPath::parse("A/manifests/v1")));
        assert!(name(OciPath::parse("a//b/manifests/v1")));
        assert!(digest(OciPath::parse("a/blobs/sha256:zz")));
        assert!(digest(OciPath::parse("a/manifests/sha256:zz")));
        assert!(matches!(
            OciPath::parse("a/manifests/-bad"),
            Ok(OciPath::ManifestBadTag { .. })
        ));
        assert!(matches!(
            OciPath::parse("a/manifests/.INVALID_MANIFEST_NAME"),
            Ok(OciPath::ManifestBadTag { .. })
        ));
        for p in [
            "a/whatever/x",
            "a/manifests/",
            "a",
            "",
            "a/blobs/",
            "a/tags/",
        ] {
            assert_eq!(OciPath::parse(p), Err(PathError::NoEndpoint), "{p:?}");
        }
        let long = format!("{}/manifests/v1", "a".repeat(256));
        assert!(name(OciPath::parse(&long)));
    }

    #[test]
    fn renders_back() {
        let d = format!("sha256:{}", "b".repeat(64));
        for p in [
            "a/b/manifests/v1".to_owned(),
            format!("a/manifests/{d}"),
            format!("x/blobs/y/blobs/{d}"),
            "q/blobs/uploads/".into(),
            "q/blobs/uploads/blobs/uploads/id".into(),
            "a/tags/list".into(),
            format!("a/referrers/{d}"),
        ] {
            assert_eq!(OciPath::parse(&p).unwrap().to_string(), p);
        }
        assert_eq!(
            OciPath::parse("a/blobs/uploads").unwrap().to_string(),
            "a/blobs/uploads/"
        );
    }
}
