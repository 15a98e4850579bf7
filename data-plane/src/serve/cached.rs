//! Serving a rule that has a ResponseCache: answer from the cache while an answer is fresh,
//! else forward and keep the backend's answer when it is cacheable. Every answer says what
//! the cache did in a `Cache-Status` field (RFC 9211): `rauta; hit`,
//! `rauta; fwd=uri-miss; stored`, `rauta; fwd=uri-miss`, `rauta; fwd=request` (not looked
//! up: the request carries credentials or asks to bypass caches).

use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::local_reply::{LocalReply, ProxyBody, local};
use crate::body::client::ClientBody;
use crate::model::filters::cache::{CacheRt, request_may_use, storable};
use crate::model::response_store::{CacheCounters, CacheKey, CachedResponse, Fresh, KeyRef};

/// The RFC 9211 field.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Its value on an answer from the cache (no `ttl`: the kernel path sends the same bytes for
/// every request of a second).
pub const HIT: &str = "rauta; hit";

/// An answer, and the session token to set with it.
pub(super) type Answer = (Response<ProxyBody>, Option<(HeaderName, HeaderValue)>);

/// Answers a request for a rule with a cache; `forward` sends a request to the rule's
/// backends (on a miss or a bypass). `https`, `host`: the key's scheme and host.
pub(super) async fn serve<F, Fut>(
    cache: &CacheRt,
    (https, host): (bool, &str),
    req: Request<ClientBody>,
    forward: F,
) -> Answer
where
    F: FnOnce(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Answer>,
{
    let store = &cache.store;
    if !request_may_use(req.method(), req.headers()) {
        CacheCounters::count(&store.counters.bypass);
        let answer = forward(req).await;
        return with_status(answer, "rauta; fwd=request");
    }
    let head = req.method() == Method::HEAD;
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let key = KeyRef {
        https,
        host,
        target,
    };
    let now = Instant::now();
    if let Some(hit) = store.get(key, now) {
        CacheCounters::count(&store.counters.hit);
        return (hit_response(&hit, now, head), None);
    }
    let key = CacheKey {
        https: key.https,
        host: key.host.into(),
        target: key.target.into(),
    };
    let (resp, token) = forward(req).await;
    let miss = |resp, counter: &AtomicU64| {
        CacheCounters::count(counter);
        with_status((resp, token.clone()), "rauta; fwd=uri-miss")
    };
    // A HEAD's answer has no body to keep; the proxy's own answers are not the backend's.
    if head || resp.extensions().get::<LocalReply>().is_some() {
        return miss(resp, &store.counters.miss);
    }
    let Some((ttl, age)) = storable(
        cache.config(),
        resp.status(),
        resp.headers(),
        SystemTime::now(),
    ) else {
        return miss(resp, &store.counters.miss);
    };
    let (parts, body) = resp.into_parts();
    let limit = usize::try_from(cache.config().max_body_bytes).unwrap_or(usize::MAX);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return (
                local(
                    StatusCode::BAD_GATEWAY,
                    Bytes::from_static(b"upstream body failed\n"),
                ),
                None,
            );
        }
    };
    if declared != Some(body.len()) {
        return (
            local(
                StatusCode::BAD_GATEWAY,
                Bytes::from_static(b"upstream body shorter than its Content-Length\n"),
            ),
            None,
        );
    }
    let mut headers = parts.headers.clone();
    headers.remove(AGE);
    headers.remove(CACHE_STATUS);
    store.insert(
        key,
        Fresh {
            status: parts.status,
            headers,
            body: body.clone(),
            ttl,
            age,
        },
        now,
    );
    CacheCounters::count(&store.counters.stored);
    let resp = Response::from_parts(parts, Either::Right(Full::new(body)));
    with_status((resp, token), "rauta; fwd=uri-miss; stored")
}

fn with_status(mut answer: Answer, status: &'static str) -> Answer {
    answer
        .0
        .headers_mut()
        .insert(CACHE_STATUS, HeaderValue::from_static(status));
    answer
}

/// A kept answer as served now: its fields, its Age, what the cache did, and the body
/// (none for HEAD; Content-Length stays the GET's).
pub fn hit_response(hit: &CachedResponse, now: Instant, head: bool) -> Response<ProxyBody> {
    let body = match head {
        true => Bytes::new(),
        false => hit.body.clone(),
    };
    let mut resp = Response::new(Either::Right(Full::new(body)));
    *resp.status_mut() = hit.status;
    let headers = resp.headers_mut();
    headers.clone_from(&hit.headers);
    headers.insert(AGE, HeaderValue::from(hit.age(now).as_secs()));
    headers.insert(CACHE_STATUS, HeaderValue::from_static(HIT));
    resp
}
