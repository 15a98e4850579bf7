//! Response caching (a ResponseCache ExtensionRef filter): which requests may be answered from
//! the cache and which backend answers may be kept, and for how long, as a shared cache
//! (RFC 9111). Only explicit freshness counts (`s-maxage`, `max-age`, `Expires`); a cache in
//! front of an API must not guess lifetimes (no heuristic freshness), and the backend, not the
//! gateway, decides what is cacheable. Hand-written rather than taken from a crate: the policy
//! is a deliberately narrow subset (no revalidation, no Vary, no heuristics), a few directives
//! read per request without allocating.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, COOKIE, DATE, EXPIRES, PRAGMA, SET_COOKIE,
    VARY,
};
use http::{HeaderMap, Method, StatusCode};

use crate::model::response_store::{CacheConfig, ResponseStore};

/// A rule's cache: what it may keep, and the answers it keeps (shared by every copy of the
/// rule, and kept across snapshots while the configuration stays the same).
#[derive(Debug)]
pub struct CacheRt {
    pub store: Arc<ResponseStore>,
}

impl CacheRt {
    pub fn config(&self) -> &CacheConfig {
        &self.store.config
    }
}

/// Whether a request may be answered from the cache (and its answer kept): a GET or HEAD
/// carrying no credentials and not asking to bypass caches.
pub fn request_may_use(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    if headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE) {
        return false;
    }
    let mut cache_control = false;
    for value in headers.get_all(CACHE_CONTROL) {
        cache_control = true;
        for (name, arg) in directives(value.as_bytes()) {
            let bypass = name.eq_ignore_ascii_case(b"no-cache")
                || name.eq_ignore_ascii_case(b"no-store")
                || (name.eq_ignore_ascii_case(b"max-age") && arg == Some(b"0".as_slice()));
            if bypass {
                return false;
            }
        }
    }
    // Pragma: no-cache counts only without Cache-Control (RFC 9111 5.4, as caches read it).
    let pragma = headers
        .get_all(PRAGMA)
        .iter()
        .any(|v| directives(v.as_bytes()).any(|(n, _)| n.eq_ignore_ascii_case(b"no-cache")));
    cache_control || !pragma
}

/// How long a backend answer to a GET may be kept, and the age it already has; `None` when it
/// may not be kept: a status the rule does not cache, a cookie, Vary, `private`, `no-store`,
/// `no-cache`, no explicit freshness, or already stale.
pub fn storable(
    config: &CacheConfig,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<(Duration, Duration)> {
    if !config.statuses.contains(&status) || headers.contains_key(SET_COOKIE) {
        return None;
    }
    // Any Vary: the key (host, target) would not tell the variants apart.
    if headers
        .get_all(VARY)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().is_empty())
    {
        return None;
    }
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())?;
    if length > config.max_body_bytes {
        return None;
    }
    let (mut s_maxage, mut max_age) = (None, None);
    for value in headers.get_all(CACHE_CONTROL) {
        for (name, arg) in directives(value.as_bytes()) {
            let refused = [b"private".as_slice(), b"no-store", b"no-cache"]
                .iter()
                .any(|d| name.eq_ignore_ascii_case(d));
            if refused {
                return None;
            }
            let seconds = || -> Option<u64> { std::str::from_utf8(arg?).ok()?.parse().ok() };
            if name.eq_ignore_ascii_case(b"s-maxage") {
                s_maxage = Some(seconds()?);
            } else if name.eq_ignore_ascii_case(b"max-age") {
                max_age = Some(seconds()?);
            }
        }
    }
    let lifetime = match s_maxage.or(max_age) {
        Some(seconds) => Duration::from_secs(seconds),
        None => expires_lifetime(headers, now)?,
    };
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let ttl = lifetime.checked_sub(age)?.min(config.max_ttl);
    (!ttl.is_zero()).then_some((ttl, age))
}

/// Expires − Date (or − now without a Date); an invalid Expires means already expired.
fn expires_lifetime(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let expires = http_date(headers.get(EXPIRES)?.as_bytes())?;
    let date = headers
        .get(DATE)
        .and_then(|d| http_date(d.as_bytes()))
        .unwrap_or(now);
    expires.duration_since(date).ok()
}

fn http_date(value: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(value).ok()?;
    let zoned = jiff::fmt::rfc2822::parse(text).ok()?;
    Some(SystemTime::from(zoned.timestamp()))
}

/// The directives of a Cache-Control (or Pragma) value: (name, argument without quotes).
fn directives(value: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    value.split(|b| *b == b',').filter_map(|part| {
        let part = part.trim_ascii();
        if part.is_empty() {
            return None;
        }
        Some(match part.iter().position(|b| *b == b'=') {
            Some(eq) => {
                let arg = part[eq + 1..].trim_ascii();
                let arg = arg
                    .strip_prefix(b"\"")
                    .and_then(|a| a.strip_suffix(b"\""))
                    .unwrap_or(arg);
                (part[..eq].trim_ascii(), Some(arg))
            }
            None => (part, None),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn config() -> CacheConfig {
        CacheConfig {
            max_ttl: Duration::from_secs(60),
            max_body_bytes: 100,
            statuses: Box::new([StatusCode::OK, StatusCode::NOT_FOUND]),
            max_entries: 10,
        }
    }

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ttl(fields: &[(&'static str, &'static str)]) -> Option<u64> {
        let mut h = headers(fields);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        storable(&config(), StatusCode::OK, &h, SystemTime::now()).map(|(ttl, _)| ttl.as_secs())
    }

    #[test]
    fn explicit_freshness_sets_the_lifetime_capped_by_max_ttl() {
        assert_eq!(ttl(&[("cache-control", "public, max-age=10")]), Some(10));
        assert_eq!(
            ttl(&[("cache-control", "max-age=10, s-maxage=20")]),
            Some(20)
        );
        assert_eq!(ttl(&[("cache-control", "max-age=3600")]), Some(60));
        assert_eq!(
            ttl(&[("cache-control", "max-age=10"), ("age", "4")]),
            Some(6)
        );
        assert_eq!(ttl(&[("cache-control", "max-age=10"), ("age", "10")]), None);
        assert_eq!(
            ttl(&[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:07 GMT")
            ]),
            Some(30)
        );
        assert_eq!(ttl(&[("expires", "0")]), None);
    }

    #[test]
    fn answers_the_backend_keeps_private_are_not_stored() {
        assert_eq!(ttl(&[]), None, "no explicit freshness");
        assert_eq!(ttl(&[("cache-control", "public")]), None);
        assert_eq!(ttl(&[("cache-control", "private, max-age=10")]), None);
        assert_eq!(ttl(&[("cache-control", "max-age=10, no-store")]), None);
        assert_eq!(ttl(&[("cache-control", "no-cache=\"x\", max-age=9")]), None);
        assert_eq!(
            ttl(&[("cache-control", "max-age=10"), ("set-cookie", "a=b")]),
            None
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=10"), ("vary", "accept-encoding")]),
            None
        );
        let mut big = headers(&[("cache-control", "max-age=10"), ("content-length", "101")]);
        assert_eq!(
            storable(&config(), StatusCode::OK, &big, SystemTime::now()),
            None
        );
        big.insert(CONTENT_LENGTH, HeaderValue::from_static("100"));
        assert!(storable(&config(), StatusCode::OK, &big, SystemTime::now()).is_some());
        assert_eq!(
            storable(&config(), StatusCode::CREATED, &big, SystemTime::now()),
            None
        );
        big.remove(CONTENT_LENGTH);
        assert_eq!(
            storable(&config(), StatusCode::OK, &big, SystemTime::now()),
            None,
            "a body of unknown length"
        );
    }

    #[test]
    fn credentials_and_no_cache_requests_bypass_the_cache() {
        let may = |m: Method, f: &[(&'static str, &'static str)]| request_may_use(&m, &headers(f));
        assert!(may(Method::GET, &[]));
        assert!(may(Method::HEAD, &[("cache-control", "max-age=5")]));
        assert!(!may(Method::POST, &[]));
        assert!(!may(Method::GET, &[("authorization", "Bearer x")]));
        assert!(!may(Method::GET, &[("cookie", "a=b")]));
        assert!(!may(Method::GET, &[("cache-control", "no-cache")]));
        assert!(!may(Method::GET, &[("cache-control", "max-age=0")]));
        assert!(!may(Method::GET, &[("pragma", "no-cache")]));
        assert!(may(
            Method::GET,
            &[("pragma", "no-cache"), ("cache-control", "max-age=5")]
        ));
    }

    #[test]
    fn invalid_configurations_are_refused() {
        use crate::model::response_store::CacheError;
        use rauta_common::api::v1::ResponseCache;
        let valid = ResponseCache {
            max_ttl: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            max_body_bytes: 10,
            statuses: vec![],
            max_entries: 3,
        };
        let built = CacheConfig::try_from(&valid).unwrap();
        assert_eq!(&*built.statuses, [StatusCode::OK]);
        let mut bad = valid.clone();
        bad.max_ttl = None;
        assert!(matches!(
            CacheConfig::try_from(&bad),
            Err(CacheError::MaxTtl)
        ));
        let mut bad = valid.clone();
        bad.statuses = vec![700];
        assert!(matches!(
            CacheConfig::try_from(&bad),
            Err(CacheError::Status(700))
        ));
        let mut bad = valid;
        bad.max_entries = 0;
        assert!(matches!(
            CacheConfig::try_from(&bad),
            Err(CacheError::MaxEntries)
        ));
    }
}
