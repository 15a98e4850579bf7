//! One HTTP/2 connection: frames in, requests to the request path, responses out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::MAX_CONCURRENT_STREAMS;
use super::body::{Inbox, RecvBody, StreamWaker};
use super::frame::{
    self, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, FrameHeader, HEADER_LEN, MAX_WINDOW, PREFACE, Reason,
    flag, kind, setting,
};
use super::hpack::Decoder;
use super::request::{Fields, Rejected};
use super::stream::{HIGH_WATER, Sent, Stream, write_local_reply};
use crate::limits::ClientBody;
use crate::proxy::{self, Connection, ListenerCtx, ProxyBody};
use crate::shared::{Shared, drain_started};

/// Each stream may have this much request body in flight before the proxy reads it.
const STREAM_WINDOW: u32 = 1 << 20;
/// And the connection, for all its streams.
const CONN_WINDOW: u32 = 4 << 20;
/// Output waiting for the client past this much stops reading from it.
const READ_PAUSE: usize = 1 << 20;
/// Streams reset by the client while in progress, refused, or malformed, per second, before
/// the connection is ended (CVE-2023-44487, rapid reset).
const ABUSE_PER_SECOND: u32 = 200;
const READ_CHUNK: usize = 16 * 1024;
/// Rounds of work in one poll before yielding to the runtime's other tasks.
const BUDGET: usize = 32;

pub(super) type RequestFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// Stream ids are small odd integers: a multiplicative hash spreads them for next to nothing
/// (the default hasher resists collision attacks, which a client cannot mount on its own
/// connection's few hundred streams).
#[derive(Default)]
struct IdHasher(u64);

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

type StreamMap = HashMap<u32, Stream, BuildHasherDefault<IdHasher>>;

/// A header block that continues in CONTINUATION frames.
struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// A connection error: GOAWAY with this code, then close.
#[derive(Debug)]
struct ConnError(Reason, &'static str);

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

struct Conn<IO> {
    io: IO,
    rbuf: BytesMut,
    out: Vec<u8>,
    /// How much of `out` has been written.
    out_pos: usize,
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    conn: Arc<Connection>,
    decoder: Decoder,
    streams: StreamMap,
    inbox: Arc<Inbox>,
    ready: Vec<u32>,
    credit: Vec<(u32, u32)>,
    /// Streams with more to send once the output buffer is written.
    deferred: Vec<u32>,
    /// Scratch for encoding header blocks.
    scratch: Vec<u8>,
    partial: Option<PartialBlock>,
    preface: bool,
    settings: bool,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_window: i64,
    peer_max_frame: usize,
    /// What the proxy may still send on the connection.
    send_window: i64,
    /// What the client may still send on the connection.
    recv_window: i64,
    /// Connection window taken by data the proxy is done with, not yet given back.
    recv_credit: u32,
    /// The highest stream the client opened.
    last_stream: u32,
    goaway: bool,
    fatal: bool,
    /// Output is to be written in this poll (the runtime has looked for events since).
    flush_now: bool,
    /// The poll stopped to let the runtime look for events before writing.
    yield_for_flush: bool,
    read_closed: bool,
    abuse: u32,
    abuse_since: Instant,
    idle: Pin<Box<Sleep>>,
    idle_mark: (u64, usize),
    drain: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    fn new(
        io: IO,
        prefix: Bytes,
        shared: Arc<Shared>,
        listener: Arc<ListenerCtx>,
        conn: Arc<Connection>,
        mut drain: watch::Receiver<bool>,
    ) -> Self {
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
            yield_for_flush: false,
            read_closed: false,
            abuse: 0,
            abuse_since: Instant::now(),
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            idle_mark,
            drain: Box::pin(async move { drain_started(&mut drain).await }),
            shared,
            listener,
            conn,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Turn> {
        match self.poll_turn(cx) {
            Poll::Ready(end) => Poll::Ready(Turn::End(end)),
            Poll::Pending if std::mem::take(&mut self.yield_for_flush) => Poll::Ready(Turn::Flush),
            Poll::Pending => Poll::Pending,
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
            if self.out_pos < self.out.len() {
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
        self.out.clear();
        self.out_pos = 0;
        // TLS holds the last record until flushed.
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Sends GOAWAY once: streams the client opened so far finish, no new ones start.
    fn go_away(&mut self, reason: Reason) {
        if !self.goaway {
            self.goaway = true;
            frame::push_goaway(&mut self.out, self.last_stream, reason);
        }
    }

    /// Ends the connection at once after a connection error.
    fn fail(&mut self, reason: Reason) {
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

    /// Counts a stream that cost work and gave nothing; too many in a second end the
    /// connection.
    fn abused(&mut self) -> Result<(), ConnError> {
        let now = Instant::now();
        if now.duration_since(self.abuse_since) >= Duration::from_secs(1) {
            self.abuse_since = now;
            self.abuse = 0;
        }
        self.abuse += 1;
        if self.abuse > ABUSE_PER_SECOND {
            return Err(ConnError(
                Reason::EnhanceYourCalm,
                "too many reset, refused or malformed streams",
            ));
        }
        Ok(())
    }

    /// Handles every complete frame in the read buffer.
    fn frames(&mut self) -> Result<(), ConnError> {
        if !self.preface {
            let n = self.rbuf.len().min(PREFACE.len());
            if self.rbuf[..n] != PREFACE[..n] {
                return Err(ConnError(Reason::ProtocolError, "not the HTTP/2 preface"));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.rbuf.advance(PREFACE.len());
            self.preface = true;
        }
        while self.rbuf.len() >= HEADER_LEN && !self.fatal {
            let head = FrameHeader::parse(
                self.rbuf[..HEADER_LEN]
                    .try_into()
                    .expect("slice of the header's length"),
            );
            if head.len > DEFAULT_MAX_FRAME {
                return Err(ConnError(Reason::FrameSizeError, "frame over 16384 octets"));
            }
            if self.rbuf.len() < HEADER_LEN + head.len {
                if self.rbuf.capacity() < HEADER_LEN + head.len {
                    self.rbuf.reserve(HEADER_LEN + head.len - self.rbuf.len());
                }
                break;
            }
            let mut whole = self.rbuf.split_to(HEADER_LEN + head.len);
            whole.advance(HEADER_LEN);
            if !self.settings && head.kind != kind::SETTINGS {
                return Err(ConnError(Reason::ProtocolError, "first frame not SETTINGS"));
            }
            if self.partial.is_some() && head.kind != kind::CONTINUATION {
                return Err(ConnError(Reason::ProtocolError, "header block interrupted"));
            }
            self.frame(head, whole)?;
        }
        Ok(())
    }

    fn frame(&mut self, head: FrameHeader, payload: BytesMut) -> Result<(), ConnError> {
        match head.kind {
            kind::DATA => self.data(head, payload.freeze()),
            kind::HEADERS => self.headers(head, &payload),
            kind::CONTINUATION => self.continuation(head, &payload),
            kind::RST_STREAM => self.rst_stream(head, &payload),
            kind::SETTINGS => self.settings(head, &payload),
            kind::PING => {
                if head.len != 8 {
                    return Err(ConnError(Reason::FrameSizeError, "PING not 8 octets"));
                }
                if head.stream != 0 {
                    return Err(ConnError(Reason::ProtocolError, "PING on a stream"));
                }
                if !head.has(flag::ACK) {
                    frame::push_header(&mut self.out, 8, kind::PING, flag::ACK, 0);
                    self.out.extend_from_slice(&payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::ProtocolError, "GOAWAY on a stream"));
                }
                // The client opens nothing more: finish what is open, then close.
                self.go_away(Reason::NoError);
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, &payload),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(ConnError(Reason::ProtocolError, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    self.reset(head.stream, Reason::FrameSizeError);
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError(
                Reason::ProtocolError,
                "PUSH_PROMISE from a client",
            )),
            // Unknown frame types are ignored (section 5.5).
            _ => Ok(()),
        }
    }

    fn settings(&mut self, head: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(Reason::ProtocolError, "SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            if head.len != 0 {
                return Err(ConnError(
                    Reason::FrameSizeError,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !head.len.is_multiple_of(6) {
            return Err(ConnError(
                Reason::FrameSizeError,
                "SETTINGS not a multiple of 6",
            ));
        }
        self.settings = true;
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::ProtocolError, "ENABLE_PUSH not 0 or 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(ConnError(Reason::FlowControlError, "window over 2^31-1"));
                    }
                    let delta = value - self.peer_window;
                    self.peer_window = value;
                    for (id, s) in &mut self.streams {
                        s.send_window += delta;
                        if s.send_window > MAX_WINDOW {
                            return Err(ConnError(Reason::FlowControlError, "window over 2^31-1"));
                        }
                        if delta > 0 && s.blocked() {
                            self.inbox.ready(*id);
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(
                            Reason::ProtocolError,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    // Larger frames save little and hold the connection longer per stream.
                    self.peer_max_frame = (value as usize).min(4 * DEFAULT_MAX_FRAME);
                }
                // The encoder indexes nothing, so the client's table size does not matter;
                // the proxy pushes nothing and limits nothing else the client announces.
                _ => {}
            }
        }
        frame::push_header(&mut self.out, 0, kind::SETTINGS, flag::ACK, 0);
        Ok(())
    }

    fn window_update(&mut self, head: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        if head.len != 4 {
            return Err(ConnError(
                Reason::FrameSizeError,
                "WINDOW_UPDATE not 4 octets",
            ));
        }
        let increment = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(Reason::ProtocolError, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(Reason::FlowControlError, "window over 2^31-1"));
            }
            for (id, s) in &self.streams {
                if s.blocked() {
                    self.inbox.ready(*id);
                }
            }
            return Ok(());
        }
        if head.stream > self.last_stream {
            return Err(ConnError(
                Reason::ProtocolError,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        let Some(s) = self.streams.get_mut(&head.stream) else {
            return Ok(());
        };
        if increment == 0 {
            self.reset(head.stream, Reason::ProtocolError);
            return Ok(());
        }
        s.send_window += increment;
        if s.send_window > MAX_WINDOW {
            self.reset(head.stream, Reason::FlowControlError);
        } else if s.blocked() {
            self.inbox.ready(head.stream);
        }
        Ok(())
    }

    fn rst_stream(&mut self, head: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        if head.len != 4 {
            return Err(ConnError(Reason::FrameSizeError, "RST_STREAM not 4 octets"));
        }
        if head.stream == 0 || head.stream > self.last_stream {
            return Err(ConnError(
                Reason::ProtocolError,
                "RST_STREAM on an idle stream",
            ));
        }
        let _ = payload;
        if let Some(s) = self.streams.remove(&head.stream) {
            if let Some(recv) = &s.recv {
                recv.reset(Reason::Cancel);
            }
            if !s.is_done() {
                self.abused()?;
            }
        }
        Ok(())
    }

    fn data(&mut self, head: FrameHeader, payload: Bytes) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::ProtocolError, "DATA on stream 0"));
        }
        let len = head.len as u32;
        self.recv_window -= i64::from(len);
        if self.recv_window < 0 {
            return Err(ConnError(
                Reason::FlowControlError,
                "DATA over the connection window",
            ));
        }
        let data = frame::unpadded(&head, &payload).ok_or(ConnError(
            Reason::ProtocolError,
            "padding longer than the frame",
        ))?;
        let data = payload.slice_ref(data);
        // Padding is flow-controlled but never reaches the proxy: given back at once.
        let mut give_back = len - data.len() as u32;
        let id = head.stream;
        let outcome = match self.streams.get_mut(&id) {
            Some(s) if s.recv.is_some() => s.receive(data, head.has(flag::END_STREAM), len),
            _ if id > self.last_stream => {
                return Err(ConnError(Reason::ProtocolError, "DATA on an idle stream"));
            }
            _ => Err(Reason::StreamClosed),
        };
        match outcome {
            Ok(returned) => give_back += returned,
            Err(reason) => {
                give_back = len;
                self.reset(id, reason);
            }
        }
        self.return_conn_window(give_back);
        Ok(())
    }

    fn headers(&mut self, head: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return Err(ConnError(
                Reason::ProtocolError,
                "HEADERS on an even stream",
            ));
        }
        let mut fragment = frame::unpadded(&head, payload).ok_or(ConnError(
            Reason::ProtocolError,
            "padding longer than the frame",
        ))?;
        if head.has(flag::PRIORITY) {
            fragment = fragment.get(5..).ok_or(ConnError(
                Reason::FrameSizeError,
                "HEADERS too short for PRIORITY",
            ))?;
        }
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.header_block(head.stream, end_stream, fragment);
        }
        self.partial = Some(PartialBlock {
            stream: head.stream,
            end_stream,
            block: fragment.to_vec(),
        });
        Ok(())
    }

    fn continuation(&mut self, head: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        let Some(partial) = self.partial.as_mut() else {
            return Err(ConnError(
                Reason::ProtocolError,
                "CONTINUATION without HEADERS",
            ));
        };
        if partial.stream != head.stream {
            return Err(ConnError(
                Reason::ProtocolError,
                "CONTINUATION on another stream",
            ));
        }
        partial.block.extend_from_slice(payload);
        // Twice the header limit, encoded, is more than any honest client sends.
        if partial.block.len() > 2 * self.shared.limits.max_header_bytes + DEFAULT_MAX_FRAME {
            return Err(ConnError(Reason::EnhanceYourCalm, "header block too large"));
        }
        if !head.has(flag::END_HEADERS) {
            return Ok(());
        }
        let Some(partial) = self.partial.take() else {
            return Ok(());
        };
        self.header_block(partial.stream, partial.end_stream, &partial.block)
    }

    /// A complete header block: a new request, or a request's trailers.
    fn header_block(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let trailers = id <= self.last_stream;
        let mut fields = Fields::new(&self.shared.limits, trailers);
        self.decoder
            .decode(block, |n, v| fields.field(n, v))
            .map_err(|_| ConnError(Reason::CompressionError, "undecodable header block"))?;
        if trailers {
            return self.trailers(id, end_stream, fields);
        }
        self.last_stream = id;
        if self.goaway {
            // Opened after GOAWAY: not processed; the client may retry it elsewhere.
            self.push_reset(id, Reason::RefusedStream);
            return Ok(());
        }
        if self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            self.abused()?;
            self.push_reset(id, Reason::RefusedStream);
            return Ok(());
        }
        if end_stream && fields.content_length.is_some_and(|l| l > 0) {
            fields.error = fields
                .error
                .or(Some(Rejected::Malformed("content-length without DATA")));
        }
        if let Err(rejected) = fields.check() {
            self.abused()?;
            let (status, text): (StatusCode, &[u8]) = match rejected {
                Rejected::TooLarge => (
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    b"request header fields too large\n",
                ),
                Rejected::Malformed(why) => {
                    debug!(peer = %self.conn.peer, why, "malformed HTTP/2 request");
                    (StatusCode::BAD_REQUEST, b"malformed request\n")
                }
            };
            write_local_reply(
                &mut self.out,
                &mut self.scratch,
                id,
                status,
                text,
                (self.peer_window, &mut self.send_window),
            );
            if !end_stream {
                // The client need not send the rest of the body.
                frame::push_rst_stream(&mut self.out, id, Reason::NoError);
            }
            return Ok(());
        }
        let content_length = fields.content_length;
        let head_request = fields.method() == Some(&Method::HEAD);
        let (body, sender) = if end_stream {
            (ClientBody::Empty, None)
        } else {
            let (tx, rx) = RecvBody::channel(id, Arc::clone(&self.inbox), content_length);
            (ClientBody::Http2(rx), Some(tx))
        };
        // Without a body, a request may take the fast path (off with `--http1-fast-path`).
        let mut fast = None;
        if end_stream && self.shared.http1_fast_path {
            let mut head = Vec::with_capacity(256);
            if fields.http1_head(&mut head) {
                fast = Some(head);
            }
        }
        let future: RequestFuture = Box::pin(respond(
            Arc::clone(&self.shared),
            Arc::clone(&self.listener),
            Arc::clone(&self.conn),
            (fields, body),
            fast,
        ));
        let waker = Waker::from(Arc::new(StreamWaker {
            stream: id,
            inbox: Arc::clone(&self.inbox),
        }));
        let stream = Stream::new(
            future,
            waker,
            self.peer_window,
            sender.map(|tx| (tx, i64::from(STREAM_WINDOW), content_length)),
            head_request,
        );
        self.streams.insert(id, stream);
        self.poll_stream(id);
        Ok(())
    }

    fn trailers(&mut self, id: u32, end_stream: bool, fields: Fields) -> Result<(), ConnError> {
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream already closed (reset, or answered and gone): nothing to deliver.
            return Ok(());
        };
        // Trailers end the stream, and carry no pseudo-headers.
        let outcome = match fields.into_trailers() {
            Ok(trailers) if end_stream => s.receive_trailers(trailers),
            _ => Err(Reason::ProtocolError),
        };
        if let Err(reason) = outcome {
            self.reset(id, reason);
        }
        Ok(())
    }

    /// Sends RST_STREAM for a stream error, counted.
    fn push_reset(&mut self, id: u32, reason: Reason) {
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
    fn reset(&mut self, id: u32, reason: Reason) {
        self.push_reset(id, reason);
        if let Some(s) = self.streams.remove(&id)
            && let Some(recv) = &s.recv
        {
            recv.reset(reason);
        }
    }

    fn return_conn_window(&mut self, octets: u32) {
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
    fn poll_stream(&mut self, id: u32) {
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
            Sent::Pending => {}
            Sent::Deferred => self.deferred.push(id),
            Sent::Done => {
                if let Some(s) = self.streams.remove(&id)
                    && s.recv.is_some()
                {
                    // Answered before the client finished its body: it may stop sending.
                    frame::push_rst_stream(&mut self.out, id, Reason::NoError);
                }
            }
            Sent::Failed => self.reset(id, Reason::InternalError),
        }
    }
}

/// A stream's request: on the fast path's terms when it takes it, else the general path.
async fn respond(
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
        Ok(req) => proxy::handle(shared, listener, conn, req).await,
        // A URI that does not parse (the pseudo-headers were checked as the block arrived).
        Err(_) => Ok(proxy::local(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"malformed request\n"),
        )),
    }
}

/// The connection's part in sending DATA.
pub(super) struct SendWindow<'a> {
    pub conn: &'a mut i64,
    pub max_frame: usize,
}

/// Frames for fields the proxy itself sends.
pub(super) fn push_fields(out: &mut Vec<u8>, id: u32, block: &[u8], end_stream: bool, max: usize) {
    let mut chunks = block.chunks(max).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    frame::push_header(out, first.len(), kind::HEADERS, flags, id);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        frame::push_header(out, chunk.len(), kind::CONTINUATION, flags, id);
        out.extend_from_slice(chunk);
    }
}

/// Trailers or a response head with no fields left out: for [`push_fields`].
pub(super) fn encode_headers(scratch: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        // Connection-specific fields are not HTTP/2's (RFC 9113 section 8.2.2).
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) {
            continue;
        }
        super::hpack::encode_field(scratch, name.as_str().as_bytes(), value.as_bytes());
    }
}
