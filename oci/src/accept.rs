//! `Accept` negotiation (RFC 9110 §12.5.1) for manifest pulls. Pure: the server hands in the
//! header values and the media types it can serve.
//!
//! A media range matches a type exactly (`type/subtype`, compared case-insensitively), by its
//! type (`type/*`) or always (`*/*`); the most specific range that matches gives the type its
//! weight (the first one if a range is repeated), and `q=0` means "not acceptable". Other
//! parameters are ignored (no manifest media type has any). An element that is not a media
//! range, or whose `q` is not an RFC 9110 qvalue, is skipped.

/// One element of an `Accept` header: a media range and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    /// `type/subtype`, `type/*` or `*/*`, lowercase.
    pub range: String,
    /// The weight in thousandths (`q=0.5` is 500); 1000 without `q`.
    pub q: u16,
}

/// The `Accept` headers of a request, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accept {
    /// Whether the request had an `Accept` header at all (without one, anything goes).
    pub present: bool,
    /// The media ranges in header order.
    pub ranges: Vec<MediaRange>,
}

/// RFC 9110 `token` characters.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_tchar)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
pub fn parse_qvalue(s: &str) -> Option<u16> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// RFC 9110 `OWS`: spaces and horizontal tabs only (`str::trim` would also take the vertical
/// tab, form feed, NEL and other Unicode spaces, which make an element invalid).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn parse_element(e: &str) -> Option<MediaRange> {
    let mut parts = trim_ows(e).split(';');
    let range = trim_ows(parts.next()?);
    let (t, sub) = range.split_once('/')?;
    if !is_token(t) || !is_token(sub) || (t == "*" && sub != "*") {
        return None;
    }
    let mut q = 1000;
    for p in parts {
        let (k, v) = trim_ows(p).split_once('=')?;
        if trim_ows(k).eq_ignore_ascii_case("q") {
            q = parse_qvalue(trim_ows(v))?;
            break;
        }
    }
    Some(MediaRange {
        range: range.to_ascii_lowercase(),
        q,
    })
}

impl Accept {
    /// Parses every value of the request's `Accept` headers (comma-separated lists).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut a = Accept::default();
        for v in values {
            a.present = true;
            a.ranges.extend(v.split(',').filter_map(parse_element));
        }
        a
    }

    /// The weight (0..=1000) of `media_type`: 1000 without an `Accept` header; else that of
    /// the most specific matching range, 0 when none matches.
    pub fn quality(&self, media_type: &str) -> u16 {
        if !self.present {
            return 1000;
        }
        let mt = media_type.to_ascii_lowercase();
        let Some((t, _)) = mt.split_once('/') else {
            return 0;
        };
        let of_type = format!("{t}/*");
        [mt.as_str(), of_type.as_str(), "*/*"]
            .iter()
            .find_map(|want| self.ranges.iter().find(|r| r.range == *want))
            .map_or(0, |r| r.q)
    }

    /// Of the types the server can serve, in its order of preference, the one with the
    /// highest weight above 0 (the earliest on a tie); `None` if the client takes none.
    pub fn negotiate<'a>(&self, offered: &[&'a str]) -> Option<&'a str> {
        let mut best: Option<(&'a str, u16)> = None;
        for o in offered {
            let q = self.quality(o);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((o, q));
            }
        }
        best.map(|(o, _)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";

    #[test]
    fn parses_elements_and_weights() {
        let a = Accept::parse(["a/b, c/D;q=0.5", " */* ;q=0.1,,", "x;q=1", "e/f;q=1.5"]);
        assert!(a.present);
        let got: Vec<(&str, u16)> = a.ranges.iter().map(|r| (r.range.as_str(), r.q)).collect();
        assert_eq!(got, [("a/b", 1000), ("c/d", 500), ("*/*", 100)]);
        assert!(!Accept::parse([]).present);
        assert!(Accept::parse([""]).present);
        for (q, want) in [
            ("0", Some(0)),
            ("0.", Some(0)),
            ("0.001", Some(1)),
            ("0.5", Some(500)),
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("0.0001", None),
            ("+0.5", None),
            ("", None),
            (".5", None),
        ] {
            assert_eq!(parse_qvalue(q), want, "{q:?}");
        }
    }

    /// Found by the `accept` fuzz target: `str::trim` took a vertical tab as whitespace, so
    /// `\u{b}*/*` counted as `*/*`. RFC 9110's OWS is SP and HTAB only.
    #[test]
    fn only_spaces_and_tabs_are_whitespace() {
        assert!(Accept::parse(["\u{b}*/*"]).ranges.is_empty());
        assert!(Accept::parse(["\u{a0}a/b;q=0.5"]).ranges.is_empty());
        let a = Accept::parse(["a/b;\u{c}q=0.5"]);
        assert_eq!(
            a.ranges[0].q, 1000,
            "a form feed before q makes it another parameter"
        );
        let a = Accept::parse(["\t a/b \t; \tq=0.5 \t"]);
        assert_eq!(a.ranges[0].q, 500);
    }

    #[test]
    fn the_most_specific_range_decides() {
        let a = Accept::parse([&*format!("*/*, {INDEX};q=0")]);
        assert_eq!(a.quality(INDEX), 0, "q=0 excludes, whatever */* says");
        assert_eq!(a.quality(IMAGE), 1000);
        assert_eq!(a.negotiate(&[INDEX, IMAGE]), Some(IMAGE));
        let a = Accept::parse(["application/*;q=0.2", &*format!("{IMAGE};q=0.3")]);
        assert_eq!(a.negotiate(&[INDEX, IMAGE]), Some(IMAGE));
        assert_eq!(a.quality("text/plain"), 0);
        let a = Accept::parse(["APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON"]);
        assert_eq!(
            a.negotiate(&[IMAGE, INDEX]),
            Some(INDEX),
            "case-insensitive"
        );
        assert_eq!(Accept::parse([""]).negotiate(&[INDEX]), None);
        assert_eq!(Accept::parse([]).negotiate(&[INDEX, IMAGE]), Some(INDEX));
        let tie = Accept::parse(["*/*"]);
        assert_eq!(
            tie.negotiate(&[IMAGE, INDEX]),
            Some(IMAGE),
            "ties: server order"
        );
    }
}
