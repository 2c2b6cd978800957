//! Media types berth treats specially.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The OCI empty descriptor's media type (content `{}`).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (signed), which berth refuses: it is deprecated and unverifiable.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1 (unsigned).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker foreign layer (Windows base layers distributed from elsewhere).
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI non-distributable layer prefix (deprecated in image-spec 1.1, still seen).
pub const OCI_NONDISTRIBUTABLE_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";

/// The digest of the OCI empty JSON blob `{}`.
pub const EMPTY_JSON_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Whether `s` has the RFC 6838 shape `type/subtype` (parameters allowed after `;`).
pub fn is_valid(s: &str) -> bool {
    let base = s.split(';').next().unwrap_or("").trim();
    let Some((t, sub)) = base.split_once('/') else {
        return false;
    };
    let token = |x: &str| {
        !x.is_empty()
            && x.len() <= 127
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    token(t) && token(sub)
}

/// Whether a layer of this media type may live outside the registry (given its URLs).
pub fn is_foreign_layer(s: &str) -> bool {
    s == DOCKER_FOREIGN_LAYER || s.starts_with(OCI_NONDISTRIBUTABLE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_media_types() {
        assert!(is_valid(OCI_MANIFEST));
        assert!(is_valid("application/json; charset=utf-8"));
        assert!(!is_valid("application"));
        assert!(!is_valid("/json"));
        assert!(!is_valid("app lication/json"));
        assert!(is_foreign_layer(DOCKER_FOREIGN_LAYER));
        assert!(is_foreign_layer(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
    }

    #[test]
    fn empty_digest_is_right() {
        assert_eq!(crate::Digest::sha256(b"{}").as_str(), EMPTY_JSON_DIGEST);
    }
}
