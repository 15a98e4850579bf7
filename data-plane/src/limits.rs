//! Limits on what a client may send: header size and count (hyper answers 431), request body
//! size (413), and how long a connection may sit idle before it is closed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            idle_timeout: Duration::from_secs(75),
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

    /// Reading the body failed on the client's side (too large, or the client went away):
    /// whatever the upstream attempt then did is not the endpoint's fault.
    pub fn client_failed(&self) -> bool {
        self.0.load(Ordering::Relaxed) & (BODY_TOO_LARGE | BODY_CLIENT_ERROR) != 0
    }
}

/// A client's request body, cut off with an error past the limit.
#[derive(Debug)]
pub struct RequestBody {
    inner: ClientBody,
    remaining: Option<u64>,
    limit: u64,
    state: Arc<BodyState>,
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: Option<u64>) -> Self {
        let state = Arc::new(BodyState::default());
        if inner.is_end_stream() {
            state.set(BODY_DONE);
        }
        RequestBody {
            inner,
            remaining: limit,
            limit: limit.unwrap_or(u64::MAX),
            state,
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
            Poll::Pending => return Poll::Pending,
        };
        if let (Some(remaining), Some(data)) = (self.remaining, frame.data_ref()) {
            let len = data.len() as u64;
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

/// A client stream that records activity.
#[derive(Debug)]
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        TrackedIo { inner, activity }
    }

    fn moved(&self) {
        self.activity.io.fetch_add(1, Ordering::Relaxed);
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
        polled
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
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
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
