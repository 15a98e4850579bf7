//! Request paths in the one form routing and policies compare: "." and ".." segments resolved
//! (also written `%2e`, RFC 3986 5.2.4), repeated slashes merged (as Envoy Gateway does by
//! default), percent-encoded unreserved characters decoded (RFC 3986 6.2.2.2: `%61` is `a`).
//! Otherwise `/%61dmin`, `//admin` or `/public/../admin` would miss a rule for `/admin` that a
//! backend, reading them as `/admin`, serves. Encoded slashes (`%2F`) stay as they are: they
//! may be part of a segment (an id with a slash in it). A `%` that does not start an escape
//! (two hex digits) makes the path invalid: decoding next to it could make a new escape
//! (`%6%61` would become `%6a`), and backends would read it each their own way. So do a
//! backslash and a dot segment with parameters (`..;`), which some backends read as a slash or
//! `..`.

use std::borrow::Cow;

/// Whether `path` is not in normal form (or is invalid). Cheap: no allocation.
pub fn needs_normalizing(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.windows(2).any(|w| w == b"//")
        || has_ambiguous_part(path)
        || bytes.iter().enumerate().any(|(i, &b)| {
            b == b'%' && (!is_escape(&bytes[i..]) || encoded_unreserved(&bytes[i..]).is_some())
        })
        || has_dot_segments(path)
}

/// Parts some backends read as separators or dot segments where others do not: a backslash
/// (a slash to IIS and ASP.NET) and a dot segment with parameters (`..;x`, which Tomcat and
/// Spring read as `..`). Paths holding them are refused rather than guessed at.
fn has_ambiguous_part(path: &str) -> bool {
    path.contains('\\')
        // Most paths have no ';': one memchr, no split.
        || path.contains(';') && path.split('/').any(|s| {
            s.split_once(';')
                .is_some_and(|(before, _)| before.is_empty() || dot_segment(before).is_some())
        })
}

/// Whether `bytes` starts with `%` and two hex digits.
fn is_escape(bytes: &[u8]) -> bool {
    matches!(bytes, [b'%', hi, lo, ..] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit())
}

/// Whether a path has "." or ".." segments (also written %2e).
pub fn has_dot_segments(path: &str) -> bool {
    // Only segments starting with '.' or '%' can be dot segments: no allocation otherwise.
    path.split('/')
        .any(|s| (s.starts_with('.') || s.starts_with('%')) && dot_segment(s).is_some())
}

/// `path` in normal form (see the module's comment); borrowed when it already is; `None` when
/// it holds a `%` that starts no escape.
pub fn normalized(path: &str) -> Option<Cow<'_, str>> {
    if !needs_normalizing(path) {
        return Some(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    if has_ambiguous_part(path)
        || bytes
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'%' && !is_escape(&bytes[i..]))
    {
        return None;
    }
    let decoded = decode_unreserved(path);
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dot_segment(segment).unwrap_or(segment) {
            // An empty segment is a repeated slash, but for the last: a trailing slash.
            "" if !last => {}
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Some(Cow::Owned(format!("/{}", out.join("/"))))
}

/// A path segment that means "." or ".." once %2e is decoded.
fn dot_segment(segment: &str) -> Option<&'static str> {
    if segment.len() > 6 {
        return None;
    }
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    match decoded.as_str() {
        "." => Some("."),
        ".." => Some(".."),
        _ => None,
    }
}

/// The unreserved character `%XX` at the start of `bytes` encodes, if it encodes one.
fn encoded_unreserved(bytes: &[u8]) -> Option<char> {
    let [b'%', hi, lo, ..] = bytes else {
        return None;
    };
    let hex = |b: u8| char::from(b).to_digit(16);
    let value = u8::try_from(hex(*hi)? * 16 + hex(*lo)?).ok()?;
    let c = char::from(value);
    (c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')).then_some(c)
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(c) = encoded_unreserved(&bytes[i..]) {
            out.push(c);
            i += 3;
        } else {
            // Char boundaries: only ASCII '%' sequences are replaced, the rest copied as is.
            let next = path[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&path[i..i + next]);
            i += next;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_put_in_one_form() {
        let n = |p: &str| normalized(p).map(Cow::into_owned).unwrap_or_default();
        assert_eq!(n("/public/../admin"), "/admin");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/public/%2e%2E/admin"), "/admin");
        assert_eq!(n("//admin//x/"), "/admin/x/");
        assert_eq!(n("/%61dmin/%7Euser"), "/admin/~user");
        assert_eq!(n("/%2561"), "/%2561", "only one level of decoding");
        assert_eq!(n("/a%2Fb"), "/a%2Fb", "encoded slashes stay");
        assert_eq!(n("/caf\u{e9}/%41"), "/caf\u{e9}/A");
        assert_eq!(n("//"), "/");
        // A '%' that starts no escape: invalid, not decoded around (no %6%61 -> %6a).
        for invalid in [
            "/%6%61",
            "/a%",
            "/%zz",
            "/%2",
            "/a\\b",
            "/public/..;/admin",
            "/.;x/",
            "/;x",
        ] {
            assert!(
                needs_normalizing(invalid) && normalized(invalid).is_none(),
                "{invalid}"
            );
        }
        for already in [
            "/",
            "/a/b",
            "/a..b/.c",
            "/%2Fetc",
            "/x%20y",
            "/app;jsessionid=1/x",
        ] {
            assert!(!needs_normalizing(already), "{already}");
            assert!(matches!(normalized(already), Some(Cow::Borrowed(_))));
        }
    }
}
