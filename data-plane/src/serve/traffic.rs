//! A TrafficPolicy's steps on the general path: the route's request limits, checked once the
//! route is known, and response compression.

use bytes::Bytes;
use http::header::{ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;

use super::local_reply::{ProxyBody, body_too_large, local};
use crate::body::compress::Encoding;
use crate::model::filters::compression::CompressionRt;
use crate::model::rule::RuleRt;

/// The answer to a request over the route's limits (431 for the head, 413 for a body whose
/// Content-Length says it is too large; a body that turns out too large as it streams gets
/// 413 from the body's own count).
pub fn over_request_limits<B>(rule: &RuleRt, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let limits = rule.filters.request_limits()?;
    if limits.head_too_large(req.method(), req.uri(), req.headers()) {
        return Some(local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Bytes::from_static(b"request header fields too large\n"),
        ));
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match (limits.max_body_bytes, declared) {
        (Some(max), Some(len)) if len > max => Some(body_too_large()),
        _ => None,
    }
}

/// The rule's compression, with the coding this request accepts if it accepts one: chosen
/// before the request is forwarded (and gone).
pub fn encoding_for<'r, B>(
    rule: &'r RuleRt,
    req: &Request<B>,
) -> Option<(&'r CompressionRt, Option<Encoding>)> {
    let c = rule.filters.compression()?;
    Some((c, c.choose(req.method(), req.headers())))
}

/// Compresses an upstream answer in the chosen coding when the policy allows it for this
/// response. Answers the proxy made itself, and cached ones, are sent as they are. An answer
/// that could have been compressed says `Vary: accept-encoding` either way, so a shared cache
/// does not hand one client's coding to another.
pub fn compress(
    chosen: Option<(&CompressionRt, Option<Encoding>)>,
    resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some((compression, encoding)) = chosen else {
        return resp;
    };
    if !matches!(resp.body(), Either::Left(_))
        || !compression.compresses(resp.status(), resp.headers())
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Either::Left(body) = body else {
        return Response::from_parts(parts, body);
    };
    let h = &mut parts.headers;
    let varies = h
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*");
    if !varies {
        h.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
    let Some(encoding) = encoding else {
        return Response::from_parts(parts, Either::Left(body));
    };
    h.remove(CONTENT_LENGTH);
    h.remove(ACCEPT_RANGES);
    h.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
    // The bytes differ from the uncompressed representation's: a strong validator no longer
    // holds (RFC 9110 8.8.1).
    if let Some(tag) = h.get(ETAG)
        && !tag.as_bytes().starts_with(b"W/")
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", tag.as_bytes()].concat())
    {
        h.insert(ETAG, weak);
    }
    let body = body.compressed(encoding, compression.level);
    Response::from_parts(parts, Either::Left(body))
}
