//! Manifest parsing and validation: OCI image manifests and indexes, Docker schema 2 manifests
//! and manifest lists, and OCI artifacts. Parsing only reads what the registry must check
//! (descriptors, subject, artifactType); the bytes themselves are stored untouched elsewhere.

use crate::digest::Digest;
use crate::media_type::{self as mt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A content descriptor as it appears in manifests (image-spec descriptor.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: i64,
    /// Where a foreign layer may be fetched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The artifact type of the referenced manifest (in indexes and referrers lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The platform of an index entry, kept as JSON; `platform` interprets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// Image manifests point at blobs; indexes point at other manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest or Docker schema 2 manifest.
    Image,
    /// OCI image index or Docker manifest list.
    Index,
}

/// What berth needs to know of a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Image or index.
    pub kind: ManifestKind,
    /// The effective media type: the body's `mediaType`, else the request's Content-Type,
    /// else inferred from the shape.
    pub media_type: String,
    /// `artifactType`, if set.
    pub artifact_type: Option<String>,
    /// The config descriptor of an image manifest.
    pub config: Option<Descriptor>,
    /// Layers of an image manifest.
    pub layers: Vec<Descriptor>,
    /// Entries of an index.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    pub subject: Option<Descriptor>,
    /// Top-level annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// The artifact type the referrers API reports: `artifactType`, else the config's media
    /// type (image-spec manifest.md "artifactType").
    pub fn referrer_artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.as_str()))
    }
}

/// Why a manifest is refused. Every variant maps to MANIFEST_INVALID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    /// schemaVersion other than 2.
    #[error("schemaVersion {0} is not supported (only 2)")]
    SchemaVersion(i64),
    /// Docker schema 1.
    #[error("Docker schema 1 manifests are not supported; push schema 2 or OCI")]
    Schema1,
    /// A media type berth does not store as a manifest.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// The body's `mediaType` and the request's Content-Type disagree.
    #[error("mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// From the body.
        body: String,
        /// From the header.
        header: String,
    },
    /// A required field is missing or has the wrong shape.
    #[error("{0}")]
    Field(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde_json::Value>,
}

fn kind_of(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        mt::OCI_MANIFEST | mt::DOCKER_MANIFEST => Some(ManifestKind::Image),
        mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

/// Whether berth stores manifests of this media type.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    kind_of(media_type).is_some()
}

/// Whether this media type is a list of manifests (OCI index or Docker manifest list).
pub fn is_index_media_type(media_type: &str) -> bool {
    kind_of(media_type) == Some(ManifestKind::Index)
}

fn check_descriptor(where_: &str, d: &Descriptor) -> Result<(), ManifestError> {
    if !mt::is_valid(&d.media_type) {
        return Err(ManifestError::Field(format!(
            "{where_}: invalid mediaType {:?}",
            d.media_type
        )));
    }
    if d.size < 0 {
        return Err(ManifestError::Field(format!(
            "{where_}: negative size {}",
            d.size
        )));
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates `bytes` pushed with the given Content-Type.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty());
        if matches!(header, Some(mt::DOCKER_SCHEMA1 | mt::DOCKER_SCHEMA1_SIGNED)) {
            return Err(ManifestError::Schema1);
        }
        // The whole document must be JSON, also the fields berth does not read: serde skips
        // unknown fields without checking their UTF-8 or escapes, so parse to a value first.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let raw = Raw::deserialize(&value).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.fs_layers.is_some() {
            return Err(ManifestError::Schema1);
        }
        match &raw.schema_version {
            Some(serde_json::Value::Number(n)) if n.as_i64() == Some(2) => {}
            Some(serde_json::Value::Number(n)) => {
                let v = n.as_i64().unwrap_or(-1);
                return Err(if v == 1 {
                    ManifestError::Schema1
                } else {
                    ManifestError::SchemaVersion(v)
                });
            }
            Some(_) => {
                return Err(ManifestError::Field(
                    "schemaVersion must be the number 2".into(),
                ))
            }
            None => return Err(ManifestError::Field("schemaVersion is missing".into())),
        }
        // The effective media type: the body wins, the header must agree when both are
        // manifest types. A generic header (application/json, octet-stream) defers to the body.
        let header_manifest = header.filter(|h| is_manifest_media_type(h));
        let media_type = match (&raw.media_type, header_manifest) {
            (Some(b), Some(h)) if b != h => {
                return Err(ManifestError::MediaTypeMismatch {
                    body: b.clone(),
                    header: h.to_owned(),
                })
            }
            (Some(b), _) => b.clone(),
            (None, Some(h)) => h.to_owned(),
            (None, None) => {
                if let Some(h) =
                    header.filter(|h| *h != "application/json" && *h != "application/octet-stream")
                {
                    return Err(ManifestError::UnsupportedMediaType(h.to_owned()));
                }
                if raw.manifests.is_some() {
                    mt::OCI_INDEX.to_owned()
                } else {
                    mt::OCI_MANIFEST.to_owned()
                }
            }
        };
        let kind = kind_of(&media_type)
            .ok_or_else(|| ManifestError::UnsupportedMediaType(media_type.clone()))?;
        if let Some(a) = &raw.artifact_type {
            if !mt::is_valid(a) {
                return Err(ManifestError::Field(format!("invalid artifactType {a:?}")));
            }
        }
        let has_layers = raw.layers.is_some();
        let has_manifests = raw.manifests.is_some();
        let m = Manifest {
            kind,
            media_type,
            artifact_type: raw.artifact_type,
            config: raw.config,
            layers: raw.layers.unwrap_or_default(),
            manifests: raw.manifests.unwrap_or_default(),
            subject: raw.subject,
            annotations: raw.annotations,
        };
        match kind {
            ManifestKind::Image => {
                let config = m
                    .config
                    .as_ref()
                    .ok_or_else(|| ManifestError::Field("image manifest has no config".into()))?;
                check_descriptor("config", config)?;
                if !m.manifests.is_empty() {
                    return Err(ManifestError::Field(
                        "an image manifest cannot have manifests".into(),
                    ));
                }
                if !has_layers {
                    return Err(ManifestError::Field(
                        "image manifest has no layers array".into(),
                    ));
                }
                for (i, l) in m.layers.iter().enumerate() {
                    check_descriptor(&format!("layers[{i}]"), l)?;
                }
            }
            ManifestKind::Index => {
                if m.config.is_some() || !m.layers.is_empty() {
                    return Err(ManifestError::Field(
                        "an index cannot have config or layers".into(),
                    ));
                }
                if !has_manifests {
                    return Err(ManifestError::Field("index has no manifests array".into()));
                }
                for (i, c) in m.manifests.iter().enumerate() {
                    check_descriptor(&format!("manifests[{i}]"), c)?;
                }
            }
        }
        if let Some(s) = &m.subject {
            check_descriptor("subject", s)?;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_image_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":10}}],"subject":{{"mediaType":"{}","digest":"{}","size":5}}}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG,
            d('a'),
            d('b'),
            mt::OCI_MANIFEST,
            d('c')
        );
        let m = Manifest::parse(body.as_bytes(), Some(mt::OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.subject.unwrap().digest.as_str(), d('c'));
        assert_eq!(m.config.unwrap().size, 2);
    }

    #[test]
    fn infers_and_checks_media_type() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            mt::OCI_MANIFEST,
            d('a')
        );
        let m = Manifest::parse(idx.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, mt::OCI_INDEX);
        let m = Manifest::parse(idx.as_bytes(), Some(mt::DOCKER_MANIFEST_LIST)).unwrap();
        assert_eq!(m.media_type, mt::DOCKER_MANIFEST_LIST);
        let with_mt = idx.replacen('{', &format!(r#"{{"mediaType":"{}","#, mt::OCI_INDEX), 1);
        assert!(matches!(
            Manifest::parse(with_mt.as_bytes(), Some(mt::DOCKER_MANIFEST_LIST)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases: &[(&str, Option<&str>)] = &[
            ("not json", None),
            ("[]", None),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            (r#"{"schemaVersion":3,"config":{}}"#, None),
            (r#"{"schemaVersion":"2"}"#, None),
            (
                r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                None,
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
                None,
            ),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:xyz","size":1},"layers":[]}"#,
                None,
            ),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":-1},"layers":[]}"#,
                None,
            ),
            (r#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None),
            ("{}", Some(mt::DOCKER_SCHEMA1_SIGNED)),
        ];
        for (body, ct) in cases {
            assert!(
                Manifest::parse(body.as_bytes(), *ct).is_err(),
                "{body} accepted"
            );
        }
    }

    /// Found by the `manifest` fuzz target: bytes in fields berth does not read were never
    /// checked, so a manifest that is not JSON (invalid UTF-8, a lone surrogate escape) was
    /// stored and served as JSON.
    #[test]
    fn rejects_invalid_json_in_fields_it_does_not_read() {
        let good = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","x":"ok","manifests":[]}}"#,
            mt::OCI_INDEX
        );
        assert!(Manifest::parse(good.as_bytes(), None).is_ok());
        let mut not_utf8 = good.clone().into_bytes();
        let at = good.find("ok").unwrap();
        not_utf8[at] = 0xff;
        let surrogate = good.replace("\"ok\"", "\"\\ud800\"");
        let unknown_key = good.replace("\"x\"", "\"\\udfff\"");
        for body in [not_utf8, surrogate.into_bytes(), unknown_key.into_bytes()] {
            assert!(
                matches!(Manifest::parse(&body, None), Err(ManifestError::Json(_))),
                "{} accepted",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn referrer_artifact_type_falls_back_to_config() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.example.cfg","digest":"{}","size":2}},"layers":[]}}"#,
            d('a')
        );
        let m = Manifest::parse(body.as_bytes(), None).unwrap();
        assert_eq!(
            m.referrer_artifact_type(),
            Some("application/vnd.example.cfg")
        );
    }
}
