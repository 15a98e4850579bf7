//! The HTTP/1.1 fast path. Through hyper, a proxied request costs a header map built on each
//! side, a server dispatcher, and a client dispatcher with a channel in between: most of the
//! proxy's CPU for a small request. This path parses the client's head in place (httparse),
//! routes on the raw fields, writes the upstream head straight from them into one buffer, and
//! relays the response head and body the same way, over pooled upstream connections (plain
//! or TLS):
//! one read and one write on each side per request, nothing built per header.
//!
//! It takes the requests it fully understands: HTTP/1.1, an origin-form target, no body or a
//! Content-Length body small enough to hold, routed to a rule the model marks as one the fast
//! paths serve (`RuleRt::fast_path`: it forwards, and every filter is one they implement) to a
//! plain HTTP/1.1 cluster. At the first request it does not
//! take, the connection goes to hyper with the bytes read so far, and stays there: everything
//! this path does not implement is decided in one place, hyper's path.

pub(crate) mod request;
pub(crate) mod response;

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::debug;

use crate::codec::h1::framing::{BadChunk, Framing};
use crate::codec::h1::response::BadResponse;
use crate::model::filters::HeaderOps;
use crate::serve::attempt::Attempt;
use crate::serve::context::{Connection, ListenerCtx};
use crate::serve::local_reply::{OVERFLOW_HEADER, RATE_LIMITED, Refusal, rate_limit_fields};
use crate::shared::{Shared, drain_started};
use crate::upstream::stream::RawStream;
use crate::upstream::{RawConn, UpstreamError};

use request::{Plan, Planned, RequestCtx};
use response::{Parsed, ResponseHead, push_added};

/// Read size on both sides.
const READ_CHUNK: usize = 16 * 1024;
/// A body part this small goes out in the same write as the head.
const COALESCE: usize = 16 * 1024;
/// How long a request body that did not come with its head is waited for before the request
/// goes to the general path, which streams it.
const BODY_WAIT: Duration = Duration::from_secs(1);

/// How the fast path left a connection.
pub enum Ended {
    Closed,
    /// For hyper, with the bytes read and not served.
    Handoff(Bytes),
}

/// Serves a client connection's requests for as long as the fast path takes them.
pub async fn serve<IO>(
    io: &mut IO,
    shared: &Shared,
    listener: &ListenerCtx,
    conn: &Connection,
    drain: &mut watch::Receiver<bool>,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut upstream_request = Vec::with_capacity(1024);
    let mut ubuf = BytesMut::new();
    let mut down = Vec::with_capacity(1024);
    // One timer for the connection's life, pushed back per request: a timer registered anew
    // per request wakes the runtime's driver (an eventfd write) every time.
    let idle_timeout = shared.limits.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        if buf.is_empty() {
            idle.as_mut()
                .reset(tokio::time::Instant::now() + idle_timeout);
            if !next_request(io, &mut buf, drain, idle.as_mut()).await {
                return close(io).await;
            }
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + shared.limits.header_timeout;
        let state = shared.state.load_full();
        let plan = 'planned: loop {
            let cx = RequestCtx {
                listener,
                conn,
                limits: &shared.limits,
                logged: shared.access_log.as_ref().is_some_and(|l| l.sampled()),
                tracer: shared.tracer.as_deref(),
            };
            match request::plan(&buf, &state, cx, &mut upstream_request) {
                Planned::Go(plan) => break Some(plan),
                Planned::Handoff => {
                    shared.metrics.fast_path_handoffs.inc();
                    return Ended::Handoff(buf.freeze());
                }
                Planned::Refuse(status, text) => {
                    local_reply(&mut down, (status, text), (&[], None), (true, false));
                    let _ = io.write_all(&down).await;
                    return close(io).await;
                }
                Planned::Limited(refused) => {
                    buf.advance(refused.len);
                    shared.metrics.fast_path_requests.inc();
                    refused.rule.counters.record(429, started);
                    let closing = refused.close || shared.is_draining();
                    limited_reply(&mut down, &refused, closing);
                    let sent = io.write_all(&down).await.is_ok() && io.flush().await.is_ok();
                    if !sent || closing {
                        return close(io).await;
                    }
                    break 'planned None;
                }
                Planned::Partial => match read_more(io, &mut buf, deadline, drain).await {
                    Read::More => {}
                    Read::Ended => return close(io).await,
                    // The client closed its side mid-head: hyper answers what it has, as
                    // the general path would.
                    Read::Closed => {
                        shared.metrics.fast_path_handoffs.inc();
                        return Ended::Handoff(buf.freeze());
                    }
                    // A head not complete in time (slowloris): closed, as hyper does.
                    Read::Late => return close(io).await,
                },
                Planned::Body(len) => {
                    // Bodies usually come with their head; one that trickles in is hyper's to
                    // stream, rather than held here (and the head planned again per read).
                    let soon = deadline.min(tokio::time::Instant::now() + BODY_WAIT);
                    while buf.len() < len {
                        match read_more(io, &mut buf, soon, drain).await {
                            Read::More => {}
                            Read::Ended => return close(io).await,
                            Read::Closed | Read::Late => {
                                shared.metrics.fast_path_handoffs.inc();
                                return Ended::Handoff(buf.freeze());
                            }
                        }
                    }
                }
            }
        };
        let Some(plan) = plan else { continue };
        buf.advance(plan.len);
        shared.metrics.fast_path_requests.inc();
        let exchange = Exchange {
            plan: &plan,
            request: &upstream_request,
            shared,
            close: plan.close,
            started,
        };
        let keep_open = exchange.run(io, &mut ubuf, &mut down, listener, conn).await;
        if !keep_open {
            return close(io).await;
        }
    }
}

/// Closes the client connection the polite way: FIN after the last response (TLS:
/// close_notify first), so that a response framed by the close reads as complete and unread
/// pipelined bytes do not turn the close into a reset that could discard it.
async fn close<IO: AsyncWrite + Unpin>(io: &mut IO) -> Ended {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    Ended::Closed
}

/// Waits for the first bytes of the next request; false when the connection is to close (the
/// client left, it stayed idle too long, or the proxy drains).
async fn next_request<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    drain: &mut watch::Receiver<bool>,
    idle: std::pin::Pin<&mut tokio::time::Sleep>,
) -> bool {
    buf.reserve(READ_CHUNK);
    tokio::select! {
        read = io.read_buf(buf) => matches!(read, Ok(n) if n > 0),
        _ = idle => false,
        _ = drain_started(drain) => false,
    }
}

/// How waiting for more of a request went.
enum Read {
    More,
    /// The connection failed, or the proxy drains.
    Ended,
    /// The client closed its side (it may still read the answer).
    Closed,
    /// The deadline passed.
    Late,
}

async fn read_more<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
    drain: &mut watch::Receiver<bool>,
) -> Read {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    tokio::select! {
        read = tokio::time::timeout_at(deadline, io.read_buf(buf)) => match read {
            Ok(Ok(0)) => Read::Closed,
            Ok(Ok(_)) => Read::More,
            Ok(Err(_)) => Read::Ended,
            Err(_) => Read::Late,
        },
        _ = drain_started(drain) => Read::Ended,
    }
}

/// Why an upstream exchange produced no response.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("no response within the timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before a response")]
    Closed,
    #[error(transparent)]
    Response(#[from] BadResponse),
}

/// How one attempt on a connection failed.
struct AttemptError {
    failure: Failure,
    /// The request may have reached the upstream: some of it was written and something (or
    /// nothing but a close) came back.
    sent: bool,
    /// Part of a response arrived.
    received: bool,
}

/// One request's way to the upstream and back.
struct Exchange<'a, 's> {
    plan: &'a Plan<'s>,
    request: &'a [u8],
    shared: &'a Shared,
    /// The client asked for the connection to close after the response.
    close: bool,
    /// When the request's first byte arrived.
    started: Instant,
}

impl<'s> Exchange<'_, 's> {
    /// The response header modifiers, in the order they apply.
    fn response_ops(&self) -> Vec<&'s HeaderOps> {
        self.plan.response_ops.into_iter().flatten().collect()
    }

    /// Forwards the request and relays the response; false when the client connection is to
    /// close (asked for, draining, a response framed by the close or cut short, a client gone).
    async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut IO,
        ubuf: &mut BytesMut,
        down: &mut Vec<u8>,
        listener: &ListenerCtx,
        conn: &Connection,
    ) -> bool {
        let shared = self.shared;
        let Plan {
            cluster, endpoint, ..
        } = *self.plan;
        let limit = self.plan.timeout();
        let result = match Attempt::start(cluster, endpoint) {
            Ok(attempt) => {
                let result = attempt
                    .within(limit, self.response_head(ubuf, down))
                    .await
                    .unwrap_or(Err(Failure::Timeout));
                let overflow =
                    matches!(&result, Err(Failure::Connect(e)) if e.overflow().is_some());
                if overflow {
                    attempt.abandon();
                } else {
                    attempt.finish(result.as_ref().map_or(true, |(_, h)| h.status >= 500));
                }
                result
            }
            Err(limit) => Err(Failure::Connect(UpstreamError::Overflow {
                addr: endpoint.addr,
                limit,
            })),
        };
        let status = match &result {
            Ok((_, head)) => head.status,
            Err(Failure::Timeout) => 504,
            Err(Failure::Connect(e)) if e.overflow().is_some() => 503,
            Err(_) => 502,
        };
        self.plan
            .record(shared, (listener, conn), (status, self.started), "HTTP/1.1");
        let (mut upstream, head) = match result {
            Ok(ok) => ok,
            Err(failure) => {
                debug!(cluster = %cluster.name, upstream = %endpoint.addr, %failure, "upstream request failed");
                let overflow = match &failure {
                    Failure::Connect(e) => e.overflow(),
                    _ => None,
                };
                let (body, extra): (&[u8], _) = match overflow {
                    Some(limit) => (limit.body(), Some((OVERFLOW_HEADER, limit.name()))),
                    None if status == 504 => (b"upstream request timeout\n", None),
                    None => (b"upstream connect error\n", None),
                };
                let close = self.close || shared.is_draining();
                local_reply(
                    down,
                    (status, body),
                    (&self.response_ops(), extra),
                    (close, self.plan.head),
                );
                return io.write_all(down).await.is_ok() && io.flush().await.is_ok() && !close;
            }
        };
        ubuf.advance(head.len);
        match relay(io, &mut upstream.stream, ubuf, down, head.framing).await {
            Ok(ended_cleanly) => {
                if ended_cleanly && head.reusable {
                    endpoint.pool.release_raw(upstream);
                }
                io.flush().await.is_ok() && !head.close
            }
            Err(err) => {
                debug!(upstream = %endpoint.addr, %err, "response relay cut short");
                false
            }
        }
    }

    /// Sends the request and reads the response head (written for the client into `down`),
    /// on a pooled connection when there is one. A pooled connection the upstream closed
    /// meanwhile is replaced by a new one, when sending again is safe.
    async fn response_head(
        &self,
        ubuf: &mut BytesMut,
        down: &mut Vec<u8>,
    ) -> Result<(RawConn, ResponseHead), Failure> {
        let pool = &self.plan.endpoint.pool;
        let (mut upstream, mut reused) = match pool.checkout_raw() {
            Some(c) => (c, true),
            None => (pool.connect_raw().await?, false),
        };
        loop {
            match self.attempt(&mut upstream.stream, ubuf, down).await {
                Ok(head) => {
                    upstream.count_request();
                    return Ok((upstream, head));
                }
                Err(e) if reused && !e.received && (!e.sent || self.plan.idempotent) => {
                    upstream = pool.connect_raw().await?;
                    reused = false;
                }
                Err(e) => return Err(e.failure),
            }
        }
    }

    async fn attempt(
        &self,
        stream: &mut RawStream,
        ubuf: &mut BytesMut,
        down: &mut Vec<u8>,
    ) -> Result<ResponseHead, AttemptError> {
        ubuf.clear();
        let fail = |failure: Failure, sent: bool, received: bool| AttemptError {
            failure,
            sent,
            received,
        };
        // A write fails when the upstream reset the connection; after a mere FIN it succeeds,
        // and the close shows as an empty read.
        // Flushed: over TLS the last record may still sit in the session until then.
        let sent = async {
            stream.write_all(self.request).await?;
            stream.flush().await
        };
        sent.await.map_err(|e| fail(e.into(), false, false))?;
        loop {
            if ubuf.capacity() - ubuf.len() < 1024 {
                ubuf.reserve(READ_CHUNK);
            }
            let n = stream
                .read_buf(ubuf)
                .await
                .map_err(|e| fail(e.into(), true, !ubuf.is_empty()))?;
            if n == 0 {
                return Err(fail(Failure::Closed, true, !ubuf.is_empty()));
            }
            loop {
                // Draining: this response announces the close that follows it.
                let close = self.close || self.shared.is_draining();
                match response::parse(ubuf, self.plan.head, close, &self.response_ops(), down) {
                    Ok(Parsed::Final(head)) => return Ok(head),
                    Ok(Parsed::Interim(len)) => ubuf.advance(len),
                    Ok(Parsed::Partial) => break,
                    Err(bad) => return Err(fail(bad.into(), true, true)),
                }
            }
        }
    }
}

/// Why a response could not be relayed to the end.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("upstream: {0}")]
    Upstream(std::io::Error),
    #[error("upstream closed the connection mid-body")]
    Truncated,
    #[error("upstream: {0}")]
    Framing(#[from] BadChunk),
    #[error("client: {0}")]
    Client(std::io::Error),
}

/// Sends the response head (in `down`) and body to the client, the body as the upstream
/// framed it. `ubuf` holds what was read after the head. True when the body ended exactly at
/// the end of what was read: the upstream connection is then at a message boundary.
async fn relay<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    upstream: &mut RawStream,
    ubuf: &mut BytesMut,
    down: &mut Vec<u8>,
    mut framing: Framing,
) -> Result<bool, RelayError> {
    let (take, mut done) = framing.consume(ubuf)?;
    if take <= COALESCE {
        down.extend_from_slice(&ubuf[..take]);
        io.write_all(down).await.map_err(RelayError::Client)?;
    } else {
        io.write_all(down).await.map_err(RelayError::Client)?;
        io.write_all(&ubuf[..take])
            .await
            .map_err(RelayError::Client)?;
    }
    let mut extra = ubuf.len() - take;
    while !done {
        ubuf.clear();
        ubuf.reserve(READ_CHUNK);
        let n = upstream
            .read_buf(ubuf)
            .await
            .map_err(RelayError::Upstream)?;
        if n == 0 {
            return match framing {
                Framing::UntilClose => Ok(false),
                _ => Err(RelayError::Truncated),
            };
        }
        let (take, ended) = framing.consume(ubuf)?;
        io.write_all(&ubuf[..take])
            .await
            .map_err(RelayError::Client)?;
        extra = ubuf.len() - take;
        done = ended;
    }
    ubuf.clear();
    Ok(extra == 0)
}

/// A 429 for a request over a rate limit, with the general path's fields.
fn limited_reply(out: &mut Vec<u8>, refused: &request::RateLimited<'_>, close: bool) {
    local_reply(out, (429, RATE_LIMITED), (&[], None), (close, refused.head));
    // Before the blank line that ends the head (and the body, unless it is a HEAD's answer).
    let body = if refused.head { 0 } else { RATE_LIMITED.len() };
    let end_of_fields = out.len() - body - 2;
    let mut fields = Vec::with_capacity(128);
    for (name, value) in rate_limit_fields(&Refusal::from(&refused.limited)) {
        fields.extend_from_slice(name.as_str().as_bytes());
        fields.extend_from_slice(b": ");
        fields.extend_from_slice(value.as_bytes());
        fields.extend_from_slice(b"\r\n");
    }
    out.splice(end_of_fields..end_of_fields, fields);
}

/// An answer the fast path makes itself (the upstream failed or timed out, a rate limit), with
/// the route's response header modifiers applied as the general path applies them to its own
/// answers. The answer to a HEAD has the head alone (its Content-Length says what a GET's body
/// would be), or the client would read the body as the next response.
fn local_reply(
    out: &mut Vec<u8>,
    (status, body): (u16, &[u8]),
    (ops, extra): (&[&HeaderOps], Option<(&str, &str)>),
    (close, head): (bool, bool),
) {
    use std::io::Write;
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    if HeaderOps::keeps(ops, "content-type") {
        out.extend_from_slice(b"content-type: text/plain\r\n");
    }
    if let Some((name, value)) = extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    push_added(out, ops);
    let _ = write!(
        out,
        "content-length: {}\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    if !head {
        out.extend_from_slice(body);
    }
}
