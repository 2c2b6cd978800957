//! The parts of an image config (image-spec config.md) that say which platform an image is
//! for, and the rule that checks an index entry's `platform` against them.

use crate::platform::Platform;
use serde::Deserialize;

/// What berth reads from an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// `architecture`.
    #[serde(default)]
    pub architecture: String,
    /// `os`.
    #[serde(default)]
    pub os: String,
    /// `variant`.
    #[serde(default)]
    pub variant: Option<String>,
    /// `os.version`.
    #[serde(rename = "os.version", default)]
    pub os_version: Option<String>,
    /// `os.features`.
    #[serde(rename = "os.features", default)]
    pub os_features: Option<Vec<String>>,
    /// `rootfs`.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    /// Uncompressed digests of the layers, in order.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("image config is not valid JSON: {e}"))
    }

    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone().filter(|v| !v.is_empty()),
            os_features: self.os_features.clone().unwrap_or_default(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

/// One field on which an index entry and its image config disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// `os`, `architecture`, `variant`, `os.version`, `os.features` or `rootfs.diff_ids`.
    pub field: &'static str,
    /// What the index entry says.
    pub index: String,
    /// What the image config (or manifest) says.
    pub image: String,
}

/// Compares an index entry's platform with the image it points at. Architecture and variant
/// are compared after containerd's normalisation (`aarch64` = `arm64`, `arm64` = `arm64/v8`);
/// os.version and os.features exactly. For Windows images the config's `rootfs.diff_ids` must
/// name as many layers as the manifest has (the layers are compressed, so their uncompressed
/// digests cannot be checked without unpacking them).
pub fn check_entry(
    entry: &Platform,
    config: &ImageConfig,
    layer_count: usize,
) -> Vec<Disagreement> {
    let mut out = Vec::new();
    let e = entry.normalized();
    let c = config.platform().normalized();
    let mut diff = |field, a: String, b: String| {
        if a != b {
            out.push(Disagreement {
                field,
                index: a,
                image: b,
            });
        }
    };
    diff("os", entry.os.clone(), config.os.clone());
    diff(
        "architecture",
        e.architecture.clone(),
        c.architecture.clone(),
    );
    diff(
        "variant",
        e.variant_str().to_owned(),
        c.variant_str().to_owned(),
    );
    diff(
        "os.version",
        entry.os_version_str().to_owned(),
        config.platform().os_version_str().to_owned(),
    );
    diff(
        "os.features",
        entry.os_features.join(","),
        config.platform().os_features.join(","),
    );
    if config.os == "windows" {
        let ids = config.rootfs.as_ref().map_or(0, |r| r.diff_ids.len());
        if ids != layer_count {
            out.push(Disagreement {
                field: "rootfs.diff_ids",
                index: format!("{layer_count} layers in the manifest"),
                image: format!("{ids} diff_ids in the config"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> ImageConfig {
        ImageConfig::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn agreeing_entry_passes() {
        let c = cfg(
            r#"{"os":"windows","architecture":"amd64","os.version":"10.0.20348.2527","rootfs":{"type":"layers","diff_ids":["sha256:a","sha256:b"]}}"#,
        );
        let p: Platform = "windows/amd64:10.0.20348.2527".parse().unwrap();
        assert!(check_entry(&p, &c, 2).is_empty());
        let c = cfg(r#"{"os":"linux","architecture":"arm64"}"#);
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(check_entry(&p, &c, 1).is_empty(), "arm64 implies v8");
    }

    #[test]
    fn lies_are_named() {
        let c = cfg(
            r#"{"os":"windows","architecture":"amd64","os.version":"10.0.17763.5936","rootfs":{"diff_ids":["sha256:a"]}}"#,
        );
        let p: Platform = "windows/amd64:10.0.20348.2527".parse().unwrap();
        let d = check_entry(&p, &c, 2);
        let fields: Vec<_> = d.iter().map(|d| d.field).collect();
        assert_eq!(fields, vec!["os.version", "rootfs.diff_ids"]);
        assert_eq!(d[0].index, "10.0.20348.2527");
        assert_eq!(d[0].image, "10.0.17763.5936");
        let p: Platform = "linux/amd64".parse().unwrap();
        let fields: Vec<_> = check_entry(&p, &c, 1).iter().map(|d| d.field).collect();
        assert_eq!(fields, vec!["os", "os.version"]);
    }
}
