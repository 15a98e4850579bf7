//! What a client connection is doing, for the idle timeout, and its socket wrapped to notice
//! bytes moving and writes that stall (the send timeout).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
