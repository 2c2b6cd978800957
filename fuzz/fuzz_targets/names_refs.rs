//! Repository names, tags, digests and manifest references: the parsers agree with slow
//! reference implementations of the spec grammars, and every accepted value renders back to the
//! exact input.
#![no_main]

use berth_fuzz::{reference_digest_ok, reference_name_ok, reference_tag_ok};
use berth_oci::{Digest, Reference, RepoName, Tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let name = s.parse::<RepoName>();
    assert_eq!(name.is_ok(), reference_name_ok(s), "name {s:?}: {name:?}");
    if let Ok(n) = &name {
        assert_eq!(n.as_str(), s);
        assert_eq!(n.to_string().parse::<RepoName>().as_ref(), Ok(n));
    }

    let tag = s.parse::<Tag>();
    assert_eq!(tag.is_ok(), reference_tag_ok(s), "tag {s:?}: {tag:?}");
    if let Ok(t) = &tag {
        assert_eq!(t.as_str(), s);
    }

    let digest = s.parse::<Digest>();
    assert_eq!(
        digest.is_ok(),
        reference_digest_ok(s),
        "digest {s:?}: {digest:?}"
    );
    if let Ok(d) = &digest {
        assert_eq!(d.as_str(), s);
        assert_eq!(format!("{}:{}", d.algorithm().as_str(), d.hex()), s);
    }

    // A reference is a digest when it has a colon, else a tag; never both, never neither
    // when one of the two grammars accepts it.
    match s.parse::<Reference>() {
        Ok(Reference::Digest(d)) => assert!(s.contains(':') && d.as_str() == s),
        Ok(Reference::Tag(t)) => assert!(!s.contains(':') && t.as_str() == s),
        Err(_) => assert!(if s.contains(':') {
            digest.is_err()
        } else {
            tag.is_err()
        }),
    }
    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s);
    }
});
