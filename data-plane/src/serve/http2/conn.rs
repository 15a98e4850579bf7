//! One HTTP/2 connection: frames in, requests to the request path, responses out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::MAX_CONCURRENT_STREAMS;
use super::flood::PerSecond;
use super::request::Fields;
use super::stream::{HIGH_WATER, SendWindow, Sent, Stream};
use crate::body::client::ClientBody;
use crate::body::h2::Inbox;
use crate::codec::h2::frame::{self, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, Reason, setting};
use crate::codec::h2::hpack::Decoder;
use crate::serve::context::{Connection, ListenerCtx};
use crate::serve::local_reply::{self, ProxyBody};
use crate::shared::{Shared, drain_started};

/// Each stream may have this much request body in flight before the proxy reads it.
pub(super) const STREAM_WINDOW: u32 = 1 << 20;
/// And the connection, for all its streams.
const CONN_WINDOW: u32 = 4 << 20;
/// Output waiting for the client past this much stops reading from it.
const READ_PAUSE: usize = 1 << 20;
const READ_CHUNK: usize = 16 * 1024;
/// Rounds of work in one poll before yielding to the runtime's other tasks.
const BUDGET: usize = 32;

/// A header block that continues in CONTINUATION frames.
pub(super) struct PartialBlock {
    pub(super) stream: u32,
    pub(super) end_stream: bool,
    /// The HEADERS frame made the stream depend on itself (a stream error once decoded).
    pub(super) self_dependent: bool,
    pub(super) block: Vec<u8>,
    /// When the block must be complete.
    pub(super) deadline: Instant,
}

/// Stream ids are small odd integers: a multiplicative hash spreads them for next to nothing
/// (the default hasher resists collision attacks, which a client cannot mount on its own
/// connection's few hundred streams).
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32));
        }
    }

    fn write_u32(&mut self, n: u32) {
        let h = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

pub(super) type StreamMap = HashMap<u32, Stream, BuildHasherDefault<IdHasher>>;

/// A connection error: GOAWAY with this code, then close.
#[derive(Debug)]
pub(super) struct ConnError(pub(super) Reason, pub(super) &'static str);

/// What a poll of the connection came to.
enum Turn {
    End(End),
    /// Output waits: to be written after the runtime has looked for more events.
    Flush,
}

/// How the connection's loop ended.
enum End {
    Done,
    Io(std::io::Error),
}

/// Serves an HTTP/2 connection. `prefix` holds bytes already read from `io` (at least the
/// client's preface for h2c, nothing after a TLS handshake).
pub async fn serve<IO>(
    io: IO,
    prefix: Bytes,
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    conn: Arc<Connection>,
    drain: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut c = Conn::new(io, prefix, shared, listener, conn, drain);
    let ended = loop {
        match std::future::poll_fn(|cx| c.poll(cx)).await {
            Turn::End(end) => break end,
            Turn::Flush => {
                // Output is ready: the runtime first looks for more events (answers from
                // other upstreams for this connection, say), so one write carries them all.
                // Every write wakes the client, and fewer, fuller writes cost less on both
                // sides.
                tokio::task::yield_now().await;
                c.flush_now = true;
            }
        }
    };
    // What is still queued (a GOAWAY at least) goes out, within reason.
    let rest = &c.out[c.out_pos..];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        c.io.write_all(rest).await?;
        c.io.shutdown().await
    })
    .await;
    match ended {
        End::Done => Ok(()),
        End::Io(e) => Err(e),
    }
}

pub(super) struct Conn<IO> {
    pub(super) io: IO,
    pub(super) rbuf: BytesMut,
    pub(super) out: Vec<u8>,
    /// How much of `out` has been written.
    pub(super) out_pos: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) listener: Arc<ListenerCtx>,
    pub(super) conn: Arc<Connection>,
    pub(super) decoder: Decoder,
    pub(super) streams: StreamMap,
    /// Streams closed lately, newest last, and whether the proxy reset them.
    pub(super) closed: std::collections::VecDeque<(u32, bool)>,
    pub(super) inbox: Arc<Inbox>,
    pub(super) ready: Vec<u32>,
    pub(super) credit: Vec<(u32, u32)>,
    /// Streams with more to send once the output buffer is written.
    pub(super) deferred: Vec<u32>,
    /// Scratch for encoding header blocks.
    pub(super) scratch: Vec<u8>,
    pub(super) partial: Option<PartialBlock>,
    pub(super) preface: bool,
    pub(super) settings: bool,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    pub(super) peer_window: i64,
    pub(super) peer_max_frame: usize,
    /// What the proxy may still send on the connection.
    pub(super) send_window: i64,
    /// What the client may still send on the connection.
    pub(super) recv_window: i64,
    /// Connection window taken by data the proxy is done with, not yet given back.
    pub(super) recv_credit: u32,
    /// The highest stream the client opened.
    pub(super) last_stream: u32,
    pub(super) goaway: bool,
    pub(super) fatal: bool,
    /// Output is to be written in this poll (the runtime has looked for events since).
    pub(super) flush_now: bool,
    /// Written but not flushed yet (TLS).
    pub(super) unflushed: bool,
    /// The poll stopped to let the runtime look for events before writing.
    pub(super) yield_for_flush: bool,
    pub(super) read_closed: bool,
    /// Streams that cost work and gave nothing (reset, refused, malformed).
    pub(super) abuse: PerSecond,
    pub(super) settings_seen: PerSecond,
    /// Frames in a row that carried nothing.
    pub(super) empty_frames: u32,
    pub(super) idle: Pin<Box<Sleep>>,
    pub(super) idle_mark: (u64, usize),
    /// Fires at the earliest deadline of stalled work: a header block to complete, a stream
    /// waiting for window. Made the first time there is one.
    pub(super) watchdog: Option<Pin<Box<Sleep>>>,
    /// Completes when draining starts.
    pub(super) drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Held for the connection's life: the proxy counts open connections by these receivers
    /// and waits for them when it drains (the one in `drain` is gone once that completes).
    _open: watch::Receiver<bool>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    fn new(
        io: IO,
        prefix: Bytes,
        shared: Arc<Shared>,
        listener: Arc<ListenerCtx>,
        conn: Arc<Connection>,
        open: watch::Receiver<bool>,
    ) -> Self {
        let mut drain = open.clone();
        let limits = shared.limits;
        let mut out = Vec::with_capacity(READ_CHUNK);
        frame::push_settings(
            &mut out,
            &[
                (setting::MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
                (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (
                    setting::MAX_HEADER_LIST_SIZE,
                    u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
                ),
            ],
        );
        frame::push_window_update(&mut out, 0, CONN_WINDOW - DEFAULT_WINDOW as u32);
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK.max(prefix.len()));
        rbuf.extend_from_slice(&prefix);
        let idle_mark = conn.activity.mark();
        Conn {
            io,
            rbuf,
            out,
            out_pos: 0,
            decoder: Decoder::new(4096),
            streams: StreamMap::default(),
            closed: std::collections::VecDeque::new(),
            inbox: Arc::new(Inbox::default()),
            ready: Vec::new(),
            credit: Vec::new(),
            deferred: Vec::new(),
            scratch: Vec::new(),
            partial: None,
            preface: false,
            settings: false,
            peer_window: DEFAULT_WINDOW,
            peer_max_frame: DEFAULT_MAX_FRAME,
            send_window: DEFAULT_WINDOW,
            recv_window: i64::from(CONN_WINDOW),
            recv_credit: 0,
            last_stream: 0,
            goaway: false,
            fatal: false,
            flush_now: false,
            unflushed: false,
            yield_for_flush: false,
            read_closed: false,
            abuse: PerSecond::new(),
            settings_seen: PerSecond::new(),
            empty_frames: 0,
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            idle_mark,
            watchdog: None,
            drain: Box::pin(async move { drain_started(&mut drain).await }),
            _open: open,
            shared,
            listener,
            conn,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Turn> {
        match self.poll_turn(cx) {
            Poll::Ready(end) => Poll::Ready(Turn::End(end)),
            Poll::Pending if std::mem::take(&mut self.yield_for_flush) => Poll::Ready(Turn::Flush),
            Poll::Pending => {
                // A watchdog set during the turn must be polled to wake the task.
                if let Some(watchdog) = &mut self.watchdog
                    && watchdog.as_mut().poll(cx).is_ready()
                {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.inbox.register(cx.waker());
        if !self.goaway && self.drain.as_mut().poll(cx).is_ready() {
            self.go_away(Reason::NoError);
        }
        while self.idle.as_mut().poll(cx).is_ready() {
            let activity = &self.conn.activity;
            if self.streams.is_empty() && activity.idle_since(self.idle_mark) {
                debug!("closing idle HTTP/2 connection");
                self.go_away(Reason::NoError);
                break;
            }
            self.idle_mark = activity.mark();
            let next = Instant::now() + self.shared.limits.idle_timeout;
            self.idle.as_mut().reset(next);
        }
        if let Some(watchdog) = &mut self.watchdog
            && watchdog.as_mut().poll(cx).is_ready()
        {
            self.watchdog = None;
            self.stalled_work();
        }
        for _ in 0..BUDGET {
            let mut progress = false;
            if !self.preface && !self.rbuf.is_empty() {
                // Bytes read before the connection came here (h2c's preface and what followed).
                self.parse();
            }
            if !self.read_closed && !self.fatal && self.out.len() - self.out_pos < READ_PAUSE {
                if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                    self.rbuf.reserve(READ_CHUNK);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        self.read_closed = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        self.parse();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Io(e)),
                    Poll::Pending => {}
                }
            }
            if self.read_closed {
                // The client is gone: nothing more can reach it.
                self.streams.clear();
                return Poll::Ready(End::Done);
            }
            self.inbox.take(&mut self.ready, &mut self.credit);
            if !self.credit.is_empty() {
                progress = true;
                self.give_credit();
            }
            if !self.ready.is_empty() {
                progress = true;
                let mut ready = std::mem::take(&mut self.ready);
                for id in ready.drain(..) {
                    self.poll_stream(id);
                }
                self.ready = ready;
            }
            if progress && self.out.len() - self.out_pos < HIGH_WATER {
                // More may come in this turn: one write carries all of it.
                continue;
            }
            if self.out_pos < self.out.len() && !self.flush_now && self.out.len() < HIGH_WATER {
                self.yield_for_flush = true;
                return Poll::Pending;
            }
            self.flush_now = false;
            if self.out_pos < self.out.len() || self.unflushed {
                match self.poll_write(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Io(e)),
                    Poll::Pending => {}
                }
            }
            if self.out.is_empty() && !self.deferred.is_empty() {
                progress = true;
                // Those that fill the buffer again are deferred anew.
                for id in std::mem::take(&mut self.deferred) {
                    self.poll_stream(id);
                }
            }
            if (self.goaway || self.fatal) && self.streams.is_empty() {
                return Poll::Ready(End::Done);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        if let Poll::Ready(Err(e)) = self.poll_write(cx) {
            return Poll::Ready(End::Io(e));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn parse(&mut self) {
        if let Err(ConnError(reason, why)) = self.frames() {
            debug!(peer = %self.conn.peer, %reason, why, "HTTP/2 connection error");
            self.fail(reason);
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        if !self.out.is_empty() {
            self.out.clear();
            self.out_pos = 0;
            self.unflushed = true;
        }
        // TLS holds the last record until flushed; a flush that has to wait is tried again
        // on every turn until it is done.
        if self.unflushed {
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends GOAWAY once: streams the client opened so far finish, no new ones start.
    pub(super) fn go_away(&mut self, reason: Reason) {
        if !self.goaway {
            self.goaway = true;
            frame::push_goaway(&mut self.out, self.last_stream, reason);
        }
    }

    /// Ends the connection at once after a connection error.
    pub(super) fn fail(&mut self, reason: Reason) {
        self.shared
            .metrics
            .http2_connection_errors
            .with_label_values(&[reason.name()])
            .inc();
        if !self.goaway {
            self.goaway = true;
            frame::push_goaway(&mut self.out, self.last_stream, reason);
        }
        self.fatal = true;
        self.partial = None;
        self.streams.clear();
    }

    /// Sends RST_STREAM for a stream error, counted.
    pub(super) fn push_reset(&mut self, id: u32, reason: Reason) {
        // A stream already closed keeps how it closed (a reset answering a frame on it does
        // not make later frames the proxy's to ignore).
        if self.closed_by_reset(id).is_none() {
            self.remember_closed(id, true);
        }
        if reason != Reason::NoError {
            self.shared
                .metrics
                .http2_stream_errors
                .with_label_values(&[reason.name()])
                .inc();
        }
        frame::push_rst_stream(&mut self.out, id, reason);
    }

    /// Resets a stream (a stream error): RST_STREAM, and the request's body fails.
    pub(super) fn reset(&mut self, id: u32, reason: Reason) {
        self.push_reset(id, reason);
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if let Some(recv) = &s.recv {
            recv.reset(reason);
        }
        // A stream the client's error cut short cost work for nothing, as a reset of its own
        // would have: both count towards the rapid-reset limit (a failed upstream does not).
        if reason != Reason::InternalError
            && !s.is_done()
            && let Err(ConnError(reason, why)) = self.abused()
        {
            debug!(peer = %self.conn.peer, %reason, why, "HTTP/2 connection error");
            self.fail(reason);
        }
    }

    pub(super) fn return_conn_window(&mut self, octets: u32) {
        self.recv_credit += octets;
        if self.recv_credit >= CONN_WINDOW / 4 {
            frame::push_window_update(&mut self.out, 0, self.recv_credit);
            self.recv_window += i64::from(self.recv_credit);
            self.recv_credit = 0;
        }
    }

    /// Gives the client back the window of body data the proxy has read.
    fn give_credit(&mut self) {
        let mut credit = std::mem::take(&mut self.credit);
        let mut total = 0;
        for (id, octets) in credit.drain(..) {
            total += octets;
            if let Some(s) = self.streams.get_mut(&id)
                && let Some(update) = s.credit(octets, STREAM_WINDOW / 4)
            {
                frame::push_window_update(&mut self.out, id, update);
            }
        }
        self.credit = credit;
        self.return_conn_window(total);
    }

    /// Polls a stream's request future or response body, and writes what it produced.
    pub(super) fn poll_stream(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if self.out.len() > HIGH_WATER {
            // Written out first; the stream is looked at again after.
            self.deferred.push(id);
            return;
        }
        let mut window = SendWindow {
            conn: &mut self.send_window,
            max_frame: self.peer_max_frame,
        };
        match s.poll(id, &mut self.out, &mut self.scratch, &mut window) {
            Sent::Pending if s.blocked() => {
                if s.blocked_since.is_none() {
                    let now = Instant::now();
                    s.blocked_since = Some(now);
                    let deadline = now + self.shared.limits.send_timeout;
                    self.watch_until(deadline);
                }
            }
            Sent::Pending => s.blocked_since = None,
            Sent::Deferred => self.deferred.push(id),
            Sent::Done => {
                if let Some(s) = self.streams.remove(&id) {
                    if s.recv.is_some() {
                        // Answered before the client finished its body: it may stop sending.
                        self.push_reset(id, Reason::NoError);
                    } else {
                        self.remember_closed(id, false);
                    }
                }
            }
            Sent::Failed => self.reset(id, Reason::InternalError),
        }
    }
}

/// A stream's request: on the fast path's terms when it takes it, else the general path.
pub(super) async fn respond(
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    conn: Arc<Connection>,
    (fields, body): (Fields, ClientBody),
    fast: Option<Vec<u8>>,
) -> Result<Response<ProxyBody>, Infallible> {
    if let Some(head) = fast
        && let Some(resp) = super::fast::serve(&shared, &listener, &conn, &head).await
    {
        return Ok(resp);
    }
    match fields.into_request(body) {
        Ok(req) => crate::serve::general::handle(shared, listener, conn, req).await,
        // A URI that does not parse (the pseudo-headers were checked as the block arrived).
        Err(_) => Ok(local_reply::local(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"malformed request\n"),
        )),
    }
}
