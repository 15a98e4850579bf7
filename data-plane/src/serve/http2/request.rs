//! A decoded header block to a request head or trailers, with RFC 9113 section 8 checks.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::limits::Limits;

/// Why a header block cannot become a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Against RFC 9113 section 8: answered 400.
    Malformed(&'static str),
    /// Over the header size or count limit: answered 431.
    TooLarge,
}

/// Collects a block's fields as the decoder hands them over; the first problem is kept and
/// the rest of the block only decoded (the HPACK context must stay in step). Values are
/// gathered in one buffer, which the request's URI and fields then share.
pub struct Fields {
    trailers: bool,
    max_bytes: usize,
    max_count: usize,
    size: usize,
    count: usize,
    method: Option<Method>,
    scheme: Option<Scheme>,
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    regular: bool,
    /// A pseudo-header was in the block (in trailers: a request on a used stream id).
    pub pseudo_seen: bool,
    values: BytesMut,
    names: Vec<(HeaderName, Range<usize>)>,
    pub content_length: Option<u64>,
    pub error: Option<Rejected>,
}

impl Fields {
    pub fn new(limits: &Limits, trailers: bool) -> Self {
        Fields {
            trailers,
            max_bytes: limits.max_header_bytes,
            max_count: limits.max_headers,
            size: 0,
            count: 0,
            method: None,
            scheme: None,
            authority: None,
            path: None,
            regular: false,
            pseudo_seen: false,
            values: BytesMut::new(),
            names: Vec::new(),
            content_length: None,
            error: None,
        }
    }

    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Err(rejected) = self.take(name, value) {
            self.error = Some(rejected);
        }
    }

    fn take(&mut self, name: &[u8], value: &[u8]) -> Result<(), Rejected> {
        // Sizes as SETTINGS_MAX_HEADER_LIST_SIZE counts them (RFC 9113 section 6.5.2).
        self.size += name.len() + value.len() + 32;
        if self.size > self.max_bytes {
            return Err(Rejected::TooLarge);
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            return self.pseudo(pseudo, value);
        }
        // Counted as HTTP/1.1 counts header lines: pseudo-headers are the request line.
        self.count += 1;
        if self.count > self.max_count {
            return Err(Rejected::TooLarge);
        }
        self.regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err(Rejected::Malformed("upper-case field name"));
        }
        let name =
            HeaderName::from_bytes(name).map_err(|_| Rejected::Malformed("invalid field name"))?;
        // Connection-specific fields have no place in HTTP/2 (section 8.2.2).
        match name.as_str() {
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => {
                return Err(Rejected::Malformed("connection-specific field"));
            }
            "te" if value != b"trailers" => {
                return Err(Rejected::Malformed("te other than trailers"));
            }
            _ => {}
        }
        // NUL, CR and LF make a request malformed (RFC 9113 section 8.2.1); other controls are
        // not field content either (RFC 9110 section 5.5).
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(Rejected::Malformed("control character in a field value"));
        }
        if name == CONTENT_LENGTH && !self.trailers {
            let len = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Rejected::Malformed("invalid content-length"))?;
            if self.content_length.is_some_and(|l| l != len) {
                return Err(Rejected::Malformed("conflicting content-length"));
            }
            self.content_length = Some(len);
        }
        let range = self.keep(value);
        self.names.push((name, range));
        Ok(())
    }

    fn keep(&mut self, value: &[u8]) -> Range<usize> {
        if self.values.capacity() == 0 {
            self.values.reserve(self.max_bytes.min(1024));
        }
        let start = self.values.len();
        self.values.extend_from_slice(value);
        start..self.values.len()
    }

    /// The regular fields, checked.
    fn header_map(
        names: Vec<(HeaderName, Range<usize>)>,
        values: &Bytes,
    ) -> Result<HeaderMap, Rejected> {
        let mut headers = HeaderMap::with_capacity(names.len());
        for (name, range) in names {
            let value = HeaderValue::from_maybe_shared(values.slice(range))
                .map_err(|_| Rejected::Malformed("invalid field value"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }

    /// The fields of a trailers block.
    pub fn into_trailers(self) -> Result<HeaderMap, Rejected> {
        if let Some(rejected) = self.error {
            return Err(rejected);
        }
        Fields::header_map(self.names, &self.values.freeze())
    }

    fn pseudo(&mut self, name: &[u8], value: &[u8]) -> Result<(), Rejected> {
        self.pseudo_seen = true;
        if self.trailers {
            return Err(Rejected::Malformed("pseudo-header in trailers"));
        }
        if self.regular {
            return Err(Rejected::Malformed("pseudo-header after a regular field"));
        }
        let bad = |what| Rejected::Malformed(what);
        fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), Rejected> {
            match slot.replace(value) {
                None => Ok(()),
                Some(_) => Err(Rejected::Malformed("repeated pseudo-header")),
            }
        }
        match name {
            b"method" => once(
                &mut self.method,
                Method::from_bytes(value).map_err(|_| bad("invalid :method"))?,
            ),
            b"scheme" => once(
                &mut self.scheme,
                Scheme::try_from(value).map_err(|_| bad("invalid :scheme"))?,
            ),
            b"authority" => {
                let range = self.keep(value);
                once(&mut self.authority, range)
            }
            b"path" => {
                if value.is_empty() {
                    return Err(bad("empty :path"));
                }
                // No whitespace or controls: the path goes into an HTTP/1.1 request line.
                if value.iter().any(|&b| b <= b' ' || b == 0x7f) {
                    return Err(bad("invalid :path"));
                }
                let range = self.keep(value);
                once(&mut self.path, range)
            }
            _ => Err(bad("unknown pseudo-header")),
        }
    }

    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// Whether the pseudo-headers make a request (the URI's own syntax is checked later).
    pub fn check(&self) -> Result<(), Rejected> {
        if let Some(rejected) = self.error {
            return Err(rejected);
        }
        let method = self
            .method
            .as_ref()
            .ok_or(Rejected::Malformed("no :method"))?;
        if *method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() {
                return Err(Rejected::Malformed("CONNECT with :scheme or :path"));
            }
            if self.authority.is_none() {
                return Err(Rejected::Malformed("no :authority"));
            }
        } else if self.scheme.is_none() || self.path.is_none() {
            return Err(Rejected::Malformed("no :scheme or :path"));
        }
        Ok(())
    }

    /// Writes the request as an HTTP/1.1 head (`host` from `:authority`, cookie crumbs joined)
    /// for the fast path's planner; false when it has no plain HTTP/1.1 form, and the
    /// general path takes it.
    pub fn http1_head(&self, out: &mut Vec<u8>) -> bool {
        let (Some(method), Some(path), Some(authority)) =
            (&self.method, &self.path, &self.authority)
        else {
            return false;
        };
        let authority = &self.values[authority.clone()];
        let plain_authority =
            |b: &u8| b.is_ascii_alphanumeric() || b"-._~:[]%!$&'()*+,;=".contains(b);
        if *method == Method::CONNECT
            || !authority.iter().all(plain_authority)
            || self.names.iter().any(|(n, _)| *n == http::header::HOST)
        {
            return false;
        }
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.values[path.clone()]);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(authority);
        out.extend_from_slice(b"\r\n");
        let mut cookies = self
            .names
            .iter()
            .filter(|(n, _)| *n == http::header::COOKIE)
            .peekable();
        if cookies.peek().is_some() {
            // Crumbs are joined for an HTTP/1.1 upstream (RFC 9113 section 8.2.3).
            out.extend_from_slice(b"cookie: ");
            for (i, (_, range)) in cookies.enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"; ");
                }
                out.extend_from_slice(&self.values[range.clone()]);
            }
            out.extend_from_slice(b"\r\n");
        }
        for (name, range) in &self.names {
            if *name == http::header::COOKIE {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&self.values[range.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        true
    }

    /// The request head, once the whole block was collected.
    pub fn into_request<B>(self, body: B) -> Result<Request<B>, Rejected> {
        if let Some(rejected) = self.error {
            return Err(rejected);
        }
        let method = self.method.ok_or(Rejected::Malformed("no :method"))?;
        let values = self.values.freeze();
        let authority = self
            .authority
            .map(|r| Authority::from_maybe_shared(values.slice(r)))
            .transpose()
            .map_err(|_| Rejected::Malformed("invalid :authority"))?;
        let path = self
            .path
            .map(|r| PathAndQuery::from_maybe_shared(values.slice(r)))
            .transpose()
            .map_err(|_| Rejected::Malformed("invalid :path"))?;
        let mut parts = http::uri::Parts::default();
        if method == Method::CONNECT {
            // Plain CONNECT names only the authority (section 8.5).
            if self.scheme.is_some() || path.is_some() {
                return Err(Rejected::Malformed("CONNECT with :scheme or :path"));
            }
            parts.authority = Some(authority.ok_or(Rejected::Malformed("no :authority"))?);
        } else {
            parts.scheme = Some(self.scheme.ok_or(Rejected::Malformed("no :scheme"))?);
            parts.path_and_query = Some(path.ok_or(Rejected::Malformed("no :path"))?);
            parts.authority = authority;
            if parts.authority.is_none() {
                // A URI with a scheme needs an authority; without one, Host names the target.
                parts.scheme = None;
            }
        }
        let uri = Uri::from_parts(parts).map_err(|_| Rejected::Malformed("invalid target"))?;
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = Fields::header_map(self.names, &values)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(fields: &[(&str, &str)]) -> Result<Request<()>, Rejected> {
        let mut f = Fields::new(&Limits::default(), false);
        for (n, v) in fields {
            f.field(n.as_bytes(), v.as_bytes());
        }
        f.into_request(())
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.com:8443"),
        (":path", "/a?b=c"),
    ];

    #[test]
    fn a_request_gets_its_uri_and_fields() {
        let mut fields = GET.to_vec();
        fields.push(("cookie", "a=1"));
        fields.push(("cookie", "b=2"));
        fields.push(("te", "trailers"));
        let req = collect(&fields).unwrap();
        assert_eq!(req.uri(), "https://example.com:8443/a?b=c");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.headers().get_all("cookie").iter().count(), 2);
        let no_authority = collect(&[(":method", "GET"), (":scheme", "http"), (":path", "/")]);
        assert_eq!(no_authority.unwrap().uri(), "/");
    }

    #[test]
    fn malformed_blocks_are_rejected() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![(":method", "GET"), (":path", "/")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "")],
            [&GET[..], &[(":path", "/again")]].concat(),
            [&[("x", "1")][..], &GET[..]].concat(),
            [&GET[..], &[("Upper", "1")]].concat(),
            [&GET[..], &[("connection", "close")]].concat(),
            [&GET[..], &[("te", "gzip")]].concat(),
            [&GET[..], &[("x", "a\nb")]].concat(),
            [&GET[..], &[(":protocol", "websocket")]].concat(),
            [
                &GET[..],
                &[("content-length", "1"), ("content-length", "2")],
            ]
            .concat(),
            [&GET[..], &[("content-length", "-1")]].concat(),
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "a.example"),
                (":path", "/ HTTP/1.1\r\nhost: b.example\r\n\r\n"),
            ],
        ];
        for case in cases {
            assert!(
                matches!(collect(&case), Err(Rejected::Malformed(_))),
                "{case:?}"
            );
        }
    }

    #[test]
    fn plain_requests_have_an_http1_form() {
        let mut f = Fields::new(&Limits::default(), false);
        for (n, v) in GET
            .iter()
            .chain(&[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2")])
        {
            f.field(n.as_bytes(), v.as_bytes());
        }
        assert!(f.check().is_ok());
        let mut head = Vec::new();
        assert!(f.http1_head(&mut head));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /a?b=c HTTP/1.1\r\nhost: example.com:8443\r\ncookie: a=1; b=2\r\n\
             accept: */*\r\n\r\n"
        );
        for extra in [("host", "other.example")] {
            let mut f = Fields::new(&Limits::default(), false);
            for (n, v) in GET.iter().chain(&[extra]) {
                f.field(n.as_bytes(), v.as_bytes());
            }
            assert!(!f.http1_head(&mut Vec::new()), "{extra:?}");
        }
        let mut f = Fields::new(&Limits::default(), false);
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a b"),
            (":path", "/"),
        ] {
            f.field(n.as_bytes(), v.as_bytes());
        }
        assert!(!f.http1_head(&mut Vec::new()), "an authority with a space");
        assert!(matches!(
            collect(&[&GET[..], &[("x", "a\rb")]].concat()),
            Err(Rejected::Malformed(_))
        ));
    }

    #[test]
    fn limits_give_too_large() {
        let many: Vec<(String, String)> =
            (0..101).map(|i| (format!("x-{i}"), "v".into())).collect();
        let mut f = Fields::new(&Limits::default(), false);
        for (n, v) in GET
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .chain(many)
        {
            f.field(n.as_bytes(), v.as_bytes());
        }
        assert_eq!(f.into_request(()).unwrap_err(), Rejected::TooLarge);
        let big = "v".repeat(70_000);
        let req = collect(&[&GET[..], &[("x-big", big.as_str())]].concat());
        assert_eq!(req.unwrap_err(), Rejected::TooLarge);
    }
}
