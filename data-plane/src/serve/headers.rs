//! What the request path does to headers and targets whatever the route: the Host a request
//! is routed by (and Hosts it refuses), dot segments resolved before routing, connection-scoped
//! fields removed, Cookie joined for HTTP/1.1, X-Forwarded-For appended.

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONNECTION, COOKIE, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};
use rauta_common::paths;

use crate::body::client::ClientBody;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static TRAILER: HeaderName = HeaderName::from_static("trailer");

/// The request's host, lower-cased, without port.
pub(crate) fn request_host(req: &Request<ClientBody>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    let host = without_port(raw);
    // Hosts are nearly always lower case already: borrow then.
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// What the proxy answers `Allow` with when it refuses a method itself.
pub(crate) const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// Why a request's Host fields make it one to refuse (RFC 9112 section 3.2, RFC 9113
/// section 8.3.1): routed by one Host while another goes upstream, a request could reach a
/// backend under a name no route allowed.
pub(crate) fn host_problem(req: &Request<ClientBody>) -> Option<&'static [u8]> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(b"more than one Host field\n");
    }
    match (host, req.version()) {
        (None, Version::HTTP_11) => Some(b"no Host field\n"),
        (Some(host), Version::HTTP_2) => match req.uri().authority() {
            Some(authority)
                if !authority
                    .as_str()
                    .as_bytes()
                    .eq_ignore_ascii_case(host.as_bytes()) =>
            {
                Some(b"Host differs from :authority\n")
            }
            _ => None,
        },
        _ => None,
    }
}

/// A Host value without its port (and an IPv6 literal without brackets).
pub(crate) fn without_port(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        rest.split_once(']').map_or(raw, |(ip, _)| ip)
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    }
}
/// The request target with its path in normal form (`rauta_common::paths`: dot segments
/// resolved, repeated slashes merged, encoded unreserved characters decoded). `None` when it
/// already is (the common case, no allocation); `Some(None)` when the path or the result is
/// not a valid target.
pub(crate) fn normalized_target(uri: &Uri) -> Option<Option<PathAndQuery>> {
    let path = match paths::normalized(uri.path()) {
        Some(Cow::Borrowed(_)) => return None,
        Some(Cow::Owned(p)) => p,
        // A '%' that starts no escape: not a valid target.
        None => return Some(None),
    };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    Some(PathAndQuery::try_from(target).ok())
}

/// HTTP/2 clients may split Cookie into several fields; HTTP/1.1 allows only one
/// (RFC 9113 section 8.2.3), joined with "; ".
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(COOKIE, v);
    }
}

/// Removes connection-scoped headers (RFC 9110 section 7.6.1), keeping `te: trailers` for gRPC.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const HOP_BY_HOP: [&HeaderName; 7] = [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &TRAILER,
        &TE,
    ];
    // One pass over the names, noting which are there (usually none in a request, HTTP/2
    // forbids them; Connection and maybe Transfer-Encoding in an HTTP/1.1 response), instead
    // of a hashed removal per name.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Fields Connection names go too; `close` and `keep-alive` (nearly always all it says)
    // name no field but Keep-Alive, which goes anyway.
    let names_fields = |v: &HeaderValue| {
        v.to_str().is_ok_and(|v| {
            v.split(',').map(str::trim).any(|token| {
                !token.is_empty()
                    && !token.eq_ignore_ascii_case("close")
                    && !token.eq_ignore_ascii_case("keep-alive")
            })
        })
    };
    if present & 1 != 0 && headers.get_all(CONNECTION).iter().any(names_fields) {
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    // All but TE, which stays when it is `trailers`.
    for (i, name) in HOP_BY_HOP[..6].iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if present & (1 << 6) != 0 && headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    use std::fmt::Write;
    // One allocation, handed to the header value without a copy (this runs per request).
    let mut value = String::with_capacity(48);
    // Several fields are one list (RFC 9110 section 5.3), as the fast path sends them.
    for prior in headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        value.push_str(prior);
        value.push_str(", ");
    }
    match peer.ip() {
        // Display for an address pads and buffers; the octets written plainly are cheaper.
        std::net::IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    value.push('.');
                }
                if octet >= 100 {
                    value.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    value.push(char::from(b'0' + octet / 10 % 10));
                }
                value.push(char::from(b'0' + octet % 10));
            }
        }
        ip @ std::net::IpAddr::V6(_) => {
            let _ = write!(value, "{ip}");
        }
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-keep"]);
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        let n = |t: &str| {
            normalized_target(&t.parse::<Uri>().unwrap()).map(|p| p.unwrap().as_str().to_owned())
        };
        assert_eq!(n("/public/../admin"), Some("/admin".into()));
        assert_eq!(n("/a/./b/../c?x=1"), Some("/a/c?x=1".into()));
        assert_eq!(n("/../../etc"), Some("/etc".into()));
        assert_eq!(n("/a/b/.."), Some("/a/".into()));
        assert_eq!(n("/a/b"), None);
        assert_eq!(n("/a..b/.c"), None);
        assert_eq!(n("/public/%2e%2E/admin"), Some("/admin".into()));
        assert_eq!(n("/public/.%2e/x"), Some("/x".into()));
        assert_eq!(n("/%2Fetc"), None);
        assert_eq!(n("//admin?x=%61"), Some("/admin?x=%61".into()));
        assert_eq!(n("/%61dmin"), Some("/admin".into()));
        let invalid = |t: &str| normalized_target(&t.parse::<Uri>().unwrap());
        assert!(matches!(invalid("/%6%61dmin"), Some(None)));
    }

    #[test]
    fn cookies_are_joined_for_http1() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1:5".parse().unwrap());
        append_forwarded_for(&mut h, "127.0.0.1:9".parse().unwrap());
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
        let mut each = HeaderMap::new();
        append_forwarded_for(&mut each, "255.100.99.0:1".parse().unwrap());
        append_forwarded_for(&mut each, "[2001:db8::1]:1".parse().unwrap());
        assert_eq!(
            each.get(&X_FORWARDED_FOR).unwrap(),
            "255.100.99.0, 2001:db8::1"
        );
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        append_forwarded_for(&mut h, "127.0.0.2:9".parse().unwrap());
        assert_eq!(
            h.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["10.0.0.1, 127.0.0.1, 192.0.2.1, 127.0.0.2"]
        );
    }
}
