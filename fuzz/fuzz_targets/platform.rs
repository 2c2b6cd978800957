//! Platform specifiers (`os/arch[/variant][:os.version]`) and Windows os.versions: what parses
//! renders back and parses to the same value; normalisation is idempotent; the version order is
//! the numeric one.
#![no_main]

use berth_oci::platform::{Platform, WindowsVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = s.parse::<Platform>() {
        let again: Platform = p.to_string().parse().expect("a rendered platform parses");
        assert_eq!(again, p, "{s:?}");
        let n = p.normalized();
        assert_eq!(n.normalized(), n, "normalisation is idempotent for {s:?}");
    }
    let (a, b) = s.split_once('|').unwrap_or((s, ""));
    let va = a.parse::<WindowsVersion>();
    if let Ok(v) = &va {
        let again: WindowsVersion = v.to_string().parse().expect("a rendered version parses");
        assert_eq!(&again, v);
        assert!(v.major <= 255 && v.minor <= 255 && v.build <= 65535);
        // The fields are the leading numbers of the text.
        let mut parts = a.split('.');
        assert_eq!(parts.next().and_then(|x| x.parse().ok()), Some(v.major));
        assert_eq!(parts.next().and_then(|x| x.parse().ok()), Some(v.minor));
        assert_eq!(parts.next().and_then(|x| x.parse().ok()), Some(v.build));
    }
    if let (Ok(x), Ok(y)) = (va, b.parse::<WindowsVersion>()) {
        let key = |v: &WindowsVersion| (v.major, v.minor, v.build, v.ubr);
        assert_eq!(x.cmp(&y), key(&x).cmp(&key(&y)));
    }
});
