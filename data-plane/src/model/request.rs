//! The parts of a request that routing and endpoint choice look at, whichever path parsed it.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub headers: RequestHeaders<'a>,
}

/// A request's header fields: parsed into a map by hyper, or still the raw fields of the
/// HTTP/1.1 fast path (which never builds a map).
#[derive(Debug, Clone, Copy)]
pub enum RequestHeaders<'a> {
    Map(&'a HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> RequestHeaders<'a> {
    /// The first value of a header.
    #[inline]
    pub fn get(&self, name: &HeaderName) -> Option<&'a [u8]> {
        match *self {
            RequestHeaders::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            RequestHeaders::Raw(fields) => fields
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
                .map(|h| h.value),
        }
    }

    /// Every value of a header, in order.
    pub fn get_all(self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (map, raw) = match self {
            RequestHeaders::Map(map) => (Some(map.get_all(name).iter()), None),
            RequestHeaders::Raw(fields) => (None, Some(fields.iter())),
        };
        map.into_iter().flatten().map(HeaderValue::as_bytes).chain(
            raw.into_iter()
                .flatten()
                .filter(move |h| h.name.eq_ignore_ascii_case(name.as_str()))
                .map(|h| h.value),
        )
    }

    /// A cookie's value from the Cookie header(s).
    pub fn cookie(self, name: &str) -> Option<&'a [u8]> {
        self.get_all(&http::header::COOKIE)
            .flat_map(|v| v.split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii_start();
                let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
                Some(value.trim_ascii_end())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderMap;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; session=abc ".parse().unwrap());
        h.append(http::header::COOKIE, "sessionx=2".parse().unwrap());
        let h = RequestHeaders::Map(&h);
        assert_eq!(h.cookie("session"), Some(&b"abc"[..]));
        assert_eq!(h.cookie("a"), Some(&b"1"[..]));
        assert_eq!(h.cookie("sess"), None);
        assert_eq!(h.cookie("b"), None);
        let raw = [
            httparse::Header {
                name: "Cookie",
                value: b"a=1; session=raw",
            },
            httparse::Header {
                name: "x",
                value: b"session=no",
            },
        ];
        assert_eq!(
            RequestHeaders::Raw(&raw).cookie("session"),
            Some(&b"raw"[..])
        );
    }
}
