//! Response compression (TrafficPolicy `compression`): which coding a request accepts, and
//! whether a response may be compressed. The body itself is encoded by
//! [`crate::body::compress`].

use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
};
use http::{HeaderMap, Method, StatusCode};
use rauta_common::api::v1::{Compression, ContentEncoding};

use super::FilterError;
use crate::body::compress::Encoding;

const DEFAULT_MIN_BYTES: u64 = 1024;
/// What is compressed when the policy lists no types: text a browser or API client fetches.
const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "text/xml",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/wasm",
    "image/svg+xml",
];

/// A rule's compression settings, validated.
#[derive(Debug)]
pub struct CompressionRt {
    /// By preference.
    encodings: Vec<Encoding>,
    min_bytes: u64,
    /// Lower-case media types; "type/*" for a whole type. Empty: [`DEFAULT_TYPES`].
    types: Vec<String>,
    pub level: Option<i32>,
}

impl CompressionRt {
    pub fn build(c: &Compression) -> Result<CompressionRt, FilterError> {
        let invalid = |why: String| FilterError::Compression(why);
        let mut encodings = Vec::new();
        for e in &c.encodings {
            let encoding = match ContentEncoding::try_from(*e) {
                Ok(ContentEncoding::Gzip) => Encoding::Gzip,
                Ok(ContentEncoding::Brotli) => Encoding::Brotli,
                Ok(ContentEncoding::Zstd) => Encoding::Zstd,
                _ => return Err(invalid(format!("unknown encoding {e}"))),
            };
            if !encodings.contains(&encoding) {
                encodings.push(encoding);
            }
        }
        if encodings.is_empty() {
            encodings.push(Encoding::Gzip);
        }
        for t in &c.content_types {
            let valid = t
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !t.contains([' ', ';']));
            if !valid || t.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(invalid(format!("content type {t:?}")));
            }
        }
        if c.level > 22 {
            return Err(invalid(format!("level {}", c.level)));
        }
        Ok(CompressionRt {
            encodings,
            min_bytes: match c.min_bytes {
                0 => DEFAULT_MIN_BYTES,
                n => u64::from(n),
            },
            types: c.content_types.clone(),
            level: (c.level > 0).then_some(c.level as i32),
        })
    }

    /// The coding to answer this request with, if it accepts one we produce: the highest
    /// q-value wins, ties go to our order of preference; `q=0` refuses, `*` stands for every
    /// coding not named (RFC 9110 12.5.3). None for HEAD: its answer has no body to encode,
    /// and its Content-Length must stay what a GET would get.
    pub fn choose(&self, method: &Method, headers: &HeaderMap) -> Option<Encoding> {
        if method == Method::HEAD {
            return None;
        }
        let mut best: Option<(u16, usize, Encoding)> = None;
        let mut star: Option<u16> = None;
        let mut named = Vec::new();
        let entries = headers
            .get_all(ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for entry in entries {
            let mut parts = entry.split(';');
            let token = parts.next().unwrap_or("").trim();
            // Parameter names are case-insensitive (RFC 9110 5.6.6): Q=0 refuses too.
            let q = parts
                .filter_map(|p| {
                    let p = p.trim();
                    p.get(..2)
                        .filter(|n| n.eq_ignore_ascii_case("q="))
                        .map(|_| &p[2..])
                })
                .next()
                .map_or(Some(1000), qvalue);
            let Some(q) = q else { continue };
            if token == "*" {
                star = Some(q);
                continue;
            }
            let Some(rank) = self
                .encodings
                .iter()
                .position(|e| e.token().eq_ignore_ascii_case(token))
            else {
                continue;
            };
            named.push(rank);
            consider(&mut best, (q, rank, self.encodings[rank]));
        }
        if let Some(q) = star {
            for (rank, e) in self.encodings.iter().enumerate() {
                if !named.contains(&rank) {
                    consider(&mut best, (q, rank, *e));
                }
            }
        }
        best.map(|(_, _, e)| e)
    }

    /// Whether a response may be compressed: see the Compression message's rules.
    pub fn compresses(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            )
            || headers.contains_key(CONTENT_ENCODING)
            || headers
                .get_all(CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        {
            return false;
        }
        let small = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len < self.min_bytes);
        if small {
            return false;
        }
        let Some(media) = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        // Events must reach the client as they are sent, not when a compressed block fills;
        // gRPC compresses its messages itself, and its clients refuse a Content-Encoding.
        if media == "text/event-stream" || media.starts_with("application/grpc") {
            return false;
        }
        if self.types.is_empty() {
            return DEFAULT_TYPES.contains(&media.as_str())
                || media.ends_with("+json")
                || media.ends_with("+xml");
        }
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(whole) => media.split('/').next() == Some(whole),
            None => *t == media,
        })
    }
}

/// Keeps the better of two candidates: higher q, then our earlier preference.
fn consider(best: &mut Option<(u16, usize, Encoding)>, candidate: (u16, usize, Encoding)) {
    if candidate.0 == 0 {
        return;
    }
    let better = best.is_none_or(|b| {
        (candidate.0, std::cmp::Reverse(candidate.1)) > (b.0, std::cmp::Reverse(b.1))
    });
    if better {
        *best = Some(candidate);
    }
}

/// A q-value in thousandths; None when malformed (the entry is ignored).
fn qvalue(text: &str) -> Option<u16> {
    let value: f32 = text.trim().parse().ok()?;
    (0.0..=1.0)
        .contains(&value)
        .then(|| (value * 1000.0).round() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(encodings: &[ContentEncoding]) -> CompressionRt {
        CompressionRt::build(&Compression {
            encodings: encodings.iter().map(|e| *e as i32).collect(),
            ..Compression::default()
        })
        .unwrap()
    }

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, value.parse().unwrap());
        h
    }

    #[test]
    fn accept_encoding_is_read_with_q_values_and_preference() {
        let all = rt(&[
            ContentEncoding::Zstd,
            ContentEncoding::Brotli,
            ContentEncoding::Gzip,
        ]);
        let get = Method::GET;
        assert_eq!(
            all.choose(&get, &accept("gzip, deflate, br")),
            Some(Encoding::Brotli)
        );
        assert_eq!(
            all.choose(&get, &accept("gzip;q=1, br;q=0.5")),
            Some(Encoding::Gzip)
        );
        assert_eq!(
            all.choose(&get, &accept("br;q=0, gzip;q=0.1")),
            Some(Encoding::Gzip)
        );
        assert_eq!(all.choose(&get, &accept("*")), Some(Encoding::Zstd));
        assert_eq!(
            all.choose(&get, &accept("zstd;q=0, *;q=0.5")),
            Some(Encoding::Brotli)
        );
        assert_eq!(all.choose(&get, &accept("identity")), None);
        assert_eq!(
            all.choose(&get, &accept("gzip;q=x")),
            None,
            "malformed q ignored"
        );
        assert_eq!(all.choose(&get, &HeaderMap::new()), None);
        assert_eq!(all.choose(&Method::HEAD, &accept("gzip")), None);
        assert_eq!(
            all.choose(&get, &accept("gzip;Q=0")),
            None,
            "parameter names ignore case"
        );
        assert_eq!(all.choose(&get, &accept("GZIP")), Some(Encoding::Gzip));
        assert_eq!(
            rt(&[]).choose(&get, &accept("br, gzip")),
            Some(Encoding::Gzip)
        );
    }

    #[test]
    fn only_listed_types_of_enough_length_without_an_encoding_are_compressed() {
        let c = rt(&[]);
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let ok = StatusCode::OK;
        assert!(c.compresses(
            ok,
            &with(&[("content-type", "application/json; charset=utf-8")])
        ));
        assert!(c.compresses(ok, &with(&[("content-type", "application/problem+json")])));
        assert!(!c.compresses(ok, &with(&[("content-type", "image/png")])));
        assert!(!c.compresses(ok, &with(&[])), "no type");
        assert!(!c.compresses(
            ok,
            &with(&[("content-type", "text/html"), ("content-length", "100")])
        ));
        assert!(!c.compresses(
            ok,
            &with(&[("content-type", "text/html"), ("content-encoding", "gzip")])
        ));
        assert!(!c.compresses(
            ok,
            &with(&[
                ("content-type", "text/html"),
                ("cache-control", "public, no-transform")
            ])
        ));
        assert!(!c.compresses(
            StatusCode::NOT_MODIFIED,
            &with(&[("content-type", "text/html")])
        ));
        let images = CompressionRt::build(&Compression {
            content_types: vec!["image/*".into()],
            ..Compression::default()
        })
        .unwrap();
        assert!(images.compresses(ok, &with(&[("content-type", "image/bmp")])));
        assert!(!images.compresses(ok, &with(&[("content-type", "text/html")])));
        let everything = CompressionRt::build(&Compression {
            content_types: vec!["application/*".into()],
            ..Compression::default()
        })
        .unwrap();
        assert!(!everything.compresses(ok, &with(&[("content-type", "application/grpc+proto")])));
    }
}
