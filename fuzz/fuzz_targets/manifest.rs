//! Manifests, indexes and image configs, mutated structurally (a JSON-aware mutator edits valid
//! documents of every media type from the seed corpus) as well as byte-wise.
//!
//! Properties: parsing never panics and is deterministic; an accepted document has the shape
//! its kind requires (an image has a config and no manifests, an index no config or layers),
//! valid media types and non-negative sizes everywhere, and a schemaVersion of 2; descriptors
//! survive a serde round trip; an image config always agrees with an index entry made from its
//! own platform.
#![no_main]

use berth_oci::image_config::{check_entry, ImageConfig};
use berth_oci::media_type;
use berth_oci::{Descriptor, Manifest, ManifestKind};
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/json; charset=utf-8"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
];

fn check_descriptor(d: &Descriptor) {
    assert!(media_type::is_valid(&d.media_type), "{:?}", d.media_type);
    assert!(d.size >= 0);
    let json = serde_json::to_vec(d).expect("a descriptor serialises");
    let mut back: Descriptor = serde_json::from_slice(&json).expect("and parses back");
    // `platform` is kept as a JSON value; serde_json's float printing is not exact, so compare
    // its shape, and every other field exactly.
    assert_eq!(back.platform.is_some(), d.platform.is_some());
    back.platform.clone_from(&d.platform);
    assert_eq!(&back, d);
}

fuzz_target!(|data: &[u8]| {
    let pick = data.iter().fold(0usize, |a, b| a.wrapping_add(*b as usize));
    let content_type = CONTENT_TYPES[pick % CONTENT_TYPES.len()];
    let parsed = Manifest::parse(data, content_type);
    let again = Manifest::parse(data, content_type);
    assert_eq!(parsed.is_ok(), again.is_ok(), "parsing is deterministic");
    if let Ok(m) = parsed {
        let v: serde_json::Value = serde_json::from_slice(data).expect("accepted means JSON");
        assert_eq!(v.get("schemaVersion").and_then(|x| x.as_i64()), Some(2));
        assert!(berth_oci::manifest::is_manifest_media_type(&m.media_type));
        match m.kind {
            ManifestKind::Image => {
                assert!(!berth_oci::manifest::is_index_media_type(&m.media_type));
                check_descriptor(m.config.as_ref().expect("an image has a config"));
                assert!(m.manifests.is_empty());
            }
            ManifestKind::Index => {
                assert!(berth_oci::manifest::is_index_media_type(&m.media_type));
                assert!(m.config.is_none() && m.layers.is_empty());
            }
        }
        m.layers
            .iter()
            .chain(&m.manifests)
            .chain(&m.subject)
            .for_each(check_descriptor);
        if let Some(a) = &m.artifact_type {
            assert!(media_type::is_valid(a));
        }
    }

    if let Ok(config) = ImageConfig::parse(data) {
        let own = config.platform();
        let layers = config.rootfs.as_ref().map_or(0, |r| r.diff_ids.len());
        let found = check_entry(&own, &config, layers);
        assert!(
            found.is_empty(),
            "a config disagrees with itself: {found:?}"
        );
    }
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if !seed.is_multiple_of(4) {
        if let Some(out) = berth_fuzz::mutate_json(&data[..size], seed) {
            if out.len() <= max_size {
                data[..out.len()].copy_from_slice(&out);
                return out.len();
            }
        }
    }
    fuzzer_mutate(data, size, max_size)
});
