//! The general request path, for every request the fast paths do not take: refuse what must
//! be refused, route, apply the rule's action and filters, forward (`forward`). Reads the
//! routing state through one atomic load; takes no locks; logs only at debug.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, HeaderValue, LOCATION, ORIGIN};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use tracing::debug;

use super::authenticate::{check_access, credential_free};
use super::cached;
use super::context::{Connection, ListenerCtx};
use super::forward::{Client, Picked, Served, forward};
use super::global_limit::{self, Verdict};
use super::headers::{ALLOWED_METHODS, host_problem, normalized_target, request_host};
use super::local_reply::{
    LocalReply, ProxyBody, Refusal, body_too_large, direct, grpc_local_reply, is_grpc, local,
    rate_limit_unavailable, too_many_requests,
};
use super::request_log::{LogDetails, LoggedRequest};
use super::traffic;
use crate::body::client::ClientBody;
use crate::model::cluster::{ClusterRt, EndpointRt};
use crate::model::filters::CorsRt;
use crate::model::matchers::MatchRt;
use crate::model::redirect::RedirectRt;
use crate::model::request::{RequestHeaders, RequestView};
use crate::model::rule::{ActionRt, Pick, RuleRt, WeightedBackend};
use crate::observe::trace::{TRACEPARENT, TraceContext};
use crate::shared::Shared;

/// Handles one request. Never fails: every problem becomes an HTTP answer.
pub async fn handle(
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    conn: Arc<Connection>,
    req: Request<ClientBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let _open = conn.activity.request();
    let started = Instant::now();
    // The request line and what routing chose are kept for the access log's sample, and for
    // a span when the request's trace is sampled.
    let log_line = shared.access_log.as_ref().is_some_and(|log| log.sampled());
    let sampling = shared.tracer.as_ref().map_or_else(Default::default, |t| {
        t.decide(req.headers().get(&TRACEPARENT).map(|v| v.as_bytes()))
    });
    let logged = (log_line || sampling.sampled).then(|| LoggedRequest::of(&req));
    let mut details = logged.as_ref().map(|_| LogDetails {
        sample_root: sampling.root,
        ..LogDetails::default()
    });
    let grpc = is_grpc(req.headers());
    // Boxed: the request future is large, and an HTTP/2 stream keeps it in a box of its own
    // (or a task, with hyper's server); a small future moves cheaply where a large one was
    // copied several times per request.
    let mut resp = Box::pin(serve(&shared, &listener, &conn, req, started, &mut details)).await;
    if grpc && resp.status().as_u16() >= 400 && resp.extensions().get::<LocalReply>().is_some() {
        resp = grpc_local_reply(resp);
    }
    if let (Some(request), Some(details)) = (logged, details) {
        let entry = request.entry(
            (&listener, &conn),
            &details,
            resp.status().as_u16(),
            started,
        );
        if let Some(log) = shared.access_log.as_ref().filter(|_| log_line) {
            details.record(log, &entry);
        }
        if let (Some(tracer), Some(trace)) = (&shared.tracer, &details.trace) {
            tracer.record(&entry, trace, details.retries);
        }
    }
    Ok(resp)
}

/// A request refused before routing: conflicting Hosts, CONNECT, a declared body over the
/// limit, a target that does not normalize. Otherwise the request, its target normalized.
#[allow(clippy::result_large_err)]
fn admit(
    shared: &Shared,
    mut req: Request<ClientBody>,
) -> Result<Request<ClientBody>, Response<ProxyBody>> {
    if let Some(problem) = host_problem(&req) {
        return Err(local(StatusCode::BAD_REQUEST, Bytes::from_static(problem)));
    }
    // A target with an authority names the host: the Host field gives way to it (RFC 9112
    // 3.2.2), so that whatever reads Host (an authorization service, a backend) reads what
    // routing read.
    if let Some(authority) = req.uri().authority()
        && req
            .headers()
            .get(http::header::HOST)
            .map(HeaderValue::as_bytes)
            != Some(authority.as_str().as_bytes())
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
    if req.method() == Method::CONNECT {
        // No route tunnels: CONNECT would otherwise go upstream as a request for "/".
        let mut resp = local(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"CONNECT is not allowed\n"),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        return Err(resp);
    }
    if let Some(limit) = shared.limits.max_body_bytes
        && req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > limit)
    {
        return Err(body_too_large());
    }
    if let Some(normalized) = normalized_target(req.uri()) {
        let invalid = || {
            local(
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"invalid request target\n"),
            )
        };
        // Route and forward the same path: "/public/../admin" must not match "/public".
        let normalized = normalized.ok_or_else(invalid)?;
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(normalized);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| invalid())?;
    }
    Ok(req)
}

async fn serve(
    shared: &Shared,
    listener: &ListenerCtx,
    conn: &Connection,
    req: Request<ClientBody>,
    started: Instant,
    details: &mut Option<LogDetails>,
) -> Response<ProxyBody> {
    let req = match admit(shared, req) {
        Ok(req) => req,
        Err(refused) => return refused,
    };
    let state = shared.state.load_full();
    let host = request_host(&req).unwrap_or(Cow::Borrowed(""));
    if let (Some(sni), Some(names)) = (&conn.sni, state.listener_names(&listener.name))
        && names.listener_for(sni) != names.listener_for(&host)
    {
        // The TLS connection was set up for another listener than this Host's (RFC 9110 15.5.20).
        return local(
            StatusCode::MISDIRECTED_REQUEST,
            Bytes::from_static(b"misdirected request\n"),
        );
    }
    let view = RequestView {
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method().as_str(),
        headers: RequestHeaders::Map(req.headers()),
    };
    let routed = state
        .route_table(&listener.name)
        .and_then(|table| table.virtual_host(&host)?.route(&view));
    let Some((rule, matched)) = routed else {
        if let Some(c) = &state.no_route {
            c.record(404, started);
        }
        debug!(peer = %conn.peer, uri = %req.uri(), "no route");
        return local(StatusCode::NOT_FOUND, Bytes::from_static(b"no route\n"));
    };
    if let Some(log) = details {
        log.routed_to(rule, req.headers());
    }
    let cors = rule.filters.cors();
    if let Some(cors) = cors
        && CorsRt::is_preflight(req.method(), req.headers())
    {
        let mut resp = local(StatusCode::NO_CONTENT, Bytes::new());
        resp.headers_mut()
            .extend(cors.preflight_headers(req.headers()));
        rule.counters.record(resp.status().as_u16(), started);
        return resp;
    }
    let origin = cors.and_then(|_| req.headers().get(ORIGIN).cloned());
    // Who the request is from, if the rule asks (SecurityPolicy): after CORS preflights (a
    // browser sends no credentials with them), before rate limits.
    let mut req = req;
    let identity = match check_access(
        shared,
        rule,
        &mut req,
        (conn.peer, listener.scheme()),
        details,
    )
    .await
    {
        Ok(identity) => identity,
        Err(mut refused) => {
            rule.counters.record(refused.status().as_u16(), started);
            if let Some(cors) = cors {
                cors.decorate(origin.as_ref(), refused.headers_mut());
            }
            return refused;
        }
    };
    if let Some(refused) = over_limits(shared, rule, conn, &req).await {
        rule.counters.record(refused.status().as_u16(), started);
        return refused;
    }
    // Chosen now: the request is gone once forwarded.
    let compression = traffic::encoding_for(rule, &req);
    // Looked up again: authentication may have changed the request's fields.
    let host = request_host(&req).unwrap_or(Cow::Borrowed(""));
    let routed = Routed {
        rule,
        matched,
        listener,
        conn,
        shared,
    };
    let (mut resp, session_token) = match &rule.action {
        ActionRt::Direct {
            status,
            body,
            headers,
        } => (direct(*status, body, headers), None),
        ActionRt::Redirect(redirect) => (redirected(redirect, &routed, &host, req.uri()), None),
        // An authenticated request (or one an authorization service let through, perhaps
        // with headers of its own) is answered for its client: like one with Authorization,
        // a shared cache neither answers it nor keeps its answer (RFC 9111 3.5).
        action @ ActionRt::Forward { backends, .. } => {
            match rule
                .filters
                .cache()
                .filter(|_| !identity.authenticated && rule.filters.ext_auth().is_none())
            {
                Some(cache) => {
                    // The key outlives the request, which is forwarded on a miss.
                    let host = host.into_owned();
                    let routed = &routed;
                    cached::serve(cache, (listener.tls, &host), req, move |req| {
                        routed.forward(action, backends, req, details)
                    })
                    .await
                }
                None => routed.forward(action, backends, req, details).await,
            }
        }
    };
    if let Some(ops) = rule.filters.response_headers() {
        ops.apply(resp.headers_mut());
    }
    let mut resp = traffic::compress(compression, resp);
    if let Some(cors) = cors {
        cors.decorate(origin.as_ref(), resp.headers_mut());
    }
    with_session_token(&mut resp, session_token);
    rule.counters.record(resp.status().as_u16(), started);
    resp
}

/// Last, so that the rule's header changes (say, removing upstream Set-Cookies) cannot remove
/// the session's own token.
fn with_session_token(
    resp: &mut Response<ProxyBody>,
    token: Option<(http::HeaderName, HeaderValue)>,
) {
    if let Some((name, value)) = token {
        resp.headers_mut().append(name, value);
    }
}

/// The answer to a request over the route's request limits or one of its rate limits, local
/// or global. Limits counted per client read the headers authentication set (client id,
/// claims), not ones the client sent.
async fn over_limits(
    shared: &Shared,
    rule: &RuleRt,
    conn: &Connection,
    req: &Request<ClientBody>,
) -> Option<Response<ProxyBody>> {
    // The route's size limits first: a request refused for its size spends no rate.
    if let Some(refused) = traffic::over_request_limits(rule, req) {
        return Some(refused);
    }
    let headers = RequestHeaders::Map(req.headers());
    if let Some(limits) = rule.filters.rate_limit()
        && let Err(limited) = limits.check(conn.peer.ip(), headers)
    {
        return Some(too_many_requests(&Refusal::from(&limited)));
    }
    let global = rule.filters.global_rate_limit()?;
    match global_limit::check(global, shared.redis.as_ref(), conn.peer.ip(), headers).await {
        Verdict::Allowed => None,
        Verdict::Limited(limiter, retry_after) => Some(too_many_requests(&Refusal {
            name: &limiter.name,
            policy: limiter.policy_header(),
            retry_after,
        })),
        Verdict::Unavailable => Some(rate_limit_unavailable()),
    }
}

/// The redirect a rule answers with.
fn redirected(
    redirect: &RedirectRt,
    routed: &Routed<'_>,
    host: &str,
    uri: &Uri,
) -> Response<ProxyBody> {
    // A Location may point elsewhere: never with a credential in it.
    let clean = credential_free(routed.rule, uri);
    let uri = clean.as_ref().unwrap_or(uri);
    let location = redirect.location(
        routed.listener.scheme(),
        host,
        uri.path(),
        uri.query(),
        routed.listener.port,
        routed.matched.prefix(),
    );
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut r = local(redirect.status, Bytes::new());
            r.headers_mut().insert(LOCATION, v);
            r
        }
        Err(_) => local(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"cannot redirect this request\n"),
        ),
    }
}

/// A routed request and where it came from.
struct Routed<'a> {
    rule: &'a RuleRt,
    matched: &'a MatchRt,
    listener: &'a ListenerCtx,
    conn: &'a Connection,
    shared: &'a Shared,
}

impl Routed<'_> {
    /// Forwards to the session's endpoint, or one picked by weight and balancer; returns the
    /// response and the session token to set, if any.
    async fn forward(
        &self,
        action: &ActionRt,
        backends: &[WeightedBackend],
        mut req: Request<ClientBody>,
        details: &mut Option<LogDetails>,
    ) -> (Response<ProxyBody>, Option<(http::HeaderName, HeaderValue)>) {
        let session = self.rule.filters.session();
        let brought = session.and_then(|s| s.of_request(RequestHeaders::Map(req.headers())));
        let target = match brought.and_then(|s| sticky_target(backends, s.endpoint)) {
            Some(sticky) => Ok(sticky),
            None => pick_target(action, self.conn.peer, req.headers()),
        };
        let (backend, cluster, endpoint) = match target {
            Ok(target) => target,
            Err((status, text)) => return (local(status, Bytes::from_static(text)), None),
        };
        // Decided when the request arrived (a sampled new trace always has details).
        let sample_root = details.as_ref().is_some_and(|d| d.sample_root);
        let trace = TraceContext::propagate(req.headers_mut(), sample_root);
        if let Some(log) = details {
            log.cluster = Some(Arc::clone(&cluster.name));
            log.upstream = Some(endpoint.addr);
            log.trace = Some(trace);
        }
        let picked = Picked {
            rule: self.rule,
            matched: self.matched,
            backend,
        };
        let client = Client {
            peer: self.conn.peer,
            scheme: self.listener.scheme(),
            shared: self.shared,
        };
        let mut served_by = Served {
            endpoint: endpoint.addr,
            retries: 0,
        };
        let mut resp = forward(cluster, endpoint, picked, req, client, &mut served_by).await;
        if let Some(log) = details {
            log.retries = served_by.retries;
        }
        if let Some(ops) = backend.filters.response_headers() {
            ops.apply(resp.headers_mut());
        }
        // The endpoint that answered (a retry may have gone elsewhere).
        let token = session
            .filter(|_| resp.extensions().get::<LocalReply>().is_none())
            .and_then(|s| s.response_header(served_by.endpoint, brought, self.listener.tls));
        (resp, token)
    }
}

/// The backend, cluster and endpoint of a forward action that serve `addr` (a session's
/// endpoint), when it is still there and usable (neither ejected nor failing its probes).
fn sticky_target(
    backends: &[WeightedBackend],
    addr: SocketAddr,
) -> Option<(&WeightedBackend, &ClusterRt, &EndpointRt)> {
    backends.iter().find_map(|backend| {
        let cluster = backend.cluster.as_deref()?;
        let endpoint = cluster
            .endpoints()
            .iter()
            .find(|e| e.addr == addr && cluster.usable(e))?;
        Some((backend, cluster, endpoint))
    })
}

/// A backend by weight and an endpoint by the cluster's balancer, or the status and text of
/// the answer when there is none.
fn pick_target<'a>(
    action: &'a ActionRt,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(&'a WeightedBackend, &'a ClusterRt, &'a EndpointRt), (StatusCode, &'static [u8])> {
    let Pick::Backend(backend) = action.pick(rand::random()) else {
        return Err((StatusCode::INTERNAL_SERVER_ERROR, b"invalid backend\n"));
    };
    let Some(cluster) = backend.cluster.as_deref() else {
        return Err((StatusCode::SERVICE_UNAVAILABLE, b"unknown cluster\n"));
    };
    match cluster.pick(peer.ip(), RequestHeaders::Map(headers)) {
        Some(endpoint) => Ok((backend, cluster, endpoint)),
        None => Err((StatusCode::SERVICE_UNAVAILABLE, b"no healthy upstream\n")),
    }
}
