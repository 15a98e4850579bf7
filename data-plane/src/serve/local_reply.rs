//! Answers the proxy makes itself (no route, no upstream, a refused request), and their gRPC
//! form: a gRPC client gets a trailers-only answer with grpc-status, as Envoy sends.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::model::rate_limit::Limited;
use crate::upstream::ResponseBody;

/// A response body: the upstream's, streamed, or one the proxy made.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

/// Marks an answer the proxy made itself, with its text (gRPC callers get it as grpc-message).
#[derive(Debug, Clone)]
pub(crate) struct LocalReply(Bytes);

pub(crate) fn local(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.clone())));
    resp.extensions_mut().insert(LocalReply(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A rule's direct answer (a DirectResponse): its Content-Type replaces text/plain, its other
/// headers are added.
pub(crate) fn direct(
    status: StatusCode,
    body: &Bytes,
    headers: &[(HeaderName, HeaderValue)],
) -> Response<ProxyBody> {
    let mut resp = local(status, body.clone());
    for (name, value) in headers {
        match *name == CONTENT_TYPE {
            true => resp.headers_mut().insert(name, value.clone()),
            false => {
                resp.headers_mut().append(name, value.clone());
                None
            }
        };
    }
    resp
}

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status the proxy answered itself (gRPC's HTTP-to-gRPC table).
fn grpc_status_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "13",             // INTERNAL
        401 => "16",             // UNAUTHENTICATED
        403 => "7",              // PERMISSION_DENIED
        404 => "12",             // UNIMPLEMENTED
        429 | 502..=504 => "14", // UNAVAILABLE
        _ => "2",                // UNKNOWN
    }
}

/// A proxy-generated error as a gRPC client expects it: HTTP 200, no body, and the status in
/// grpc-status / grpc-message (a "trailers-only" response), as Envoy answers gRPC calls.
pub(crate) fn grpc_local_reply(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, _) = resp.into_parts();
    let message = parts
        .extensions
        .get::<LocalReply>()
        .map(|r| String::from_utf8_lossy(&r.0).trim().to_owned())
        .unwrap_or_default();
    parts.headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from_static(grpc_status_for(parts.status)),
    );
    if let Ok(v) = HeaderValue::from_str(&message) {
        parts
            .headers
            .insert(HeaderName::from_static("grpc-message"), v);
    }
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts.status = StatusCode::OK;
    Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
}

pub(crate) fn body_too_large() -> Response<ProxyBody> {
    local(
        StatusCode::PAYLOAD_TOO_LARGE,
        Bytes::from_static(b"request body too large\n"),
    )
}

/// A request over a rate limit: 429, with when to come back (Retry-After, whole seconds,
/// rounded up) and the limit it is over (RateLimit-Policy and RateLimit, as
/// draft-ietf-httpapi-ratelimit-headers writes them).
pub(crate) fn too_many_requests(refusal: &Refusal<'_>) -> Response<ProxyBody> {
    let mut resp = local(
        StatusCode::TOO_MANY_REQUESTS,
        Bytes::from_static(RATE_LIMITED),
    );
    resp.headers_mut().extend(rate_limit_fields(refusal));
    resp
}

/// The body of a 429.
pub(crate) const RATE_LIMITED: &[u8] = b"rate limited\n";

/// Which limit refused a request, and for how long.
pub(crate) struct Refusal<'a> {
    /// The limit's name.
    pub name: &'a str,
    /// Its RateLimit-Policy item.
    pub policy: String,
    pub retry_after: Duration,
}

impl<'a> From<&Limited<'a>> for Refusal<'a> {
    fn from(l: &Limited<'a>) -> Refusal<'a> {
        Refusal {
            name: &l.limiter.name,
            policy: l.limiter.policy_header(),
            retry_after: l.retry_after,
        }
    }
}

/// The fields of a 429 (the fast path writes them itself).
pub(crate) fn rate_limit_fields(refusal: &Refusal<'_>) -> Vec<(HeaderName, HeaderValue)> {
    let wait = refusal.retry_after;
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut fields = vec![(RETRY_AFTER, HeaderValue::from(seconds))];
    let policy = HeaderValue::from_str(&refusal.policy);
    let state = HeaderValue::from_str(&format!("\"{}\";r=0;t={seconds}", refusal.name));
    // Names are checked printable when the snapshot is built.
    if let (Ok(policy), Ok(state)) = (policy, state) {
        fields.push((HeaderName::from_static("ratelimit-policy"), policy));
        fields.push((HeaderName::from_static("ratelimit"), state));
    }
    fields
}

/// A request without a valid credential: 401, with a challenge naming the scheme (not the
/// policy: its name is nobody's business outside).
pub(crate) fn unauthorized(challenge: HeaderValue) -> Response<ProxyBody> {
    let mut resp = local(
        StatusCode::UNAUTHORIZED,
        Bytes::from_static(b"authentication required\n"),
    );
    resp.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    resp
}

/// Header naming the circuit-breaker limit that refused a request (as Envoy's
/// x-envoy-overloaded, with the reason).
pub(crate) const OVERFLOW_HEADER: &str = "x-rauta-overflow";

/// A request a cluster's circuit breaker refused: 503 naming the limit.
pub(crate) fn overflow(limit: crate::upstream::Overflow) -> Response<ProxyBody> {
    let mut resp = local(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(limit.body()),
    );
    resp.headers_mut().insert(
        http::HeaderName::from_static(OVERFLOW_HEADER),
        HeaderValue::from_static(limit.name()),
    );
    resp
}

/// A request a global limit could not count (Redis away) where the limit fails closed.
pub(crate) fn rate_limit_unavailable() -> Response<ProxyBody> {
    local(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(b"rate limit service unavailable\n"),
    )
}
