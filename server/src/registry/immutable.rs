//! Immutable tags (`[[tags.immutable]]`, docs/LIFECYCLE.md): once such a tag exists it
//! cannot be moved to another manifest or deleted, and the manifest it points at cannot be
//! deleted by digest. The rules are matched here; the metadata applies them inside the write
//! transaction of every put and delete (`berth_storage::meta::Immutable`), so of racing
//! pushes of one new immutable tag exactly one wins.

use berth_oci::RepoPattern;
use serde::{Deserialize, Serialize};

/// `[tags]` in the configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagsConfig {
    /// Immutable tag rules; a tag is immutable if any rule matches it.
    pub immutable: Vec<ImmutableRule>,
}

/// One `[[tags.immutable]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutableRule {
    /// Repository pattern (`*` within a component, `**` across).
    pub pattern: RepoPattern,
    /// Tag patterns (`*` matches any run of characters).
    pub tags: Vec<RepoPattern>,
}

/// The compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<ImmutableRule>,
}

impl Rules {
    /// Checks the section: every rule has a valid repository pattern and at least one valid
    /// tag pattern.
    pub fn new(cfg: TagsConfig) -> anyhow::Result<Self> {
        for (i, r) in cfg.immutable.iter().enumerate() {
            r.pattern
                .check_repo()
                .map_err(|e| anyhow::anyhow!("immutable[{i}].pattern: {e}"))?;
            if r.tags.is_empty() {
                anyhow::bail!("immutable[{i}].tags: give at least one tag pattern");
            }
            for (j, t) in r.tags.iter().enumerate() {
                t.check_tag()
                    .map_err(|e| anyhow::anyhow!("immutable[{i}].tags[{j}]: {e}"))?;
            }
        }
        Ok(Self {
            rules: cfg.immutable,
        })
    }

    /// The rule that makes `tag` of `repo` immutable, described for a refusal.
    pub fn rule_for(&self, repo: &str, tag: &str) -> Option<String> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.pattern.matches(repo) && r.tags.iter().any(|t| t.matches(tag)))
            .map(|(i, r)| {
                let tags: Vec<String> = r
                    .tags
                    .iter()
                    .map(|t| format!("{:?}", t.to_string()))
                    .collect();
                format!(
                    "rule tags.immutable[{i}]: pattern = {:?}, tags = [{}]",
                    r.pattern.to_string(),
                    tags.join(", ")
                )
            })
    }

    /// Whether any rule exists.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{test_registry_with, PutMode, RegistryError};
    use berth_oci::{Digest, Reference};
    use std::sync::Arc;

    fn cfg(toml_text: &str) -> anyhow::Result<Rules> {
        let c: TagsConfig = toml::from_str(toml_text)?;
        Rules::new(c)
    }

    #[test]
    fn rules_match_and_bad_rules_are_named() {
        let r = cfg("[[immutable]]\npattern = \"release/**\"\ntags = [\"v*\", \"stable\"]\n")
            .expect("valid");
        assert!(r.rule_for("release/app", "v1.2").is_some());
        assert!(r.rule_for("release/a/b", "stable").is_some());
        assert!(r.rule_for("release/app", "latest").is_none());
        assert!(r.rule_for("dev/app", "v1").is_none());
        let why = r.rule_for("release/app", "v1").expect("rule");
        assert!(
            why.contains("tags.immutable[0]") && why.contains("release/**"),
            "{why}"
        );
        for (bad, want) in [
            ("[[immutable]]\ntags = [\"v*\"]\n", "pattern"),
            ("[[immutable]]\npattern = \"a/**\"\n", "tags"),
            ("[[immutable]]\npattern = \"a/**\"\ntags = []\n", "tags"),
            (
                "[[immutable]]\npattern = \"a/**\"\ntags = [\"v*\"]\nbogus = 1\n",
                "bogus",
            ),
            (
                "[[immutable]]\npattern = \"A/[x]\"\ntags = [\"v*\"]\n",
                "pattern",
            ),
            (
                "[[immutable]]\npattern = \"a/**\"\ntags = [\"v/*\"]\n",
                "tags[0]",
            ),
            (
                "[[immutable]]\npattern = \"\"\ntags = [\"v*\"]\n",
                "pattern",
            ),
        ] {
            let e = format!("{:#}", cfg(bad).expect_err(bad));
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    fn image(n: usize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": berth_oci::media_type::EMPTY_JSON_DIGEST, "size": 2
            },
            "layers": [],
            "annotations": { "n": n.to_string() }
        }))
        .expect("json")
    }

    /// 1,000 pushes of one new immutable tag, each with other content, at once: exactly one
    /// is acknowledged, every other is refused as immutable, and the tag points at the one
    /// acknowledged manifest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_a_thousand_racing_pushes_of_an_immutable_tag_exactly_one_wins() {
        let (_dir, reg) = test_registry_with(|c| {
            c.tags.immutable = vec![ImmutableRule {
                pattern: RepoPattern::new("release/**"),
                tags: vec![RepoPattern::new("v*")],
            }];
        })
        .await;
        let start = Arc::new(tokio::sync::Barrier::new(1000));
        let mut pushes = Vec::new();
        for n in 0..1000 {
            let (reg, start) = (reg.clone(), start.clone());
            pushes.push(tokio::spawn(async move {
                let body = image(n);
                start.wait().await;
                let r = Reference::Tag("v1".parse().expect("tag"));
                let out = reg
                    .put_manifest("release/app", &r, None, &body, &[], PutMode::CLIENT)
                    .await;
                (Digest::sha256(&body), out)
            }));
        }
        let mut won = Vec::new();
        for p in pushes {
            match p.await.expect("push task") {
                (d, Ok(_)) => won.push(d),
                (_, Err(RegistryError::Immutable { .. })) => {}
                (_, Err(e)) => panic!("unexpected refusal: {e}"),
            }
        }
        assert_eq!(won.len(), 1, "{} pushes were acknowledged", won.len());
        assert_eq!(
            reg.current_tag("release/app", "v1").await.expect("tag"),
            Some(won[0].clone())
        );
    }
}
