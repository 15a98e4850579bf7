//! Limits on what a client may send: header size and count (hyper answers 431), request body
//! size (413), how long a connection may sit idle before it is closed, how slowly a request
//! body may arrive (408), and how long a response may wait for the client to read it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http2::{RecvBody, RecvError};

/// The proxy's request limits (flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers), bytes; at least 8192.
    pub max_header_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
    /// Largest request body, bytes; `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for a request's head once its first byte arrived (HTTP/1.1), or for a
    /// header block to be complete (HTTP/2): a client that trickles them (slowloris) is cut
    /// off.
    pub header_timeout: Duration,
    /// How long the proxy may wait for a request body's bytes, in all (with a minimum rate)
    /// or between two reads (without one); then the request fails with 408.
    pub client_body_timeout: Duration,
    /// Each octet of request body received extends `client_body_timeout` by 1/rate seconds
    /// (Apache's mod_reqtimeout MinRate): a body trickled slower than this runs out of time.
    /// 0: the timeout is between two reads instead (nginx's client_body_timeout).
    pub client_body_min_rate: u64,
    /// A write to the client that makes no progress for this long ends the connection, and an
    /// HTTP/2 stream that waits this long for flow-control window is reset.
    pub send_timeout: Duration,
    /// Client connections each worker serves at once; 0: unlimited.
    pub max_connections_per_worker: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            idle_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(30),
            client_body_timeout: Duration::from_secs(60),
            client_body_min_rate: 500,
            send_timeout: Duration::from_secs(60),
            max_connections_per_worker: 0,
        }
    }
}

/// The request body exceeded `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Why reading a client's body failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    #[error("request body not received in time")]
    TimedOut,
    #[error("reading the request body: {0}")]
    Read(#[from] ClientBodyError),
}

/// A request body as the client's connection delivers it: through hyper (HTTP/1.1), through
/// the proxy's own HTTP/2 server, or none at all.
#[derive(Debug)]
pub enum ClientBody {
    Hyper(Incoming),
    Http2(RecvBody),
    Empty,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Http2(#[from] RecvError),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::from),
            ClientBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::from),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Http2(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Http2(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What happened to a request body, readable after it was handed to an upstream connection
/// (HTTP/2 clients do not report body errors back, and the pool must know whether the
/// upload finished before it reuses the connection).
#[derive(Debug, Default)]
pub struct BodyState(AtomicU8);

const BODY_DONE: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;
const BODY_CLIENT_ERROR: u8 = 4;
const BODY_TIMED_OUT: u8 = 8;

impl BodyState {
    fn set(&self, flag: u8) {
        self.0.fetch_or(flag, Ordering::Relaxed);
    }

    /// The whole body was read from the client.
    pub fn is_done(&self) -> bool {
        self.0.load(Ordering::Relaxed) & BODY_DONE != 0
    }

    /// The body went over the size limit.
    pub fn is_too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) & BODY_TOO_LARGE != 0
    }

    /// The client sent the body too slowly.
    pub fn timed_out(&self) -> bool {
        self.0.load(Ordering::Relaxed) & BODY_TIMED_OUT != 0
    }

    /// Reading the body failed on the client's side (too large, too slow, malformed, or the
    /// client went away): whatever the upstream attempt then did is not the endpoint's fault.
    pub fn client_failed(&self) -> bool {
        self.0.load(Ordering::Relaxed) & (BODY_TOO_LARGE | BODY_CLIENT_ERROR | BODY_TIMED_OUT) != 0
    }
}

/// A client's request body, cut off with an error past the size limit or when it arrives
/// too slowly.
#[derive(Debug)]
pub struct RequestBody {
    inner: ClientBody,
    remaining: Option<u64>,
    limit: u64,
    state: Arc<BodyState>,
    /// None for a request without a body.
    clock: Option<BodyClock>,
}

/// How long the proxy has waited for a body's bytes, against what it allows.
#[derive(Debug)]
struct BodyClock {
    timeout: Duration,
    min_rate: u64,
    received: u64,
    /// Time spent waiting for the client so far (time spent waiting for the upstream to take
    /// the body is not the client's to answer for).
    waited: Duration,
    waiting_since: Option<Instant>,
    /// Made at the first wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl BodyClock {
    /// The client sent a frame of `len` octets.
    fn received(&mut self, len: usize) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.received += len as u64;
        if self.min_rate == 0 {
            self.waited = Duration::ZERO;
        }
    }

    /// The body is waited for: whether the time allowed has run out.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let allowed = match self.min_rate {
            0 => self.timeout,
            rate => self.timeout + Duration::from_secs_f64(self.received as f64 / rate as f64),
        };
        let deadline = since + allowed.saturating_sub(self.waited);
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

impl RequestBody {
    pub fn new(inner: ClientBody, limits: &Limits) -> Self {
        let state = Arc::new(BodyState::default());
        let clock = if inner.is_end_stream() {
            state.set(BODY_DONE);
            None
        } else {
            Some(BodyClock {
                timeout: limits.client_body_timeout,
                min_rate: limits.client_body_min_rate,
                received: 0,
                waited: Duration::ZERO,
                waiting_since: None,
                timer: None,
            })
        };
        RequestBody {
            inner,
            remaining: limits.max_body_bytes,
            limit: limits.max_body_bytes.unwrap_or(u64::MAX),
            state,
            clock,
        }
    }

    /// What happens to this body, to be read once it has been sent.
    pub fn state(&self) -> Arc<BodyState> {
        Arc::clone(&self.state)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => {
                self.state.set(BODY_CLIENT_ERROR);
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                self.state.set(BODY_DONE);
                return Poll::Ready(None);
            }
            Poll::Pending => {
                if self.clock.as_mut().is_some_and(|c| c.expired(cx)) {
                    self.state.set(BODY_TIMED_OUT);
                    return Poll::Ready(Some(Err(RequestBodyError::TimedOut)));
                }
                return Poll::Pending;
            }
        };
        let len = frame.data_ref().map_or(0, |d| d.len());
        if let Some(clock) = &mut self.clock {
            clock.received(len);
        }
        if let (Some(remaining), Some(_)) = (self.remaining, frame.data_ref()) {
            let len = len as u64;
            if len > remaining {
                self.state.set(BODY_TOO_LARGE);
                let limit = self.limit;
                return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
            }
            self.remaining = Some(remaining - len);
        }
        if self.inner.is_end_stream() {
            self.state.set(BODY_DONE);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection has been doing, for the idle timeout.
#[derive(Debug, Default)]
pub struct Activity {
    /// Bumped on every read and write that moved bytes.
    io: AtomicU64,
    /// Requests received and not yet answered.
    requests: AtomicUsize,
}

impl Activity {
    /// Counts a request until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(Arc::clone(self))
    }

    /// A mark to compare later: unchanged and no request open means idle since the mark.
    pub fn mark(&self) -> (u64, usize) {
        (
            self.io.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }

    pub fn idle_since(&self, mark: (u64, usize)) -> bool {
        let now = self.mark();
        now.0 == mark.0 && now.1 == 0
    }
}

/// A request being handled on a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client stream that records activity, and fails a write the client leaves waiting for
/// longer than the send timeout (a client that never reads would otherwise hold the
/// connection and its upstream request for ever).
#[derive(Debug)]
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    send_timeout: Duration,
    /// Made when a write first has to wait.
    stalled: Option<Pin<Box<Sleep>>>,
    /// A write is waiting, timed by `stalled`.
    armed: bool,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>, send_timeout: Duration) -> Self {
        TrackedIo {
            inner,
            activity,
            send_timeout,
            stalled: None,
            armed: false,
        }
    }

    fn moved(&self) {
        self.activity.io.fetch_add(1, Ordering::Relaxed);
    }

    /// A write (or flush) came to `polled`: waiting ones are timed, and fail once they have
    /// waited the send timeout.
    fn timed<R>(
        &mut self,
        polled: Poll<std::io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = Instant::now() + self.send_timeout;
        let timer = match &mut self.stalled {
            Some(timer) => {
                if !self.armed {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .stalled
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read the response in time",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.moved();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        self.timed(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        self.timed(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_marks_idle_only_without_io_or_requests() {
        let a = Arc::new(Activity::default());
        let mark = a.mark();
        assert!(a.idle_since(mark));
        let guard = a.request();
        assert!(!a.idle_since(a.mark()), "a request is open");
        drop(guard);
        a.io.fetch_add(1, Ordering::Relaxed);
        assert!(!a.idle_since(mark), "bytes moved");
        assert!(a.idle_since(a.mark()));
    }
}
