//! Content digests (`algorithm:hex`), as the image spec defines them, for sha256 and sha512.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::fmt;
use std::str::FromStr;

/// A digest algorithm berth can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `sha256`, 64 hex characters; the default for everything berth computes.
    Sha256,
    /// `sha512`, 128 hex characters.
    Sha512,
}

impl Algorithm {
    /// The name used before the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a string is not a digest berth accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix")]
    Format(String),
    /// An algorithm berth does not implement.
    #[error("digest algorithm {0:?} is not supported (sha256, sha512)")]
    Unsupported(String),
    /// Wrong length or not lowercase hex.
    #[error("digest {0:?} has an invalid encoded part")]
    Encoded(String),
}

/// A validated digest such as `sha256:e3b0c4…`. The text is kept as given (it is canonical
/// once validated: lowercase hex of the exact length).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: Algorithm,
    text: String,
}

impl Digest {
    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part after the colon.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.as_str().len() + 1..]
    }

    /// The whole digest as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Digest of `bytes` with `algorithm`.
    pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    /// sha256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Self::compute(Algorithm::Sha256, bytes)
    }

    fn from_parts(algorithm: Algorithm, hex: &str) -> Digest {
        Digest {
            algorithm,
            text: format!("{}:{}", algorithm.as_str(), hex),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Format(s.to_owned()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            // The spec's algorithm grammar: [a-z0-9]+([+._-][a-z0-9]+)*
            other if !other.is_empty() => return Err(DigestError::Unsupported(other.to_owned())),
            _ => return Err(DigestError::Format(s.to_owned())),
        };
        let ok = enc.len() == algorithm.hex_len()
            && enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::Encoded(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            text: s.to_owned(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.text
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An incremental hasher for either algorithm. `Clone` is cheap (a few hundred bytes), which
/// lets an upload snapshot its state before a chunk and roll back if the chunk fails.
#[derive(Clone)]
pub enum Hasher {
    /// sha256 state.
    Sha256(sha2::Sha256),
    /// sha512 state.
    Sha512(sha2::Sha512),
    /// Both at once, for an upload whose bytes cannot be read back before it is closed (S3):
    /// the closing request names the algorithm only at the end.
    Both(sha2::Sha256, sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// A hasher computing sha256 and sha512 together.
    pub fn both() -> Self {
        Hasher::Both(sha2::Sha256::new(), sha2::Sha512::new())
    }

    /// Which algorithm this hasher computes (sha256 for [`Hasher::Both`], its first).
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) | Hasher::Both(..) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
            Hasher::Both(a, b) => {
                a.update(bytes);
                b.update(bytes);
            }
        }
    }

    /// The digest of everything fed so far, by [`Hasher::algorithm`].
    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        self.finish_as(algorithm)
            .expect("a hasher computes its own algorithm")
    }

    /// The digest by `algorithm`, or `None` when this hasher does not compute it.
    pub fn finish_as(self, algorithm: Algorithm) -> Option<Digest> {
        let hex = match (self, algorithm) {
            (Hasher::Sha256(h) | Hasher::Both(h, _), Algorithm::Sha256) => {
                hex::encode(h.finalize())
            }
            (Hasher::Sha512(h) | Hasher::Both(_, h), Algorithm::Sha512) => {
                hex::encode(h.finalize())
            }
            _ => return None,
        };
        Some(Digest::from_parts(algorithm, &hex))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_computes() {
        let d: Digest = EMPTY256.parse().unwrap();
        assert_eq!(d, Digest::sha256(b""));
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        let d512 = Digest::compute(Algorithm::Sha512, b"abc");
        assert_eq!(d512.as_str().parse::<Digest>().unwrap(), d512);
        assert!(d512.as_str().starts_with("sha512:ddaf35a1"));
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn both_computes_either_digest() {
        let mut h = Hasher::both();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(
            h.clone().finish_as(Algorithm::Sha512),
            Some(Digest::compute(Algorithm::Sha512, b"abc"))
        );
        assert_eq!(h.finish(), Digest::sha256(b"abc"));
        let only = Hasher::new(Algorithm::Sha256);
        assert_eq!(only.finish_as(Algorithm::Sha512), None);
    }

    #[test]
    fn hasher_clone_snapshots_state() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"ab");
        let snap = h.clone();
        h.update(b"junk");
        let mut restored = snap;
        restored.update(b"c");
        assert_eq!(restored.finish(), Digest::sha256(b"abc"));
    }
}
