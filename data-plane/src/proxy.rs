//! The request path: route, pick a backend and an endpoint, forward. Reads the routing state
//! through one atomic load; takes no locks; logs only at debug.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, HeaderValue, LOCATION, ORIGIN,
    TE, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use tracing::debug;

use crate::access_log;
use crate::cluster::{ClusterRt, EndpointRt};
use crate::cors::CorsRt;
use crate::limits::{Activity, ClientBody, RequestBody};
use crate::mirror;
use crate::routing::{
    ActionRt, MatchRt, Pick, RequestHeaders, RequestView, RuleRt, WeightedBackend,
};
use crate::shared::Shared;
use crate::trace::TraceContext;
use crate::upgrade;
use crate::upstream::{self, Protocol, ResponseBody};

pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static TRAILER: HeaderName = HeaderName::from_static("trailer");

/// Marks an answer the proxy made itself, with its text (gRPC callers get it as grpc-message).
#[derive(Debug, Clone)]
struct LocalReply(Bytes);

pub(crate) fn local(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.clone())));
    resp.extensions_mut().insert(LocalReply(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// The request's host, lower-cased, without port.
fn request_host(req: &Request<ClientBody>) -> Option<Cow<'_, str>> {
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
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// Why a request's Host fields make it one to refuse (RFC 9112 section 3.2, RFC 9113
/// section 8.3.1): routed by one Host while another goes upstream, a request could reach a
/// backend under a name no route allowed.
fn host_problem(req: &Request<ClientBody>) -> Option<&'static [u8]> {
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

/// One client connection.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Requests and bytes on the connection, for the idle timeout.
    pub activity: Arc<Activity>,
    /// The TLS server name the client sent (lower case), on HTTPS listeners.
    pub sni: Option<Arc<str>>,
}

/// The Gateway listener a connection arrived on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: Arc<str>,
    /// The Gateway's port for this listener (not the local port, which may be offset).
    pub port: u16,
    /// Whether connections arrive over TLS.
    pub tls: bool,
    /// Whether connections are relayed untouched (TLS passthrough) instead of served as HTTP.
    pub passthrough: bool,
}

impl ListenerCtx {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// What the access log and the route's metrics learn while a request is served.
#[derive(Default)]
struct Served {
    /// Filled only when the request is logged.
    log: Option<LogDetails>,
}

#[derive(Default)]
struct LogDetails {
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    trace: Option<TraceContext>,
}

/// The request line of a logged request, taken before the request is forwarded.
struct LoggedRequest {
    method: http::Method,
    authority: String,
    path: String,
    protocol: &'static str,
    user_agent: Option<String>,
    start_time: String,
}

impl LoggedRequest {
    fn of(req: &Request<ClientBody>) -> LoggedRequest {
        LoggedRequest {
            method: req.method().clone(),
            authority: request_host(req).unwrap_or_default().into_owned(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: req
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            start_time: jiff::Timestamp::now().to_string(),
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
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
fn grpc_local_reply(resp: Response<ProxyBody>) -> Response<ProxyBody> {
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

/// Handles one request. Never fails: every problem becomes an HTTP answer.
pub async fn handle(
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    conn: Arc<Connection>,
    req: Request<ClientBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let _open = conn.activity.request();
    let started = Instant::now();
    let logged = shared
        .access_log
        .as_ref()
        .filter(|log| log.sampled())
        .map(|_| LoggedRequest::of(&req));
    let mut served = Served {
        log: logged.as_ref().map(|_| LogDetails::default()),
    };
    let grpc = is_grpc(req.headers());
    // Boxed: the request future is large, and an HTTP/2 stream keeps it in a box of its own
    // (or a task, with hyper's server); a small future moves cheaply where a large one was
    // copied several times per request.
    let mut resp = Box::pin(serve(&shared, &listener, &conn, req, started, &mut served)).await;
    if grpc && resp.status().as_u16() >= 400 && resp.extensions().get::<LocalReply>().is_some() {
        resp = grpc_local_reply(resp);
    }
    if let (Some(log), Some(request), Some(details)) = (&shared.access_log, logged, served.log) {
        log.record(&access_log::Entry {
            start_time: request.start_time,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            listener: &listener.name,
            client: conn.peer,
            method: request.method.as_str(),
            authority: &request.authority,
            path: &request.path,
            protocol: request.protocol,
            status: resp.status().as_u16(),
            route: details.route.as_deref(),
            cluster: details.cluster.as_deref(),
            upstream: details.upstream,
            trace_id: details.trace.map(|t| t.trace_id_hex()),
            user_agent: request.user_agent.as_deref(),
        });
    }
    Ok(resp)
}

async fn serve(
    shared: &Shared,
    listener: &ListenerCtx,
    conn: &Connection,
    req: Request<ClientBody>,
    started: Instant,
    served: &mut Served,
) -> Response<ProxyBody> {
    let peer = conn.peer;
    let mut req = req;
    if let Some(problem) = host_problem(&req) {
        return local(StatusCode::BAD_REQUEST, Bytes::from_static(problem));
    }
    if req.method() == Method::CONNECT {
        // No route tunnels: CONNECT would otherwise go upstream as a request for "/".
        let mut resp = local(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"CONNECT is not allowed\n"),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        return resp;
    }
    if let Some(limit) = shared.limits.max_body_bytes
        && req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > limit)
    {
        return body_too_large();
    }
    if let Some(normalized) = normalized_target(req.uri()) {
        let Some(normalized) = normalized else {
            return local(
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"invalid request target\n"),
            );
        };
        // Route and forward the same path: "/public/../admin" must not match "/public".
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(normalized);
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return local(
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"invalid request target\n"),
                );
            }
        }
    }
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
        debug!(%peer, uri = %req.uri(), "no route");
        return local(StatusCode::NOT_FOUND, Bytes::from_static(b"no route\n"));
    };
    if let Some(log) = &mut served.log {
        log.route = Some(Arc::clone(&rule.name));
    }
    if let Some(cors) = &rule.cors
        && CorsRt::is_preflight(req.method(), req.headers())
    {
        let mut resp = local(StatusCode::NO_CONTENT, Bytes::new());
        resp.headers_mut()
            .extend(cors.preflight_headers(req.headers()));
        rule.counters.record(resp.status().as_u16(), started);
        return resp;
    }
    let origin = rule
        .cors
        .as_ref()
        .and_then(|_| req.headers().get(ORIGIN).cloned());
    let mut session_token = None;
    let mut resp = match &rule.action {
        ActionRt::Direct { status, body } => local(*status, body.clone()),
        ActionRt::Redirect(redirect) => {
            let location = redirect.location(
                listener.scheme(),
                &host,
                req.uri().path(),
                req.uri().query(),
                listener.port,
                matched.prefix(),
            );
            let mut r = local(redirect.status, Bytes::new());
            match HeaderValue::from_str(&location) {
                Ok(v) => {
                    r.headers_mut().insert(LOCATION, v);
                }
                Err(_) => {
                    r = local(
                        StatusCode::BAD_REQUEST,
                        Bytes::from_static(b"cannot redirect this request\n"),
                    )
                }
            }
            r
        }
        action @ ActionRt::Forward { backends, .. } => {
            let brought = rule
                .session
                .as_ref()
                .and_then(|s| s.of_request(RequestHeaders::Map(req.headers())));
            let target = match brought.and_then(|s| sticky_target(backends, s.endpoint)) {
                Some(sticky) => Ok(sticky),
                None => pick_target(action, peer, req.headers()),
            };
            match target {
                Err((status, text)) => local(status, Bytes::from_static(text)),
                Ok((backend, cluster, endpoint)) => {
                    let mut req = req;
                    let trace = TraceContext::propagate(req.headers_mut());
                    if let Some(log) = &mut served.log {
                        log.cluster = Some(Arc::clone(&cluster.name));
                        log.upstream = Some(endpoint.addr);
                        log.trace = Some(trace);
                    }
                    let picked = Picked {
                        rule,
                        matched,
                        backend,
                    };
                    let client = Client {
                        peer,
                        scheme: listener.scheme(),
                        shared,
                    };
                    let mut served_by = endpoint.addr;
                    let mut r =
                        forward(cluster, endpoint, picked, req, client, &mut served_by).await;
                    if let Some(ops) = &backend.response_headers {
                        ops.apply(r.headers_mut());
                    }
                    // The endpoint that answered (a retry may have gone elsewhere).
                    if let Some(session) = &rule.session
                        && r.extensions().get::<LocalReply>().is_none()
                    {
                        session_token = session.response_header(served_by, brought, listener.tls);
                    }
                    r
                }
            }
        }
    };
    if let Some(ops) = &rule.response_headers {
        ops.apply(resp.headers_mut());
    }
    if let Some(cors) = &rule.cors {
        cors.decorate(origin.as_ref(), resp.headers_mut());
    }
    // Last, so that the rule's header changes (say, removing upstream Set-Cookies) cannot
    // remove the session's own token.
    if let Some((name, value)) = session_token {
        resp.headers_mut().append(name, value);
    }
    rule.counters.record(resp.status().as_u16(), started);
    resp
}

/// The backend, cluster and endpoint of a forward action that serve `addr` (a session's
/// endpoint), when it is still there and not ejected.
fn sticky_target(
    backends: &[WeightedBackend],
    addr: SocketAddr,
) -> Option<(&WeightedBackend, &ClusterRt, &EndpointRt)> {
    backends.iter().find_map(|backend| {
        let cluster = backend.cluster.as_deref()?;
        let endpoint = cluster
            .endpoints()
            .iter()
            .find(|e| e.addr == addr && !e.pool.health().is_ejected())?;
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

fn body_too_large() -> Response<ProxyBody> {
    local(
        StatusCode::PAYLOAD_TOO_LARGE,
        Bytes::from_static(b"request body too large\n"),
    )
}

/// Who sent the request, and what they may send.
#[derive(Clone, Copy)]
struct Client<'a> {
    peer: SocketAddr,
    scheme: &'static str,
    shared: &'a Shared,
}

/// What routing chose for a request.
#[derive(Clone, Copy)]
struct Picked<'a> {
    rule: &'a RuleRt,
    matched: &'a MatchRt,
    backend: &'a WeightedBackend,
}

async fn forward(
    cluster: &ClusterRt,
    endpoint: &EndpointRt,
    Picked {
        rule,
        matched,
        backend,
    }: Picked<'_>,
    mut req: Request<ClientBody>,
    Client {
        peer,
        scheme,
        shared,
    }: Client<'_>,
    served_by: &mut SocketAddr,
) -> Response<ProxyBody> {
    let path = match rule.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
        Some(rewrite) => {
            let new_path = rewrite.apply(req.uri().path(), matched.prefix());
            let target = match req.uri().query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            match PathAndQuery::try_from(target) {
                Ok(p) => p,
                Err(_) => {
                    return local(
                        StatusCode::BAD_REQUEST,
                        Bytes::from_static(b"invalid rewritten path\n"),
                    );
                }
            }
        }
        None => req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    // An upgrade (WebSocket) needs an HTTP/1.1 upstream; over h2c it goes as a plain request.
    let upgrade = upgrade::requested(req.version(), req.headers())
        .filter(|_| cluster.protocol == Protocol::Http1);
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
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
    if let Some(ops) = &rule.request_headers {
        ops.apply(req.headers_mut());
    }
    if let Some(host) = rule.rewrite.as_ref().and_then(|r| r.host.clone()) {
        req.headers_mut().insert(HOST, host);
    }
    let headers = req.headers_mut();
    append_forwarded_for(headers, peer);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Some(protocol) = &upgrade {
        upgrade::restore_headers(headers, protocol);
    }
    let (mut parts, incoming) = req.into_parts();
    let incoming = RequestBody::new(incoming, &shared.limits);
    let body_state = incoming.state();
    // A body held in memory can be sent more than once: to mirrors, and again on retries.
    let wants_copy = upgrade.is_none() && (!rule.mirrors.is_empty() || rule.retry.is_some());
    let (mut body, replay) = if wants_copy {
        match upstream::buffer_body(incoming).await {
            Ok(b) => b,
            Err(_) if body_state.is_too_large() => return body_too_large(),
            Err(_) if body_state.timed_out() => {
                return local(
                    StatusCode::REQUEST_TIMEOUT,
                    Bytes::from_static(b"request body timeout\n"),
                );
            }
            Err(_) => {
                return local(
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"cannot read the request body\n"),
                );
            }
        }
    } else {
        (Either::Left(incoming), None)
    };
    if let Some(bytes) = &replay
        && !rule.mirrors.is_empty()
    {
        mirror::send_copies(&rule.mirrors, &parts, &path, bytes, peer.ip());
    }
    // timeouts.request bounds the whole exchange, retries and backoff included; the cluster's
    // and the rule's backendRequest timeouts bound each attempt.
    let deadline = rule.request_timeout.map(|t| Instant::now() + t);
    let attempt_limit = [cluster.request_timeout, rule.backend_timeout]
        .into_iter()
        .flatten()
        .min();
    let retries = match (&rule.retry, &replay) {
        (Some(retry), Some(_)) => retry.attempts,
        _ => 0,
    };
    let first = endpoint;
    let mut endpoint = endpoint;
    let mut attempt = 0;
    // Only requests that may retry pay into the retry budget.
    if retries > 0 {
        cluster.retry_budget.deposit();
    }
    let result = loop {
        let attempt_body = match &replay {
            Some(bytes) if attempt > 0 => Either::Right(Full::new(bytes.clone())),
            _ => std::mem::replace(&mut body, Either::Right(Full::new(Bytes::new()))),
        };
        let mut req = Request::new(attempt_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = Uri::from(path.clone());
        // The last attempt (usually the only one) takes the headers; earlier ones copy them.
        *req.headers_mut() = if attempt >= retries {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        // backendRef filters apply to this backend only, not to mirrored copies.
        if let Some(ops) = &backend.request_headers {
            ops.apply(req.headers_mut());
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = [attempt_limit, remaining].into_iter().flatten().min();
        let started = Instant::now();
        let in_flight = cluster
            .balances_on_load()
            .then(|| endpoint.pool.health().start_request());
        let sent = endpoint
            .pool
            .send(req, upgrade.is_some(), shared.http1_fast_path);
        let outcome = match limit {
            Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| ()),
            None => Ok(sent.await),
        };
        drop(in_flight);
        cluster.latency.observe(started.elapsed().as_secs_f64());
        let endpoint_failed = match &outcome {
            Ok(Ok(resp)) => resp.status().is_server_error(),
            // The client's fault (body too large, client gone), not the endpoint's.
            Ok(Err(_)) if body_state.client_failed() => false,
            Ok(Err(_)) | Err(()) => true,
        };
        cluster.report(endpoint, endpoint_failed);
        let timed_out = outcome.is_err();
        if timed_out && deadline.is_some_and(|d| Instant::now() >= d) {
            return local(
                StatusCode::GATEWAY_TIMEOUT,
                Bytes::from_static(b"upstream request timeout\n"),
            );
        }
        let failed = match (&outcome, &rule.retry) {
            (Err(()), _) | (Ok(Err(_)), _) => true,
            (Ok(Ok(r)), Some(retry)) => retry.codes.contains(&r.status().as_u16()),
            (Ok(Ok(_)), None) => false,
        };
        let retrying = failed && attempt < retries && {
            let granted = cluster.retry_budget.try_retry();
            if !granted {
                cluster.retries_refused.inc();
            }
            granted
        };
        if !retrying {
            match outcome {
                Ok(result) => break result,
                Err(()) => {
                    return local(
                        StatusCode::GATEWAY_TIMEOUT,
                        Bytes::from_static(b"upstream request timeout\n"),
                    );
                }
            }
        }
        if let Ok(Err(err)) = &outcome {
            debug!(cluster = %cluster.name, upstream = %endpoint.addr, %err, attempt, "upstream attempt failed; retrying");
        }
        cluster.retries.inc();
        attempt += 1;
        endpoint = cluster.nth_after(first, attempt as usize);
        *served_by = endpoint.addr;
        if let Some(backoff) = rule.retry.as_ref().map(|r| r.backoff) {
            tokio::time::sleep(backoff).await;
        }
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
                upgrade::splice(downstream, &mut resp, shared.drain_watch());
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
        Err(_) if body_state.is_too_large() => body_too_large(),
        Err(_) if body_state.timed_out() => local(
            StatusCode::REQUEST_TIMEOUT,
            Bytes::from_static(b"request body timeout\n"),
        ),
        // A body the client broke off or framed wrongly (a malformed chunk): the client's
        // error, not the upstream's.
        Err(_) if body_state.client_failed() => local(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"cannot read the request body\n"),
        ),
        Err(err) => {
            debug!(cluster = %cluster.name, upstream = %endpoint.addr, %err, "upstream request failed");
            local(
                StatusCode::BAD_GATEWAY,
                Bytes::from_static(b"upstream connect error\n"),
            )
        }
    }
}

/// A path segment that means "." or ".." once %2e is decoded.
fn dot_segment(segment: &str) -> Option<&'static str> {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    match decoded.as_str() {
        "." => Some("."),
        ".." => Some(".."),
        _ => None,
    }
}

/// Whether a path has "." or ".." segments (also written %2e).
pub(crate) fn has_dot_segments(path: &str) -> bool {
    // Only segments starting with '.' or '%' can be dot segments: no allocation otherwise.
    path.split('/')
        .any(|s| (s.starts_with('.') || s.starts_with('%')) && dot_segment(s).is_some())
}

/// The request target with "." and ".." path segments (also written %2e) resolved, RFC 3986
/// section 5.2.4. `None` when the path has none (the common case, no allocation);
/// `Some(None)` when the result is not a valid target.
fn normalized_target(uri: &Uri) -> Option<Option<PathAndQuery>> {
    let path = uri.path();
    if !has_dot_segments(path) {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dot_segment(segment).unwrap_or(segment) {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let normalized = format!("/{}", out.join("/"));
    let target = match uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    Some(PathAndQuery::try_from(target).ok())
}

/// HTTP/2 clients may split Cookie into several fields; HTTP/1.1 allows only one
/// (RFC 9113 section 8.2.3), joined with "; ".
fn join_cookies(headers: &mut HeaderMap) {
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

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
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
