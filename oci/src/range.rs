//! Byte ranges on the wire: a blob GET's `Range` header (RFC 9110 §14.2, one range) and an
//! upload chunk's `Content-Range` (distribution spec: `^[0-9]+-[0-9]+$`).

/// What a `Range` header asks of a blob of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: serve everything (RFC 9110 says to ignore what cannot be parsed,
    /// and berth serves several ranges as one full body).
    Full,
    /// One satisfiable range, `start..end` (end exclusive), never empty and never past the end.
    Part {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// A range that starts past the end, or a zero-length suffix: 416.
    Unsatisfiable,
}

/// `1*DIGIT` as a number: no sign, no spaces (Rust's `u64::from_str` would take a `+`).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` against a blob of `total` bytes.
pub fn parse_range(header: Option<&str>, total: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return match digits(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if total == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part {
                start: total.saturating_sub(n),
                end: total,
            },
            None => RangeRequest::Full,
        };
    }
    let Some(start) = digits(a) else {
        return RangeRequest::Full;
    };
    let last = if b.is_empty() {
        total.saturating_sub(1)
    } else {
        match digits(b) {
            Some(n) => n,
            None => return RangeRequest::Full,
        }
    };
    if start >= total {
        return RangeRequest::Unsatisfiable;
    }
    if last < start {
        return RangeRequest::Full;
    }
    RangeRequest::Part {
        start,
        end: last.min(total - 1) + 1,
    }
}

/// Parses an upload chunk's `Content-Range: <start>-<end>` (inclusive); `bytes ` and `/total`
/// are tolerated, as some clients send the RFC 9110 form. `None` when malformed; whether the
/// range continues the upload is the caller's rule.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let s = header.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split_once('/').map_or(s, |(a, _)| a);
    let (a, b) = s.split_once('-')?;
    Some((digits(a)?, digits(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Part { start, end }
    }

    #[test]
    fn ranges() {
        use RangeRequest::{Full, Unsatisfiable};
        let table: &[(Option<&str>, u64, RangeRequest)] = &[
            (None, 10, Full),
            (Some("bytes=0-4"), 10, part(0, 5)),
            (Some("bytes=5-"), 10, part(5, 10)),
            (Some("bytes=-3"), 10, part(7, 10)),
            (Some("bytes=-30"), 10, part(0, 10)),
            (Some("bytes=8-100"), 10, part(8, 10)),
            (Some(" bytes= 1 - 2 "), 10, part(1, 3)),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=-1"), 0, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=5-2"), 10, Full),
            (Some("bytes=0-1,3-4"), 10, Full),
            (Some("items=0-1"), 10, Full),
            (Some("bytes=x-1"), 10, Full),
            // Found by the `ranges` fuzz target: a sign is not a digit.
            (Some("bytes=+0-+4"), 10, Full),
            (Some("bytes=-+3"), 10, Full),
            (Some("bytes=0-99999999999999999999999"), 10, Full),
        ];
        for (h, total, want) in table {
            assert_eq!(parse_range(*h, *total), *want, "{h:?} of {total}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-1023"), Some((0, 1023)));
        assert_eq!(parse_content_range("bytes 10-20/*"), Some((10, 20)));
        for bad in ["", "1", "-1", "a-b", "1-", "+1-2", "1 - 2", "1-+2"] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}
