//! What connects a connection's task with the requests it serves: the inbox (streams ready to
//! be polled, flow-control credit to return) and the request body a client streams in.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::codec::h2::frame::Reason;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind, still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a connection's streams and bodies leave work for the connection's task.
#[derive(Debug, Default)]
pub struct Inbox {
    inner: Mutex<InboxState>,
}

#[derive(Debug, Default)]
pub struct InboxState {
    /// Streams woken since the connection last looked.
    pub ready: Vec<u32>,
    /// Request body octets read by the proxy, per stream: window to give back to the client.
    pub credit: Vec<(u32, u32)>,
    waker: Option<Waker>,
}

impl Inbox {
    /// Registers the connection task's waker.
    pub fn register(&self, waker: &Waker) {
        let mut inner = lock(&self.inner);
        match &inner.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => inner.waker = Some(waker.clone()),
        }
    }

    /// Takes what has arrived, leaving empty lists (their allocations swapped with `into`).
    pub fn take(&self, ready: &mut Vec<u32>, credit: &mut Vec<(u32, u32)>) {
        let mut inner = lock(&self.inner);
        std::mem::swap(&mut inner.ready, ready);
        std::mem::swap(&mut inner.credit, credit);
    }

    fn push(&self, f: impl FnOnce(&mut InboxState)) {
        let waker = {
            let mut inner = lock(&self.inner);
            f(&mut inner);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub fn ready(&self, stream: u32) {
        self.push(|s| s.ready.push(stream));
    }

    fn credit(&self, stream: u32, octets: u32) {
        self.push(|s| s.credit.push((stream, octets)));
    }
}

/// Wakes a stream: queues it in the inbox and wakes the connection's task.
#[derive(Debug)]
pub struct StreamWaker {
    pub stream: u32,
    pub inbox: Arc<Inbox>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.inbox.ready(self.stream);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.inbox.ready(self.stream);
    }
}

/// DATA payloads smaller than this are copied into a shared buffer rather than queued as
/// they came: each would otherwise be a queue entry of its own holding on to the read buffer
/// it was cut from, so a client sending a window's worth of one-octet frames would cost the
/// proxy a hundred times the window in memory.
const SMALL: usize = 4096;
/// The most a coalescing buffer gathers before it is queued.
const GATHER: usize = 16 * 1024;

#[derive(Debug, Default)]
struct RecvState {
    chunks: VecDeque<Bytes>,
    /// Small payloads gathered, queued after `chunks`.
    gathering: BytesMut,
    trailers: Option<HeaderMap>,
    ended: bool,
    reset: Option<Reason>,
    /// The proxy dropped the body: what still arrives is discarded.
    dropped: bool,
    waker: Option<Waker>,
}

impl RecvState {
    /// Queues a payload: small ones are gathered (copied), larger ones kept as they are. The
    /// queue then holds at most about the stream's window in octets, in at most
    /// window / SMALL + 1 entries.
    fn push(&mut self, data: Bytes) {
        if data.len() >= SMALL {
            self.flush_gathered();
            self.chunks.push_back(data);
            return;
        }
        if self.gathering.len() + data.len() > GATHER {
            self.flush_gathered();
        }
        if self.gathering.capacity() == 0 {
            self.gathering.reserve(GATHER);
        }
        self.gathering.extend_from_slice(&data);
    }

    fn flush_gathered(&mut self) {
        if !self.gathering.is_empty() {
            let gathered = self.gathering.split().freeze();
            self.chunks.push_back(gathered);
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        if self.chunks.is_empty() {
            self.flush_gathered();
        }
        self.chunks.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.gathering.is_empty()
    }
}

/// The connection's end of a request body.
#[derive(Debug)]
pub struct BodySender {
    state: Arc<Mutex<RecvState>>,
}

impl BodySender {
    /// Queues a DATA payload; false when the proxy no longer reads the body (the caller
    /// then gives the window back itself).
    pub fn data(&self, data: Bytes) -> bool {
        self.update(|s| {
            if s.dropped {
                return false;
            }
            s.push(data);
            true
        })
    }

    pub fn trailers(&self, trailers: HeaderMap) {
        self.update(|s| {
            s.trailers = Some(trailers);
            s.ended = true;
        });
    }

    pub fn end(&self) {
        self.update(|s| s.ended = true);
    }

    pub fn reset(&self, reason: Reason) {
        self.update(|s| s.reset = Some(reason));
    }

    fn update<T>(&self, f: impl FnOnce(&mut RecvState) -> T) -> T {
        let (out, waker) = {
            let mut s = lock(&self.state);
            let out = f(&mut s);
            (out, s.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        out
    }
}

impl Drop for BodySender {
    /// A stream that goes away before its body ended (reset, answered first, connection
    /// closed) fails the body, so that whoever reads it stops waiting.
    fn drop(&mut self) {
        self.update(|s| {
            if !s.ended && s.reset.is_none() {
                s.reset = Some(Reason::Cancel);
            }
        });
    }
}

/// A request body as the client streams it.
#[derive(Debug)]
pub struct RecvBody {
    state: Arc<Mutex<RecvState>>,
    stream: u32,
    inbox: Arc<Inbox>,
    /// Declared by content-length, less what was read.
    remaining: Option<u64>,
}

/// The client reset the stream, or the connection ended, before the body was complete.
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 request body cut short: {0}")]
pub struct RecvError(pub Reason);

impl RecvBody {
    pub fn channel(
        stream: u32,
        inbox: Arc<Inbox>,
        content_length: Option<u64>,
    ) -> (BodySender, RecvBody) {
        let state = Arc::new(Mutex::new(RecvState::default()));
        let sender = BodySender {
            state: Arc::clone(&state),
        };
        let body = RecvBody {
            state,
            stream,
            inbox,
            remaining: content_length,
        };
        (sender, body)
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let mut s = lock(&self.state);
        if let Some(chunk) = s.pop() {
            drop(s);
            let len = chunk.len();
            if len > 0 {
                self.inbox.credit(self.stream, len as u32);
            }
            if let Some(r) = &mut self.remaining {
                *r = r.saturating_sub(len as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(trailers) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        if let Some(reason) = s.reset {
            return Poll::Ready(Some(Err(RecvError(reason))));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.state);
        s.ended && s.is_empty() && s.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let unread: usize = {
            let mut s = lock(&self.state);
            s.dropped = true;
            s.flush_gathered();
            s.chunks.drain(..).map(|c| c.len()).sum()
        };
        // The connection window those octets took is given back; the stream's no longer
        // matters once the proxy stops reading.
        if unread > 0 {
            self.inbox.credit(self.stream, unread as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn tiny_payloads_are_gathered_into_few_entries() {
        let inbox = Arc::new(Inbox::default());
        let (tx, mut rx) = RecvBody::channel(1, Arc::clone(&inbox), None);
        // A window's worth of one-octet frames, each cut from a large read buffer.
        let read_buffer = Bytes::from(vec![7u8; 64 * 1024]);
        for i in 0..(1 << 20) {
            assert!(tx.data(read_buffer.slice(i % 1000..i % 1000 + 1)));
        }
        {
            let s = lock(&tx.state);
            let entries = s.chunks.len() + 1;
            assert!(entries <= (1 << 20) / GATHER + 1, "{entries} queue entries");
            assert!(
                s.chunks.iter().all(|c| c.len() == GATHER),
                "gathered, not queued one by one"
            );
        }
        tx.data(Bytes::from(vec![1u8; SMALL]));
        tx.end();
        let mut total = 0;
        while let Some(frame) = rx.frame().await {
            total += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(
            total,
            (1 << 20) + SMALL,
            "every octet delivered, in order of arrival"
        );
    }

    #[tokio::test]
    async fn a_body_whose_stream_went_away_fails() {
        let inbox = Arc::new(Inbox::default());
        let (tx, mut rx) = RecvBody::channel(1, Arc::clone(&inbox), None);
        assert!(tx.data(Bytes::from_static(b"part")));
        drop(tx);
        let first = rx.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        assert!(matches!(
            rx.frame().await,
            Some(Err(RecvError(Reason::Cancel)))
        ));

        let (tx, rx) = RecvBody::channel(3, inbox, None);
        tx.end();
        drop(tx);
        assert!(
            rx.collect().await.unwrap().to_bytes().is_empty(),
            "an ended body is whole"
        );
    }
}
