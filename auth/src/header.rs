//! The `Authorization` and `WWW-Authenticate` headers berth reads and writes: Basic
//! credentials (RFC 7617), Bearer tokens (RFC 6750) and the challenges of the Docker token
//! flow (`Bearer realm="...",service="...",scope="..."`). Pure string work with base64 only,
//! so the fuzz crate compiles this file from source.

use base64::Engine;
use std::collections::HashMap;

/// Decodes the value of `Authorization: Basic <base64(user:password)>`. `None` when the scheme
/// is not Basic; `Some(Err)` when the credentials are not base64 of UTF-8 `user:password`.
/// The user ends at the first `:` (RFC 7617: a user-id cannot contain one); the password
/// may contain any.
#[allow(clippy::result_unit_err)]
pub fn parse_basic(value: &str) -> Option<Result<(String, String), ()>> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = match base64::engine::general_purpose::STANDARD.decode(rest.trim()) {
        Ok(d) => d,
        Err(_) => return Some(Err(())),
    };
    let Ok(s) = String::from_utf8(decoded) else {
        return Some(Err(()));
    };
    match s.split_once(':') {
        Some((u, p)) => Some(Ok((u.to_owned(), p.to_owned()))),
        None => Some(Err(())),
    }
}

/// `Basic <base64(user:password)>`; `None` for a user containing `:`, which no parser could
/// split back.
pub fn render_basic(user: &str, password: &str) -> Option<String> {
    if user.contains(':') {
        return None;
    }
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    ))
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, surrounding spaces
/// trimmed); `None` for another scheme or an empty token.
pub fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, t) = value.split_once(' ')?;
    let t = t.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !t.is_empty()).then_some(t)
}

/// Parses a challenge, `Bearer realm="...",service="...",scope="..."`, into its lowercase
/// scheme and parameters (lowercase names; values quoted, with `\` escapes, or bare up to the
/// next `,`). A repeated parameter keeps its last value.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, after)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end..])
        } else {
            match after.find(',') {
                Some(i) => (after[..i].trim_end().to_owned(), &after[i..]),
                None => (after.trim_end().to_owned(), ""),
            }
        };
        params.insert(k, v);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// Renders a challenge: `<scheme> k="v",k2="v2"` with `"` and `\` escaped in the values.
pub fn render_challenge(scheme: &str, params: &[(&str, &str)]) -> String {
    let quoted: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{scheme} {}", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        assert_eq!(
            parse_basic("Basic YWxpY2U6czNjcjN0"),
            Some(Ok(("alice".into(), "s3cr3t".into())))
        );
        assert_eq!(
            parse_basic(&render_basic("bob", "a:b:c").unwrap()),
            Some(Ok(("bob".into(), "a:b:c".into()))),
            "the password keeps its colons"
        );
        assert_eq!(render_basic("a:b", "c"), None, "no user with a colon");
        assert_eq!(parse_basic("basic !!!"), Some(Err(())));
        assert_eq!(parse_basic("Basic bm9jb2xvbg=="), Some(Err(())), "no colon");
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_basic("Basic"), None);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("bearer   abc  "), Some("abc"));
        assert_eq!(parse_bearer("Bearer  "), None);
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearer"), None);
    }

    #[test]
    fn parses_bearer_challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (s, p) = parse_challenge(r#"Basic realm="berth""#);
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "berth");
        let (_, p) = parse_challenge("Bearer realm=https://x/t, service=reg");
        assert_eq!(p["realm"], "https://x/t");
        assert_eq!(p["service"], "reg");
    }

    #[test]
    fn challenges_round_trip_quotes_and_backslashes() {
        let h = render_challenge(
            "Bearer",
            &[("realm", r#"https://x/"t"\"#), ("service", "a,b")],
        );
        let (s, p) = parse_challenge(&h);
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], r#"https://x/"t"\"#);
        assert_eq!(p["service"], "a,b");
        let (_, p) = parse_challenge(r#"Bearer realm="a\"b",service="s""#);
        assert_eq!(p["realm"], "a\"b");
        assert_eq!(p["service"], "s");
    }
}
