//! `Accept` negotiation (`oci::accept`, moved out of the server's manifest route for this).
//! Input: the first line holds the media types offered (space-separated, in the server's
//! order of preference), every further line is one `Accept` header. The parser and the
//! negotiation agree with a slow reference written from RFC 9110 §12.5.1 (OWS is SP / HTAB,
//! a qvalue has at most three decimals, the most specific range decides); the chosen type is
//! one of the offered, acceptable (q > 0), none offered is better, ties go to the earliest, and
//! a type whose exact range says `q=0` is never chosen.
#![no_main]

use berth_oci::accept::Accept;
use libfuzzer_sys::fuzz_target;

fn ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn token(s: &str) -> bool {
    const SPECIAL: &str = "!#$%&'*+-.^_`|~";
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || SPECIAL.contains(c))
}

/// A qvalue as thousandths, via its decimal value.
fn qvalue(s: &str) -> Option<u16> {
    let ok = match s.as_bytes() {
        [b'0'] | [b'1'] => true,
        [b'0', b'.', rest @ ..] => rest.len() <= 3 && rest.iter().all(u8::is_ascii_digit),
        [b'1', b'.', rest @ ..] => rest.len() <= 3 && rest.iter().all(|b| *b == b'0'),
        _ => false,
    };
    if !ok {
        return None;
    }
    let v: f64 = s.strip_suffix('.').unwrap_or(s).parse().ok()?;
    Some((v * 1000.0).round() as u16)
}

/// `media-range *( OWS ";" OWS parameter )`: a range, its weight (the first `q` parameter;
/// parameters before it must be `name=value`, what follows it is not read).
fn element(e: &str) -> Option<(String, u16)> {
    let e = e.trim_matches(ows);
    let mut parts = e.split(';');
    let range = parts.next()?.trim_matches(ows);
    let slash = range.find('/')?;
    let (t, sub) = (&range[..slash], &range[slash + 1..]);
    if !token(t) || !token(sub) || (t == "*" && sub != "*") {
        return None;
    }
    let mut q = 1000;
    for p in parts {
        let p = p.trim_matches(ows);
        let eq = p.find('=')?;
        let (k, v) = (p[..eq].trim_matches(ows), p[eq + 1..].trim_matches(ows));
        if k == "q" || k == "Q" {
            q = qvalue(v)?;
            break;
        }
    }
    Some((range.to_ascii_lowercase(), q))
}

fn reference_quality(present: bool, ranges: &[(String, u16)], o: &str) -> u16 {
    if !present {
        return 1000;
    }
    let o = o.to_ascii_lowercase();
    let Some((t, _)) = o.split_once('/') else {
        return 0;
    };
    let specificity = |r: &str| {
        if r == o {
            3
        } else if r == format!("{t}/*") {
            2
        } else if r == "*/*" {
            1
        } else {
            0
        }
    };
    let mut best: Option<(u8, u16)> = None;
    for (r, q) in ranges {
        let s = specificity(r);
        if s > 0 && best.is_none_or(|(b, _)| s > b) {
            best = Some((s, *q));
        }
    }
    best.map_or(0, |(_, q)| q)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = s.split('\n');
    let offered: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .split(' ')
        .filter(|o| !o.is_empty())
        .take(8)
        .collect();
    let headers: Vec<&str> = lines.collect();
    let a = Accept::parse(headers.iter().copied());
    assert_eq!(a, Accept::parse(headers.iter().copied()), "deterministic");
    let present = !headers.is_empty();
    let want: Vec<(String, u16)> = headers
        .iter()
        .flat_map(|h| h.split(','))
        .filter_map(element)
        .collect();
    let got: Vec<(String, u16)> = a.ranges.iter().map(|r| (r.range.clone(), r.q)).collect();
    assert_eq!(a.present, present);
    assert_eq!(got, want, "ranges of {headers:?}");
    let qs: Vec<u16> = offered
        .iter()
        .map(|o| reference_quality(present, &want, o))
        .collect();
    for (o, q) in offered.iter().zip(&qs) {
        assert_eq!(a.quality(o), *q, "quality of {o:?} under {headers:?}");
    }
    let chosen = a.negotiate(&offered);
    let best = qs.iter().copied().max().filter(|q| *q > 0);
    match (chosen, best) {
        (None, None) => {}
        (Some(c), Some(b)) => {
            let i = offered
                .iter()
                .position(|o| *o == c)
                .expect("chosen is offered");
            assert_eq!(
                qs[i], b,
                "{c:?} is not the best of {offered:?} under {headers:?}"
            );
            assert!(qs[..i].iter().all(|q| *q < b), "a tie goes to the earliest");
            let exact_zero = want
                .iter()
                .find(|(r, _)| *r == c.to_ascii_lowercase())
                .is_some_and(|(_, q)| *q == 0);
            assert!(!exact_zero, "{c:?} was refused with q=0");
        }
        (c, b) => panic!("chose {c:?}, best weight {b:?}, {offered:?} under {headers:?}"),
    }
});
