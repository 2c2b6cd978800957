//! The `Authorization` (Basic, Bearer) and `WWW-Authenticate` parsers and renderers
//! (`auth/src/header.rs`, compiled here from its source as `scopes` does with scope.rs: the
//! file uses base64 only). Properties: any header parses without panic; accepted Basic
//! credentials come from the one canonical base64 of `user:password`, with no `:` in the
//! user, and render back to the same header; rendered credentials parse back to themselves
//! (a user with `:` is refused by the renderer); a Bearer token is the trimmed non-empty rest
//! after the scheme and re-parses to itself; a rendered challenge parses back to the same
//! scheme and parameters, whatever quotes, backslashes, commas and `=` the values hold.
#![no_main]

#[allow(dead_code)]
#[path = "../../auth/src/header.rs"]
mod header;

use arbitrary::Arbitrary;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: String,
    user: String,
    password: String,
    params: Vec<(String, String)>,
}

fuzz_target!(|inp: Input| {
    let raw = inp.raw.as_str();
    // Basic, from raw bytes.
    match header::parse_basic(raw) {
        None => {
            let basic = raw
                .split_once(' ')
                .is_some_and(|(s, _)| s.eq_ignore_ascii_case("basic"));
            assert!(!basic, "{raw:?} is Basic");
        }
        Some(Err(())) => {}
        Some(Ok((u, p))) => {
            assert!(!u.contains(':'), "user {u:?} from {raw:?}");
            let b64 = raw.split_once(' ').expect("scheme").1.trim();
            let canonical =
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}").as_bytes());
            assert_eq!(b64, canonical, "two encodings of the same credentials");
            let again = header::render_basic(&u, &p).expect("renders");
            assert_eq!(header::parse_basic(&again), Some(Ok((u, p))));
        }
    }
    // Basic, rendered.
    match header::render_basic(&inp.user, &inp.password) {
        None => assert!(inp.user.contains(':')),
        Some(h) => {
            assert!(!inp.user.contains(':'));
            assert_eq!(
                header::parse_basic(&h),
                Some(Ok((inp.user.clone(), inp.password.clone())))
            );
        }
    }
    // Bearer.
    if let Some(t) = header::parse_bearer(raw) {
        let (scheme, rest) = raw.split_once(' ').expect("scheme");
        assert!(scheme.eq_ignore_ascii_case("bearer"));
        assert_eq!(t, rest.trim());
        assert!(!t.is_empty());
        assert_eq!(header::parse_bearer(&format!("Bearer {t}")), Some(t));
    }
    // Challenges: any text parses the same twice; rendered ones round-trip.
    assert_eq!(header::parse_challenge(raw), header::parse_challenge(raw));
    let mut want: HashMap<String, String> = HashMap::new();
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in inp.params.into_iter().take(6) {
        let k: String = k
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect::<String>()
            .to_ascii_lowercase();
        if k.is_empty() || want.contains_key(&k) {
            continue;
        }
        want.insert(k.clone(), v.clone());
        params.push((k, v));
    }
    let refs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let h = header::render_challenge("Bearer", &refs);
    let (scheme, got) = header::parse_challenge(&h);
    assert_eq!(scheme, "bearer");
    assert_eq!(got, want, "{h:?}");
});
