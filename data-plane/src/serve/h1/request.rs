//! Deciding whether the fast path takes a request, and writing the upstream's request head
//! straight from the client's parsed fields.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use crate::limits::Limits;
use crate::model::RoutingState;
use crate::model::cluster::{ClusterRt, EndpointRt};
use crate::model::filters::HeaderOps;
use crate::model::rate_limit::Limited;
use crate::model::request::{RequestHeaders, RequestView};
use crate::model::rule::{Pick, RuleRt, WeightedBackend};
use crate::observe::otlp::Tracer;
use crate::observe::trace::TraceContext;
use crate::serve::context::{Connection, ListenerCtx};
use crate::serve::headers::without_port;
use crate::shared::Shared;
use crate::upstream::Protocol;

use super::response::push_added;
use crate::codec::h1::fields::{connection_values, is, listed, push_field, tokens};

/// Header fields parsed in place per request. A request with more goes to hyper, which
/// applies the configured limit.
const MAX_FIELDS: usize = 100;
/// The largest request body the fast path holds (it sends head and body in one write, and can
/// send them again); larger bodies are streamed by hyper.
pub const MAX_HELD_BODY: u64 = 64 * 1024;

/// Who asks, and where.
#[derive(Clone, Copy)]
pub struct RequestCtx<'a> {
    pub listener: &'a ListenerCtx,
    pub conn: &'a Connection,
    pub limits: &'a Limits,
    /// Whether this request is in the access log sample.
    pub logged: bool,
    /// Where spans go, when they are exported.
    pub tracer: Option<&'a Tracer>,
}

/// What the fast path does with a request whose bytes are in the buffer.
pub struct Plan<'s> {
    pub rule: &'s RuleRt,
    pub cluster: &'s ClusterRt,
    pub endpoint: &'s EndpointRt,
    /// Header modifiers for the response, in order.
    pub response_ops: [Option<&'s HeaderOps>; 2],
    /// The request's bytes (head and body) in the buffer.
    pub len: usize,
    /// The client asked for the connection to close after this response.
    pub close: bool,
    /// A HEAD request: the response has no body, whatever its headers say.
    pub head: bool,
    /// Safe to send again when a kept-alive upstream connection turns out to be closed.
    pub idempotent: bool,
    pub log: Option<Box<LogLine>>,
}

impl Plan<'_> {
    /// Counts the answer in the route's metrics, and logs it when the request is sampled.
    pub fn record(
        &self,
        shared: &Shared,
        (listener, conn): (&ListenerCtx, &Connection),
        (status, started): (u16, std::time::Instant),
        protocol: &'static str,
    ) {
        self.rule.counters.record(status, started);
        if let Some(line) = &self.log {
            let answered = (status, self.endpoint.addr);
            let entry = line.entry((listener, conn), answered, started, protocol);
            if let Some(log) = shared.access_log.as_ref().filter(|_| line.logged) {
                // The fast paths only take rules whose format logs no request header.
                match self.rule.filters.access_log() {
                    Some(format) => log.send(format.render(&entry, &[])),
                    None => log.record(&entry),
                }
            }
            if let Some(tracer) = &shared.tracer {
                tracer.record(&entry, &line.trace, 0);
            }
        }
    }

    /// The tightest of the timeouts on the exchange: the cluster's, and the rule's backend
    /// and request timeouts.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        [
            self.cluster.request_timeout,
            self.rule.backend_timeout,
            self.rule.request_timeout,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The request line of a logged request (or one whose span is exported).
pub struct LogLine {
    /// In the access log's sample.
    pub logged: bool,
    pub trace: TraceContext,
    pub start_time: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub user_agent: Option<String>,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub trace_id: String,
}

impl LogLine {
    /// The access log entry of this request, answered with `status`.
    pub fn entry<'a>(
        &'a self,
        (listener, conn): (&'a ListenerCtx, &Connection),
        (status, upstream): (u16, std::net::SocketAddr),
        started: std::time::Instant,
        protocol: &'static str,
    ) -> crate::observe::access_log::Entry<'a> {
        crate::observe::access_log::Entry {
            start_time: self.start_time.clone(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            listener: &listener.name,
            client: conn.peer,
            method: &self.method,
            authority: &self.authority,
            path: &self.path,
            protocol,
            status,
            route: Some(&self.route),
            cluster: Some(&self.cluster),
            upstream: Some(upstream),
            trace_id: Some(self.trace_id.clone()),
            user_agent: self.user_agent.as_deref(),
        }
    }
}

pub enum Planned<'s> {
    Go(Plan<'s>),
    /// The head is not all here yet.
    Partial,
    /// The head is, and the fast path takes the request, but its body is not all here: the
    /// request needs this many bytes in the buffer.
    Body(usize),
    /// Not for the fast path: hyper serves it (and the rest of the connection).
    Handoff,
    /// Over one of the rule's rate limits: answered 429 in place of forwarding (the request,
    /// `len` bytes with its body, is consumed; the connection stays open unless it asked to
    /// close).
    Limited(RateLimited<'s>),
    /// Answered with this status and text, and the connection closed: 400 for a malformed
    /// head, as hyper answers it; 414 for a request line longer than the whole head may be
    /// (hyper would say 431).
    Refuse(u16, &'static [u8]),
}

/// A request refused by a rate limit on the fast path.
pub struct RateLimited<'s> {
    pub rule: &'s RuleRt,
    pub limited: Limited<'s>,
    pub len: usize,
    pub close: bool,
    /// A HEAD: the answer has no body.
    pub head: bool,
}

/// Targets hyper's URI parser takes as they are; others go to hyper, which decides.
fn plain_target(target: &str) -> bool {
    target.starts_with('/')
        && target
            .bytes()
            // hyper's URI parser ends the target at '#': routing on the raw bytes would then
            // route another path than the general one.
            .all(|b| b.is_ascii_graphic() && !b"\"#<>\\^`{|}".contains(&b))
}

/// What the fast path needs to know of a request's fields.
struct Scanned<'b> {
    /// The one Host, without port.
    host: &'b str,
    /// Content-Length (0 without one).
    length: u64,
    /// The client asked for the connection to close after this response.
    close: bool,
    /// Connection lists field names besides close and keep-alive.
    connection_lists: bool,
}

/// Reads the fields the fast path cares about; `None` when a field makes the request one
/// for hyper (framing it does not do, an upgrade, gRPC, several Hosts or Cookies, ...).
fn scan_fields<'b>(fields: &[httparse::Header<'b>]) -> Option<Scanned<'b>> {
    let mut host = None;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut close = false;
    let mut connection_lists = false;
    let mut cookies = 0;
    for field in fields {
        let name = field.name;
        if is(name, "host") {
            hosts += 1;
            host = Some(field.value);
        } else if is(name, "content-length") {
            let parsed = std::str::from_utf8(field.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok());
            match (length, parsed) {
                (None, Some(n)) => length = Some(n),
                _ => return None,
            }
        } else if is(name, "transfer-encoding") || is(name, "expect") || is(name, "upgrade") {
            return None;
        } else if is(name, "connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade")
                    || token.eq_ignore_ascii_case(b"content-length")
                    || token.eq_ignore_ascii_case(b"transfer-encoding")
                    || token.eq_ignore_ascii_case(b"host")
                {
                    // Dropping a framing field (or Host) as hop-by-hop would desynchronise the
                    // upstream connection from the bytes sent on it.
                    return None;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    connection_lists = true;
                }
            }
        } else if is(name, "content-type") && field.value.starts_with(b"application/grpc") {
            return None;
        } else if is(name, "cookie") {
            cookies += 1;
        }
    }
    // The general path joins several Cookie fields into one for HTTP/1.1 upstreams.
    if cookies > 1 || hosts != 1 {
        return None;
    }
    let host = std::str::from_utf8(host?).ok().map(without_port)?;
    Some(Scanned {
        host,
        length: length.unwrap_or(0),
        close,
        connection_lists,
    })
}

/// The head at the start of `buf`: its length, method, target and fields; or what to do
/// instead when it is not complete, malformed or not for the fast path.
fn parse_head<'b, 'f>(
    buf: &'b [u8],
    limits: &Limits,
    fields: &'f mut [httparse::Header<'b>],
) -> Result<(usize, &'b str, &'b str, &'f [httparse::Header<'b>]), Planned<'static>> {
    let mut req = httparse::Request::new(fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_header_bytes => n,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_header_bytes => {
            return Err(Planned::Partial);
        }
        Ok(httparse::Status::Partial) if !buf[..limits.max_header_bytes].contains(&b'\n') => {
            return Err(Planned::Refuse(414, b"request line too long\n"));
        }
        // Malformed (not another protocol's preface, nor too many fields): answered here with
        // hyper's 400. Handed to hyper as buffered bytes, a malformed head after a request this
        // path served went unanswered: hyper's parse error on bytes it never read from the
        // socket leaves its connection task waiting for nothing.
        Err(
            httparse::Error::HeaderName
            | httparse::Error::HeaderValue
            | httparse::Error::NewLine
            | httparse::Error::Token,
        ) => return Err(Planned::Refuse(400, b"malformed request\n")),
        // Too large, too many fields, another version: hyper decides.
        _ => return Err(Planned::Handoff),
    };
    match (req.method, req.path, req.version) {
        (Some(method), Some(target), Some(1)) => Ok((head_len, method, target, req.headers)),
        _ => Err(Planned::Handoff),
    }
}

/// The rule, backend, cluster and endpoint for a request, when the fast path may serve it.
fn choose<'s>(
    state: &'s RoutingState,
    cx: RequestCtx<'_>,
    (host, method, target): (&str, &str, &str),
    fields: &[httparse::Header<'_>],
) -> Option<(
    &'s RuleRt,
    &'s WeightedBackend,
    &'s ClusterRt,
    &'s EndpointRt,
)> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let view = RequestView {
        path,
        query,
        method,
        headers: RequestHeaders::Raw(fields),
    };
    let (rule, _) = state
        .route_table(&cx.listener.name)
        .and_then(|table| table.virtual_host(host)?.route(&view))?;
    // The rule's action and filters are all the fast paths implement (decided when the rule
    // was built, from its filter list).
    if !rule.fast_path {
        return None;
    }
    let Pick::Backend(backend) = rule.action.pick(rand::random()) else {
        return None;
    };
    let cluster = backend
        .cluster
        .as_deref()
        .filter(|c| c.protocol == Protocol::Http1)
        .filter(|_| backend.filters.fast_path())?;
    let endpoint = cluster
        .pick(cx.conn.peer.ip(), RequestHeaders::Raw(fields))
        .filter(|e| e.pool.serves_raw())?;
    Some((rule, backend, cluster, endpoint))
}

/// Parses the request at the start of `buf` and, when the fast path takes it, writes the
/// upstream request (head and body) into `out`.
pub fn plan<'s>(
    buf: &[u8],
    state: &'s RoutingState,
    cx: RequestCtx<'_>,
    out: &mut Vec<u8>,
) -> Planned<'s> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let (head_len, method, target, fields) = match parse_head(buf, cx.limits, &mut fields) {
        Ok(head) => head,
        Err(planned) => return planned,
    };
    if fields.len() > cx.limits.max_headers
        || method == "CONNECT"
        || !plain_target(target)
        || rauta_common::paths::needs_normalizing(target.split_once('?').map_or(target, |(p, _)| p))
    {
        return Planned::Handoff;
    }
    let Some(scanned) = scan_fields(fields) else {
        return Planned::Handoff;
    };
    let host = scanned.host;
    if host.bytes().any(|b| b.is_ascii_uppercase() || b == b'[')
        || scanned.length > MAX_HELD_BODY
        || cx
            .limits
            .max_body_bytes
            .is_some_and(|max| scanned.length > max)
    {
        return Planned::Handoff;
    }
    if let (Some(sni), Some(names)) = (&cx.conn.sni, state.listener_names(&cx.listener.name))
        && names.listener_for(sni) != names.listener_for(host)
    {
        return Planned::Handoff;
    }
    let Some((rule, backend, cluster, endpoint)) =
        choose(state, cx, (host, method, target), fields)
    else {
        return Planned::Handoff;
    };
    let len = head_len + scanned.length as usize;
    if buf.len() < len {
        return Planned::Body(len);
    }
    // Counted here, once the fast path takes the request whole: not when it may still hand
    // it to the general path (which counts it then) or plan it again with its body.
    if let Some(limits) = rule.filters.rate_limit()
        && let Err(limited) = limits.check(cx.conn.peer.ip(), RequestHeaders::Raw(fields))
    {
        return Planned::Limited(RateLimited {
            rule,
            limited,
            len,
            close: scanned.close,
            head: method == "HEAD",
        });
    }
    let traceparent = fields
        .iter()
        .find(|f| is(f.name, "traceparent"))
        .map(|f| f.value);
    let trace =
        TraceContext::continue_from(traceparent, cx.tracer.is_some_and(|t| t.sample_root()));
    let connection = connection_values(fields, scanned.connection_lists);
    // In the general path's order: the rule's changes, then the backend's (responses: the
    // backend's, then the rule's).
    let request_ops: Vec<&HeaderOps> = [
        rule.filters.request_headers(),
        backend.filters.request_headers(),
    ]
    .into_iter()
    .flatten()
    .collect();
    write_head(
        out,
        (method, target),
        fields,
        (&connection, &request_ops),
        Forwarded {
            peer: cx.conn.peer.ip(),
            scheme: if cx.listener.tls { "https" } else { "http" },
            trace: &trace,
        },
    );
    out.extend_from_slice(&buf[head_len..len]);
    let traced = cx.tracer.is_some() && trace.sampled();
    let log = (cx.logged || traced).then(|| {
        Box::new(LogLine {
            logged: cx.logged,
            trace,
            start_time: jiff::Timestamp::now().to_string(),
            method: method.to_owned(),
            authority: host.to_owned(),
            path: target.to_owned(),
            user_agent: fields
                .iter()
                .find(|f| is(f.name, "user-agent"))
                .and_then(|f| std::str::from_utf8(f.value).ok())
                .map(str::to_owned),
            route: Arc::clone(&rule.name),
            cluster: Arc::clone(&cluster.name),
            trace_id: trace.trace_id_hex(),
        })
    });
    Planned::Go(Plan {
        rule,
        cluster,
        endpoint,
        response_ops: [
            backend.filters.response_headers(),
            rule.filters.response_headers(),
        ],
        len,
        close: scanned.close,
        head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        log,
    })
}

/// What the gateway adds to a forwarded request.
struct Forwarded<'a> {
    peer: IpAddr,
    scheme: &'static str,
    trace: &'a TraceContext,
}

/// Connection-scoped fields are dropped (RFC 9110 section 7.6.1) and the gateway's own added:
/// the same request hyper's path sends, in the client's field order and spelling.
fn write_head(
    out: &mut Vec<u8>,
    (method, target): (&str, &str),
    fields: &[httparse::Header<'_>],
    (connection, ops): (&[&[u8]], &[&HeaderOps]),
    forwarded: Forwarded<'_>,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in fields {
        let name = field.name;
        let dropped = is(name, "connection")
            || is(name, "keep-alive")
            || is(name, "proxy-connection")
            || is(name, "trailer")
            || (is(name, "te") && !field.value.eq_ignore_ascii_case(b"trailers"))
            || is(name, "x-forwarded-for")
            || is(name, "x-forwarded-proto")
            || is(name, "traceparent")
            || (!connection.is_empty() && listed(name, connection))
            || (!ops.is_empty() && !HeaderOps::keeps(ops, name));
        if !dropped {
            push_field(out, name.as_bytes(), field.value);
        }
    }
    push_added(out, ops);
    out.extend_from_slice(b"x-forwarded-for: ");
    for prior in fields.iter().filter(|f| is(f.name, "x-forwarded-for")) {
        out.extend_from_slice(prior.value);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}", forwarded.peer);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(forwarded.scheme.as_bytes());
    out.extend_from_slice(b"\r\ntraceparent: ");
    forwarded.trace.write_header(out);
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_head_drops_connection_fields_and_adds_the_gateways() {
        let fields = [
            httparse::Header {
                name: "Host",
                value: b"example.com",
            },
            httparse::Header {
                name: "Connection",
                value: b"keep-alive, X-Secret",
            },
            httparse::Header {
                name: "x-secret",
                value: b"1",
            },
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"10.0.0.1",
            },
            httparse::Header {
                name: "TE",
                value: b"trailers",
            },
            httparse::Header {
                name: "Keep-Alive",
                value: b"timeout=5",
            },
            httparse::Header {
                name: "Accept",
                value: b"*/*",
            },
        ];
        let trace = TraceContext::continue_from(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            false,
        );
        let mut out = Vec::new();
        write_head(
            &mut out,
            ("GET", "/a?b=1"),
            &fields,
            (&[b"keep-alive, X-Secret"], &[]),
            Forwarded {
                peer: "127.0.0.1".parse().unwrap(),
                scheme: "http",
                trace: &trace,
            },
        );
        let text = String::from_utf8(out).unwrap();
        let expected = format!(
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             traceparent: {}\r\n\r\n",
            trace.header()
        );
        assert_eq!(text, expected);
        assert!(
            trace
                .header()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn only_plain_origin_form_targets_are_taken() {
        assert!(plain_target("/a/b?c=d&e=%20"));
        assert!(!plain_target("*"));
        assert!(!plain_target("http://example.com/"));
        assert!(!plain_target("/a|b"));
        assert!(!plain_target("/admin#x"));
        assert!(!plain_target("/caf\u{e9}"));
    }
}
