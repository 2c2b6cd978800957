//! `OciPath::parse` (the text after `/v2/`): it agrees with a slow reference written from the
//! distribution spec's endpoint table (every split of the path into `<name>/<tail>` tried
//! against the table's tails), every accepted name is valid per the name grammar, and every
//! parsed path renders back to itself (byte-exact, but for `blobs/uploads` without its slash).
#![no_main]

use berth_fuzz::{reference_digest_ok, reference_name_ok, reference_tag_ok};
use berth_oci::{OciPath, PathError};
use libfuzzer_sys::fuzz_target;

/// What the reference expects, as plain strings.
#[derive(Debug, PartialEq)]
enum Want {
    Manifest(String, String),
    BadTag(String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
    Tags(String),
    Referrers(String, String),
    NoEndpoint,
    NameInvalid,
    DigestInvalid,
}

/// The endpoint table (end-2 .. end-12 of the distribution spec): for every `/` that could end
/// the name, the rest of the path against the table's tails. At most one split matches (the
/// tails have one or two fixed words and parameters without `/`); the one with the longest
/// name is taken.
fn reference(s: &str) -> Want {
    let segs: Vec<&str> = s.split('/').collect();
    let mut found = None;
    for k in 1..segs.len() {
        let name = segs[..k].join("/");
        let tail = &segs[k..];
        let m = match tail {
            ["manifests", r] if !r.is_empty() => Some(("manifest", r.to_string())),
            ["blobs", "uploads", ""] | ["blobs", "uploads"] => Some(("start", String::new())),
            ["blobs", "uploads", id] if !id.is_empty() => Some(("upload", id.to_string())),
            ["blobs", d] if !d.is_empty() && *d != "uploads" => Some(("blob", d.to_string())),
            ["tags", "list"] => Some(("tags", String::new())),
            ["referrers", d] if !d.is_empty() => Some(("referrers", d.to_string())),
            _ => None,
        };
        if let Some(m) = m {
            found = Some((name, m));
        }
    }
    let Some((name, (kind, param))) = found else {
        return Want::NoEndpoint;
    };
    if !reference_name_ok(&name) {
        return Want::NameInvalid;
    }
    let digest_or = |w: Want| {
        if reference_digest_ok(&param) {
            w
        } else {
            Want::DigestInvalid
        }
    };
    match kind {
        "manifest" if param.contains(':') => digest_or(Want::Manifest(name, param.clone())),
        "manifest" if reference_tag_ok(&param) => Want::Manifest(name, param),
        "manifest" => Want::BadTag(name),
        "start" => Want::UploadStart(name),
        "upload" => Want::Upload(name, param),
        "blob" => digest_or(Want::Blob(name, param.clone())),
        "tags" => Want::Tags(name),
        _ => digest_or(Want::Referrers(name, param.clone())),
    }
}

fn got(r: &Result<OciPath, PathError>) -> Want {
    match r {
        Ok(OciPath::Manifest { name, reference }) => {
            Want::Manifest(name.to_string(), reference.to_string())
        }
        Ok(OciPath::ManifestBadTag { name, .. }) => Want::BadTag(name.to_string()),
        Ok(OciPath::Blob { name, digest }) => Want::Blob(name.to_string(), digest.to_string()),
        Ok(OciPath::UploadStart { name }) => Want::UploadStart(name.to_string()),
        Ok(OciPath::Upload { name, id }) => Want::Upload(name.to_string(), id.clone()),
        Ok(OciPath::Tags { name }) => Want::Tags(name.to_string()),
        Ok(OciPath::Referrers { name, digest }) => {
            Want::Referrers(name.to_string(), digest.to_string())
        }
        Err(PathError::NoEndpoint) => Want::NoEndpoint,
        Err(PathError::NameInvalid(_)) => Want::NameInvalid,
        Err(PathError::DigestInvalid(_)) => Want::DigestInvalid,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let r = OciPath::parse(s);
    assert_eq!(got(&r), reference(s), "path {s:?}");
    let Ok(p) = r else {
        return;
    };
    assert!(reference_name_ok(p.name().as_str()), "name of {s:?}");
    if matches!(p, OciPath::ManifestBadTag { .. }) {
        assert!(OciPath::parse(&p.to_string()).is_err(), "{s:?}");
        return;
    }
    let rendered = p.to_string();
    let uploads_without_slash = s.ends_with("/blobs/uploads") && rendered == format!("{s}/");
    assert!(
        rendered == s || uploads_without_slash,
        "{s:?} renders as {rendered:?}"
    );
    assert_eq!(OciPath::parse(&rendered), Ok(p), "{rendered:?}");
});
