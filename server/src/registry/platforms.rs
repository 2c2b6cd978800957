//! Multi-platform rules: index entries checked against their images, content negotiation for
//! clients that take no lists, the variant table (`inspect`) and the host resolver (`resolve`).

use super::policy::PlatformCheck;
use super::{Registry, RegistryError, Result};
use berth_oci::image_config::{check_entry, ImageConfig};
use berth_oci::media_type::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use berth_oci::platform::{self, Candidate, Host, Platform, Resolution};
use berth_oci::{Digest, Manifest, ManifestKind, Reference};
use berth_storage::meta::{Finding, IndexEntry, StoredManifest};
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;

/// Image configs larger than this are not read for validation.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What reference checking found, for the metadata.
#[derive(Debug, Default)]
pub struct Checked {
    /// Blobs that are here (checked again when the manifest commits).
    pub blobs: Vec<Digest>,
    /// Children that are here (checked again when the manifest commits).
    pub children: Vec<Digest>,
    /// Referenced blobs allowed to be absent (cache, foreign layers): edges only.
    pub absent_blobs: Vec<Digest>,
    /// Children allowed to be absent (a sparse index): edges only.
    pub absent_children: Vec<Digest>,
    pub entries: Vec<IndexEntry>,
    pub findings: Vec<Finding>,
}

/// One row of a tag's variant table.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// Position in the index (`None` for a single-image manifest).
    pub position: Option<i64>,
    /// Manifest digest.
    pub digest: Digest,
    /// Manifest media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Platform, from the index entry (or the image config for a single image).
    pub platform: Option<Platform>,
    /// Whether the manifest is stored here (false in a sparse index).
    pub present: bool,
    /// Config plus layer sizes, when present.
    pub size: Option<u64>,
    /// Number of layers, when present.
    pub layers: Option<usize>,
    /// Config digest, when present.
    pub config: Option<Digest>,
    /// Validation findings about this entry.
    pub findings: Vec<String>,
    /// For an index entry without a `platform`: what its image config says (clients fall
    /// back to the config for such entries).
    #[serde(rename = "imagePlatform", skip_serializing_if = "Option::is_none")]
    pub image_platform: Option<Platform>,
}

/// The variant table of a reference.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Repository.
    pub repository: String,
    /// What was asked.
    pub reference: String,
    /// Digest it resolved to.
    pub digest: Digest,
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// One row per platform.
    pub variants: Vec<Variant>,
    /// Findings about the manifest as a whole.
    pub findings: Vec<String>,
}

/// The resolver's answer.
#[derive(Debug, Clone, Serialize)]
pub struct ResolveAnswer {
    /// Repository.
    pub repository: String,
    /// What was asked.
    pub reference: String,
    /// Digest the reference resolved to (an index or a single manifest).
    pub digest: Digest,
    /// The host the answer is for.
    pub host: Host,
    /// The chosen manifest digest, if any.
    pub chosen: Option<String>,
    /// Every candidate with the reason it was kept or dropped.
    pub resolution: Resolution,
    /// What validation found wrong with the chosen entry (an os.version its own config
    /// contradicts, say): the host gets that image anyway.
    pub chosen_findings: Vec<String>,
}

fn platform_of(e: &IndexEntry) -> Option<Platform> {
    Some(Platform {
        os: e.os.clone()?,
        architecture: e.architecture.clone()?,
        variant: e.variant.clone(),
        os_version: e.os_version.clone(),
        os_features: e
            .os_features
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(|f| f.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

impl Registry {
    /// Reads a small blob whole (image configs).
    pub(super) async fn read_small_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some((size, location)) = self.meta.blob(digest).await? else {
            return Ok(None);
        };
        if size > MAX_CONFIG_BYTES {
            return Ok(None);
        }
        let blob = berth_storage::blob::BlobRef {
            digest: digest.clone(),
            location,
        };
        let body = match self.store.read(&blob, None).await {
            Ok(b) => b,
            Err(berth_storage::Error::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(body.len as usize);
        let mut s = body.stream;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.map_err(berth_storage::Error::Io)?);
        }
        Ok(Some(out))
    }

    /// The image config of a stored image manifest, with its manifest.
    pub(super) async fn image_of(
        &self,
        m: &StoredManifest,
    ) -> Result<Option<(Manifest, Option<ImageConfig>)>> {
        let Ok(parsed) = Manifest::parse(&m.content, Some(&m.media_type)) else {
            return Ok(None);
        };
        if parsed.kind != ManifestKind::Image {
            return Ok(Some((parsed, None)));
        }
        let cfg = match &parsed.config {
            Some(c) => self
                .read_small_blob(&c.digest)
                .await?
                .and_then(|b| ImageConfig::parse(&b).ok()),
            None => None,
        };
        Ok(Some((parsed, cfg)))
    }

    /// Records the entries of an index and checks each present child against its image
    /// config, as the repository's policy says.
    pub(super) async fn check_index(
        &self,
        repo: &str,
        m: &Manifest,
        mode: super::PutMode,
        out: &mut Checked,
    ) -> Result<()> {
        let policy = self.settings.policies.for_repo(repo);
        for (i, d) in m.manifests.iter().enumerate() {
            let platform: Option<Platform> = match &d.platform {
                Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
                    RegistryError::ManifestInvalid(format!("manifests[{i}].platform: {e}"))
                })?),
                None => None,
            };
            out.entries.push(IndexEntry {
                position: i as i64,
                child: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: d.size,
                os: platform.as_ref().map(|p| p.os.clone()),
                architecture: platform.as_ref().map(|p| p.architecture.clone()),
                variant: platform.as_ref().and_then(|p| p.variant.clone()),
                os_version: platform.as_ref().and_then(|p| p.os_version.clone()),
                os_features: platform
                    .as_ref()
                    .filter(|p| !p.os_features.is_empty())
                    .map(|p| p.os_features.join(",")),
            });
            let Some(child) = self.meta.manifest(repo, &d.digest).await? else {
                if policy.sparse_index || mode.sparse_index {
                    out.absent_children.push(d.digest.clone());
                    continue;
                }
                return Err(RegistryError::ManifestBlobUnknown(d.digest.clone()));
            };
            out.children.push(d.digest.clone());
            if child.content.len() as i64 != d.size {
                return Err(RegistryError::ManifestInvalid(format!(
                    "manifests[{i}]: descriptor size {} does not match manifest {} of {} bytes",
                    d.size,
                    d.digest,
                    child.content.len()
                )));
            }
            let (Some(p), false) = (platform, policy.platform_check == PlatformCheck::Off) else {
                continue;
            };
            let Some((cm, Some(cfg))) = self.image_of(&child).await? else {
                continue;
            };
            let dis = check_entry(&p, &cfg, cm.layers.len());
            if dis.is_empty() {
                continue;
            }
            let fields: Vec<String> = dis
                .iter()
                .map(|x| {
                    format!(
                        "{} is {:?} in the index but {:?} in the image",
                        x.field, x.index, x.image
                    )
                })
                .collect();
            let message = format!(
                "manifests[{i}] {} ({p}) disagrees with its image config: {}",
                d.digest,
                fields.join("; ")
            );
            if policy.platform_check == PlatformCheck::Reject {
                return Err(RegistryError::ManifestInvalid(message));
            }
            out.findings.push(Finding {
                position: Some(i as i64),
                kind: "platform-mismatch".into(),
                message,
            });
        }
        Ok(())
    }

    /// A pull of a manifest: the gate (for a tag under a pull-gating policy), then the
    /// manifest as a client that sends `accepts` (`Accept` headers; none: anything)
    /// should get it: a client that takes no list type gets the linux/amd64 entry of a list
    /// (as distribution does), or MANIFEST_UNKNOWN. A tag is resolved once: the gate and the
    /// bytes served are about the same digest, however the tag moves meanwhile.
    pub async fn pull_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        accepts: &berth_oci::accept::Accept,
    ) -> Result<Arc<StoredManifest>> {
        let digest = self.resolve(repo, reference).await?;
        if let Reference::Tag(tag) = reference {
            self.pull_gate(repo, tag, &digest).await?;
        }
        let m = self.manifest_at(repo, &digest, reference).await?;
        if let Reference::Tag(tag) = reference {
            self.record_pull(repo, tag.as_str());
        }
        // By digest the client gets exactly those bytes, whatever it accepts (distribution
        // substitutes only for tags: it cannot return content that does not match a digest).
        if !Self::is_index(&m) || !accepts.present || matches!(reference, Reference::Digest(_)) {
            return Ok(m);
        }
        // The list goes to a client that takes its type or either list type with q > 0
        // (`*/*` included; `q=0` excludes even under `*/*`).
        let takes_list = accepts
            .negotiate(&[m.media_type.as_str(), OCI_INDEX, DOCKER_MANIFEST_LIST])
            .is_some();
        if takes_list {
            return Ok(m);
        }
        let entries = self.meta.index_entries(repo, &m.digest).await?;
        for e in entries {
            if e.os.as_deref() == Some("linux") && e.architecture.as_deref() == Some("amd64") {
                if let Ok(child) = self
                    .manifest(repo, &Reference::Digest(e.child.clone()))
                    .await
                {
                    return Ok(child);
                }
            }
        }
        Err(RegistryError::ManifestUnknown(format!(
            "{reference}: the list has no linux/amd64 entry and the client accepts no list type"
        )))
    }

    /// The variant table of a reference.
    pub async fn inspect(&self, repo: &str, reference: &Reference) -> Result<Inspection> {
        let m = self.manifest(repo, reference).await?;
        let findings = self.meta.findings(repo, &m.digest).await?;
        let mut variants = Vec::new();
        if Self::is_index(&m) {
            for e in self.meta.index_entries(repo, &m.digest).await? {
                let child = self.meta.manifest(repo, &e.child).await?;
                let mut v = Variant {
                    position: Some(e.position),
                    digest: e.child.clone(),
                    media_type: e.media_type.clone(),
                    platform: platform_of(&e),
                    present: child.is_some(),
                    size: None,
                    layers: None,
                    config: None,
                    findings: findings
                        .iter()
                        .filter(|f| f.position == Some(e.position))
                        .map(|f| f.message.clone())
                        .collect(),
                    image_platform: None,
                };
                if let Some(c) = &child {
                    if v.platform.is_none() {
                        if let Some((_, Some(cfg))) = self.image_of(c).await? {
                            v.image_platform = Some(cfg.platform());
                        }
                    }
                }
                if let Some(Ok(cm)) =
                    child.map(|c| Manifest::parse(&c.content, Some(&c.media_type)))
                {
                    fill_sizes(&mut v, &cm);
                }
                variants.push(v);
            }
        } else if let Some((cm, cfg)) = self.image_of(&m).await? {
            let mut v = Variant {
                position: None,
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                platform: cfg.map(|c| c.platform()),
                present: true,
                size: None,
                layers: None,
                config: None,
                findings: vec![],
                image_platform: None,
            };
            fill_sizes(&mut v, &cm);
            variants.push(v);
        }
        Ok(Inspection {
            repository: repo.to_owned(),
            reference: reference.to_string(),
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            variants,
            findings: findings
                .into_iter()
                .filter(|f| f.position.is_none())
                .map(|f| f.message)
                .collect(),
        })
    }

    /// Which manifest `host` would pull for `reference`, and why.
    pub async fn resolve_for_host(
        &self,
        repo: &str,
        reference: &Reference,
        host: Host,
    ) -> Result<ResolveAnswer> {
        let inspection = self.inspect(repo, reference).await?;
        let candidates: Vec<Candidate> = inspection
            .variants
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                Some(Candidate {
                    index: v.position.map_or(i, |p| p as usize),
                    digest: v.digest.to_string(),
                    platform: v.platform.clone()?,
                })
            })
            .collect();
        let mut resolution = platform::resolve(&candidates, &host);
        // Entries without a platform: both clients keep them, rank them after every entry
        // that has one, and decide by the image config (containerd core/images/image.go,
        // moby pull_v2_unix.go).
        for (i, v) in inspection.variants.iter().enumerate() {
            if v.platform.is_some() {
                continue;
            }
            let index = v.position.map_or(i, |p| p as usize);
            let (kept, reason) = match &v.image_platform {
                None => (
                    false,
                    "no platform in the index and no readable image config".to_owned(),
                ),
                Some(p) => {
                    let one = [Candidate {
                        index,
                        digest: v.digest.to_string(),
                        platform: p.clone(),
                    }];
                    let r = platform::resolve(&one, &host);
                    let why = r
                        .verdicts
                        .first()
                        .map(|x| x.reason.clone())
                        .unwrap_or_default();
                    (
                        r.chosen.is_some(),
                        format!("no platform in the index; image config {p}: {why}"),
                    )
                }
            };
            let rank = if kept && resolution.chosen.is_none() {
                resolution.chosen = Some(Candidate {
                    index,
                    digest: v.digest.to_string(),
                    platform: v.image_platform.clone().unwrap_or_default(),
                });
                Some(0)
            } else if kept {
                Some(resolution.verdicts.iter().filter(|x| x.kept).count())
            } else {
                None
            };
            resolution.verdicts.push(platform::CandidateVerdict {
                index,
                digest: v.digest.to_string(),
                kept,
                rank,
                reason,
            });
        }
        let chosen_findings = resolution
            .chosen
            .as_ref()
            .and_then(|c| {
                inspection.variants.iter().enumerate().find(|(i, v)| {
                    v.position.map_or(*i, |p| p as usize) == c.index
                        && v.digest.as_str() == c.digest
                })
            })
            .map(|(_, v)| v.findings.clone())
            .unwrap_or_default();
        Ok(ResolveAnswer {
            repository: repo.to_owned(),
            reference: reference.to_string(),
            digest: inspection.digest,
            chosen_findings,
            chosen: resolution.chosen_digest().map(str::to_owned),
            host,
            resolution,
        })
    }
}

fn fill_sizes(v: &mut Variant, cm: &Manifest) {
    if cm.kind != ManifestKind::Image {
        return;
    }
    let cfg = cm.config.as_ref();
    v.config = cfg.map(|c| c.digest.clone());
    v.layers = Some(cm.layers.len());
    v.size = Some(
        cfg.map_or(0, |c| c.size.max(0) as u64)
            + cm.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>(),
    );
}
