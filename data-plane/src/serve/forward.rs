//! Forwarding a routed request on the general path: the upstream request (rewritten target,
//! connection fields gone, the gateway's own fields set, the rule's and backend's header
//! changes), the body held for mirrors and retries when they need it, the attempts (retries
//! under the cluster's budget), and the response relayed (or an upgrade spliced).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use tracing::debug;

use super::attempt::Attempt;
use super::headers::{X_FORWARDED_PROTO, append_forwarded_for, join_cookies, strip_hop_by_hop};
use super::local_reply::{ProxyBody, body_too_large, local, overflow};
use super::{mirror, upgrade};
use crate::body::client::{BodyState, ClientBody, RequestBody};
use crate::model::cluster::{ClusterRt, EndpointRt};
use crate::model::matchers::MatchRt;
use crate::model::rule::{RuleRt, WeightedBackend};
use crate::shared::Shared;
use crate::upstream::{self, Protocol, ResponseBody, UpstreamBody, UpstreamError};

/// Who sent the request, and what they may send.
#[derive(Clone, Copy)]
pub(crate) struct Client<'a> {
    pub peer: SocketAddr,
    pub scheme: &'static str,
    pub shared: &'a Shared,
}

/// What routing chose for a request.
#[derive(Clone, Copy)]
pub(crate) struct Picked<'a> {
    pub rule: &'a RuleRt,
    pub matched: &'a MatchRt,
    pub backend: &'a WeightedBackend,
}

/// The request as it goes upstream, before the attempts.
struct Outgoing {
    parts: http::request::Parts,
    path: PathAndQuery,
    body: UpstreamBody,
    /// The body held in memory, to send again (retries) or to mirrors.
    replay: Option<Bytes>,
    body_state: std::sync::Arc<BodyState>,
}

pub(crate) async fn forward(
    cluster: &ClusterRt,
    endpoint: &EndpointRt,
    picked: Picked<'_>,
    mut req: Request<ClientBody>,
    client: Client<'_>,
    served_by: &mut Served,
) -> Response<ProxyBody> {
    let rule = picked.rule;
    let path = match upstream_target(rule, picked.matched, &req) {
        Ok(path) => path,
        Err(refused) => return refused,
    };
    // An upgrade (WebSocket) needs an HTTP/1.1 upstream; over h2c it goes as a plain request.
    let upgrade = upgrade::requested(req.version(), req.headers())
        .filter(|_| cluster.protocol == Protocol::Http1);
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    set_headers(&mut req, cluster, rule, client);
    if let Some(protocol) = &upgrade {
        upgrade::restore_headers(req.headers_mut(), protocol);
    }
    let (parts, incoming) = req.into_parts();
    let route_max = rule.filters.request_limits().and_then(|l| l.max_body_bytes);
    let incoming = RequestBody::new(incoming, &client.shared.limits).limit_to(route_max);
    let body_state = incoming.state();
    // A body held in memory can be sent more than once: to mirrors, and again on retries.
    let wants_copy =
        upgrade.is_none() && (rule.filters.has_mirrors() || rule.filters.retry().is_some());
    let (body, replay) = if wants_copy {
        match upstream::buffer_body(incoming).await {
            Ok(b) => b,
            Err(_) => return body_failed(&body_state),
        }
    } else {
        (Either::Left(incoming), None)
    };
    if let Some(bytes) = &replay
        && rule.filters.has_mirrors()
    {
        mirror::send_copies(
            rule.filters.mirrors(),
            &parts,
            &path,
            bytes,
            client.peer.ip(),
        );
    }
    let outgoing = Outgoing {
        parts,
        path,
        body,
        replay,
        body_state,
    };
    let upgrading = upgrade.is_some();
    let (result, body_state) = match attempts(
        cluster,
        endpoint,
        picked,
        outgoing,
        (upgrading, client.shared.http1_fast_path),
        served_by,
    )
    .await
    {
        Ok(answered) => answered,
        Err(timed_out) => return timed_out,
    };
    match result {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() {
                // An upgrade nobody asked for cannot be relayed.
                return local(
                    StatusCode::BAD_GATEWAY,
                    Bytes::from_static(b"unexpected protocol switch from upstream\n"),
                );
            }
            if let (Some(downstream), Some(protocol)) = (downstream_upgrade, &upgrade)
                && resp.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                // The relay counts as an open connection: a drain waits for it.
                upgrade::splice(downstream, &mut resp, client.shared.drain_watch());
                let (mut parts, _) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                upgrade::restore_headers(&mut parts.headers, protocol);
                parts.version = Version::default();
                return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.version = Version::default();
            Response::from_parts(parts, Either::Left(body))
        }
        Err(_) if body_state.is_too_large() || body_state.timed_out() => body_failed(&body_state),
        // A body the client broke off or framed wrongly (a malformed chunk): the client's
        // error, not the upstream's.
        Err(_) if body_state.client_failed() => body_failed(&body_state),
        Err(err) if let Some(limit) = err.overflow() => overflow(limit),
        Err(err) => {
            debug!(cluster = %cluster.name, %err, "upstream request failed");
            local(
                StatusCode::BAD_GATEWAY,
                Bytes::from_static(b"upstream connect error\n"),
            )
        }
    }
}

/// The answer to a request whose body could not be read: too large, too slow, or broken off.
fn body_failed(body_state: &BodyState) -> Response<ProxyBody> {
    if body_state.is_too_large() {
        body_too_large()
    } else if body_state.timed_out() {
        local(
            StatusCode::REQUEST_TIMEOUT,
            Bytes::from_static(b"request body timeout\n"),
        )
    } else {
        local(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"cannot read the request body\n"),
        )
    }
}

/// The path and query sent upstream: the request's, or the rule's URL rewrite of it.
#[allow(clippy::result_large_err)]
fn upstream_target(
    rule: &RuleRt,
    matched: &MatchRt,
    req: &Request<ClientBody>,
) -> Result<PathAndQuery, Response<ProxyBody>> {
    let Some(rewrite) = rule.filters.rewrite().and_then(|r| r.path.as_ref()) else {
        return Ok(req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")));
    };
    let new_path = rewrite.apply(req.uri().path(), matched.prefix());
    let target = match req.uri().query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    PathAndQuery::try_from(target).map_err(|_| {
        local(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"invalid rewritten path\n"),
        )
    })
}

/// The upstream request's fields: the client's less the connection-scoped ones, the Host it
/// was routed by, the rule's changes, then the gateway's own.
fn set_headers(req: &mut Request<ClientBody>, cluster: &ClusterRt, rule: &RuleRt, client: Client) {
    // First, so that a client's Connection header cannot remove headers the gateway sets below.
    strip_hop_by_hop(req.headers_mut());
    if let Some(value) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        // The authority the request was routed by is the one the upstream must see: HTTP/2
        // clients send :authority instead of Host, and for an absolute-form HTTP/1.1 target the
        // URI's authority overrides Host (RFC 9112 section 3.2.2).
        req.headers_mut().insert(HOST, value);
    }
    if cluster.protocol == Protocol::Http1 {
        join_cookies(req.headers_mut());
    }
    if let Some(ops) = rule.filters.request_headers() {
        ops.apply(req.headers_mut());
    }
    if let Some(host) = rule.filters.rewrite().and_then(|r| r.host.clone()) {
        req.headers_mut().insert(HOST, host);
    }
    let headers = req.headers_mut();
    append_forwarded_for(headers, client.peer);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme));
}

/// Which endpoint answered (the last one tried), after how many retries.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub endpoint: SocketAddr,
    pub retries: u32,
}

type Answered = (
    Result<Response<ResponseBody>, UpstreamError>,
    std::sync::Arc<BodyState>,
);

/// Sends the request, and again on another endpoint while the rule's retry policy and the
/// cluster's retry budget allow. `Err`: the answer is the proxy's own (a timeout).
#[allow(clippy::result_large_err)]
async fn attempts(
    cluster: &ClusterRt,
    first: &EndpointRt,
    Picked { rule, backend, .. }: Picked<'_>,
    mut outgoing: Outgoing,
    (upgrade, raw): (bool, bool),
    served_by: &mut Served,
) -> Result<Answered, Response<ProxyBody>> {
    let retry = rule.filters.retry();
    // timeouts.request bounds the whole exchange, retries and backoff included; the cluster's
    // and the rule's backendRequest timeouts bound each attempt.
    let deadline = rule.request_timeout.map(|t| Instant::now() + t);
    let attempt_limit = [cluster.request_timeout, rule.backend_timeout]
        .into_iter()
        .flatten()
        .min();
    let retries = match (retry, &outgoing.replay) {
        (Some(retry), Some(_)) => retry.attempts,
        _ => 0,
    };
    let timed_out = || {
        local(
            StatusCode::GATEWAY_TIMEOUT,
            Bytes::from_static(b"upstream request timeout\n"),
        )
    };
    // Only requests that may retry pay into the retry budget.
    if retries > 0 {
        cluster.retry_budget.deposit();
    }
    let mut endpoint = first;
    let mut attempt = 0;
    // Held from a retry's start until the exchange ends: the retries in flight.
    let mut retry_slot: Option<crate::model::circuit_breakers::InFlightSlot>;
    loop {
        let body = match &outgoing.replay {
            Some(bytes) if attempt > 0 => Either::Right(Full::new(bytes.clone())),
            _ => std::mem::replace(&mut outgoing.body, Either::Right(Full::new(Bytes::new()))),
        };
        let mut req = Request::new(body);
        *req.method_mut() = outgoing.parts.method.clone();
        *req.uri_mut() = Uri::from(outgoing.path.clone());
        // The last attempt (usually the only one) takes the headers; earlier ones copy them.
        *req.headers_mut() = if attempt >= retries {
            std::mem::take(&mut outgoing.parts.headers)
        } else {
            outgoing.parts.headers.clone()
        };
        // backendRef filters apply to this backend only, not to mirrored copies.
        if let Some(ops) = backend.filters.request_headers() {
            ops.apply(req.headers_mut());
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = [attempt_limit, remaining].into_iter().flatten().min();
        let guard = Attempt::start(cluster, endpoint).map_err(overflow)?;
        let outcome = guard
            .within(limit, endpoint.pool.send(req, upgrade, raw))
            .await;
        let endpoint_failed = match &outcome {
            Ok(Ok(resp)) => resp.status().is_server_error(),
            // The client's fault (body too large, client gone), not the endpoint's.
            Ok(Err(_)) if outgoing.body_state.client_failed() => false,
            Ok(Err(_)) | Err(_) => true,
        };
        match &outcome {
            // A circuit breaker's refusal: the endpoint was not asked.
            Ok(Err(e)) if e.overflow().is_some() => guard.abandon(),
            _ => guard.finish(endpoint_failed),
        }
        if outcome.is_err() && deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out());
        }
        let failed = match (&outcome, retry) {
            (Err(_), _) | (Ok(Err(_)), _) => true,
            (Ok(Ok(r)), Some(retry)) => retry.codes.contains(&r.status().as_u16()),
            (Ok(Ok(_)), None) => false,
        };
        let retrying = failed && attempt < retries && {
            let granted = cluster.retry_budget.try_retry();
            if !granted {
                cluster.stats.retry_refused();
            }
            granted && {
                retry_slot = cluster.breakers.retry().ok();
                retry_slot.is_some()
            }
        };
        if !retrying {
            return match outcome {
                Ok(result) => Ok((result, outgoing.body_state)),
                Err(_) => Err(timed_out()),
            };
        }
        if let Ok(Err(err)) = &outcome {
            debug!(cluster = %cluster.name, upstream = %endpoint.addr, %err, attempt, "upstream attempt failed; retrying");
        }
        cluster.stats.retried();
        attempt += 1;
        endpoint = cluster.nth_after(first, attempt as usize);
        served_by.endpoint = endpoint.addr;
        served_by.retries += 1;
        if let Some(backoff) = retry.map(|r| r.backoff) {
            tokio::time::sleep(backoff).await;
        }
    }
}
