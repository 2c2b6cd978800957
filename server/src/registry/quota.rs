//! Byte quotas as configured (`[[quotas]]`) and as the registry reports them. The counting
//! itself is `berth_storage::meta`'s: in the transaction that links a blob.

use super::{Registry, Result};
use berth_oci::RepoPattern;
use berth_storage::meta::{QuotaRecount, QuotaRule, QuotaUsage};
use serde::{Deserialize, Serialize};

/// One `[[quotas]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaDef {
    /// The repositories it covers together (`team/**`); each distinct blob they link counts
    /// once.
    pub pattern: RepoPattern,
    /// The limit: bytes, or a size such as `"500 MiB"`, `"10GiB"`, `"1.5 TB"`.
    pub limit: Size,
}

/// A byte size written as an integer or with a unit.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(into = "u64")]
pub struct Size(pub u64);

impl From<Size> for u64 {
    fn from(s: Size) -> u64 {
        s.0
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "{s:?} is not a size (e.g. 1048576, \"500 MiB\", \"10GiB\")"
            ));
        }
        t.parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("{s:?} is not a size (e.g. 1048576, \"500 MiB\", \"10GiB\"): {e}"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Checks `[[quotas]]`: limits above zero, each pattern once.
pub fn validate(quotas: &[QuotaDef]) -> anyhow::Result<()> {
    for (i, q) in quotas.iter().enumerate() {
        if q.limit.0 == 0 {
            anyhow::bail!(
                "invalid value for key \"quotas[{i}].limit\": must be > 0 (permissions, not a zero quota, keep people from pushing)"
            );
        }
        if quotas[..i].iter().any(|p| p.pattern == q.pattern) {
            anyhow::bail!(
                "invalid value for key \"quotas[{i}].pattern\": {} has a quota already",
                q.pattern
            );
        }
    }
    Ok(())
}

/// The rules the metadata store enforces.
pub fn rules(quotas: &[QuotaDef]) -> Vec<QuotaRule> {
    quotas
        .iter()
        .map(|q| QuotaRule {
            pattern: q.pattern.clone(),
            limit: q.limit.0,
        })
        .collect()
}

impl Registry {
    /// Every quota with its usage.
    pub async fn quotas(&self) -> Result<Vec<QuotaUsage>> {
        Ok(self.meta.quotas().await?)
    }

    /// Recounts every quota from the links; with `fix`, replaces the running counters.
    pub async fn quota_recount(&self, fix: bool) -> Result<Vec<QuotaRecount>> {
        Ok(self.meta.quota_recount(fix).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, want) in [
            ("1048576", Some(1 << 20)),
            ("500 MiB", Some(500 << 20)),
            ("10GiB", Some(10 << 30)),
            ("1 KB", Some(1000)),
            ("1.5 GiB", Some(3 << 29)),
            ("", None),
            ("GiB", None),
            ("-1", None),
            ("10 parsecs", None),
        ] {
            assert_eq!(text.parse::<Size>().ok().map(|s| s.0), want, "{text:?}");
        }
    }

    #[test]
    fn quota_entries_are_checked() {
        let q = |p: &str, l: u64| QuotaDef {
            pattern: RepoPattern::new(p),
            limit: Size(l),
        };
        assert!(validate(&[q("team/**", 1), q("other/**", 5)]).is_ok());
        let zero = validate(&[q("team/**", 0)]).unwrap_err().to_string();
        assert!(zero.contains("quotas[0].limit"), "{zero}");
        let twice = validate(&[q("team/**", 1), q("team/**", 2)])
            .unwrap_err()
            .to_string();
        assert!(twice.contains("quotas[1].pattern"), "{twice}");
    }
}
