//! A client's request body on its way upstream: from hyper (HTTP/1.1) or the proxy's own
//! HTTP/2 server, held to the body limits (size: 413; rate and time: 408).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::h2::{RecvBody, RecvError};
use crate::limits::Limits;

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

    /// Holds the body to `max` bytes too, when that is below the listener's limit (a route's
    /// TrafficPolicy); called before anything is read.
    pub fn limit_to(mut self, max: Option<u64>) -> Self {
        if let Some(max) = max.filter(|m| *m < self.limit) {
            self.limit = max;
            self.remaining = Some(self.remaining.map_or(max, |r| r.min(max)));
        }
        self
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
