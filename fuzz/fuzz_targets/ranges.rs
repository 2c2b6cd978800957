//! `Range` and `Content-Range`: the parsers agree with a reference written from RFC 9110's
//! grammar in wide arithmetic, a satisfiable range always lies inside the blob, and every
//! accepted Content-Range renders back to the same numbers.
#![no_main]

use berth_oci::range::{parse_content_range, parse_range, RangeRequest};
use libfuzzer_sys::fuzz_target;

/// RFC 9110 `1*DIGIT`, as a wide number; `None` if empty, not digits, or beyond u64.
fn number(s: &str) -> Option<u128> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let s = s.trim_start_matches('0');
    if s.len() > 30 {
        return None;
    }
    let n: u128 = s
        .chars()
        .fold(0, |n, c| n * 10 + u128::from(c as u8 - b'0'));
    (n <= u128::from(u64::MAX)).then_some(n)
}

fn reference(h: Option<&str>, total: u64) -> RangeRequest {
    let total = u128::from(total);
    let Some(spec) = h.map(str::trim).and_then(|h| h.strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some(dash) = spec.find('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (spec[..dash].trim(), spec[dash + 1..].trim());
    let (start, end) = match (
        number(first),
        first.is_empty(),
        number(last),
        last.is_empty(),
    ) {
        // bytes=-n: the last n bytes.
        (_, true, Some(n), _) => {
            if n == 0 || total == 0 {
                return RangeRequest::Unsatisfiable;
            }
            (total.saturating_sub(n), total)
        }
        // bytes=a- and bytes=a-b.
        (Some(a), _, b, b_empty) if b.is_some() || b_empty => {
            if a >= total {
                return RangeRequest::Unsatisfiable;
            }
            let b = b.unwrap_or(total - 1);
            if b < a {
                return RangeRequest::Full;
            }
            (a, b.min(total - 1) + 1)
        }
        _ => return RangeRequest::Full,
    };
    RangeRequest::Part {
        start: start as u64,
        end: end as u64,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let total = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) >> (data[0] % 64);
    let Ok(h) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    let got = parse_range(Some(h), total);
    assert_eq!(got, reference(Some(h), total), "{h:?} of {total}");
    if let RangeRequest::Part { start, end } = got {
        assert!(
            start < end && end <= total,
            "{h:?} of {total}: {start}..{end}"
        );
    }
    if let Some((a, b)) = parse_content_range(h) {
        assert_eq!(parse_content_range(&format!("{a}-{b}")), Some((a, b)));
        let digits = |s: &str| s.chars().filter(char::is_ascii_digit).count();
        assert!(digits(h) >= digits(&format!("{a}{b}")));
    }
});
