//! The receiving side of a connection: frames as they arrive, by type, with the checks
//! RFC 9113 asks of a server.

use std::sync::Arc;
use std::task::Waker;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use super::MAX_CONCURRENT_STREAMS;
use super::conn::{Conn, ConnError, PartialBlock, STREAM_WINDOW, respond};
use super::flood::Flood;
use super::request::{Fields, Rejected};
use super::stream::{RequestFuture, Stream, write_local_reply};
use crate::body::client::ClientBody;
use crate::body::h2::{RecvBody, StreamWaker};
use crate::codec::h2::frame::{
    self, DEFAULT_MAX_FRAME, FrameHeader, HEADER_LEN, MAX_WINDOW, PREFACE, Reason, flag, kind,
    setting,
};

/// The stream a priority block (HEADERS' or PRIORITY's) makes the frame's stream depend on.
fn dependency(priority: &[u8]) -> u32 {
    u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]]) & 0x7fff_ffff
}

/// An empty DATA, HEADERS or CONTINUATION frame that ends neither its stream nor its block.
fn carries_nothing(head: &FrameHeader) -> bool {
    head.len == 0
        && match head.kind {
            kind::DATA => !head.has(flag::END_STREAM),
            kind::HEADERS | kind::CONTINUATION => !head.has(flag::END_HEADERS),
            _ => false,
        }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Handles every complete frame in the read buffer.
    pub(super) fn frames(&mut self) -> Result<(), ConnError> {
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
            if carries_nothing(&head) {
                self.flood_check(Flood::Empty)?;
            } else {
                self.empty_frames = 0;
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
                let error = if head.len != 5 {
                    Some((Reason::FrameSizeError, "PRIORITY not 5 octets"))
                } else if dependency(&payload) == head.stream {
                    Some((Reason::ProtocolError, "stream depends on itself"))
                } else {
                    None
                };
                if let Some((reason, why)) = error {
                    // RST_STREAM is not for idle streams.
                    if head.stream > self.last_stream {
                        return Err(ConnError(reason, why));
                    }
                    self.reset(head.stream, reason);
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
        self.flood_check(Flood::Settings)?;
        // Only the last window size of a frame counts: applying each would walk every open
        // stream per entry, and a frame of 2,730 entries would cost that many walks.
        let mut window = None;
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::ProtocolError, "ENABLE_PUSH not 0 or 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(ConnError(Reason::FlowControlError, "window over 2^31-1"));
                    }
                    window = Some(i64::from(value));
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
        if let Some(value) = window {
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
            for (id, s) in &mut self.streams {
                if s.blocked() {
                    // Window granted is progress: the stall is timed afresh.
                    s.blocked_since = None;
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
            s.blocked_since = None;
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
            self.remember_closed(head.stream, false);
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
        let data_len = data.len() as u32;
        // Padding is flow-controlled but never reaches the proxy: given back at once.
        let mut give_back = len - data.len() as u32;
        let id = head.stream;
        // Looked up only for streams that are gone (the scan is not for every DATA frame).
        let closed_known =
            !self.streams.contains_key(&id) && self.closed_by_reset(id) == Some(false);
        let outcome = match self.streams.get_mut(&id) {
            Some(s) if s.recv.is_some() => s.receive(data, head.has(flag::END_STREAM), len),
            // Half-closed by the client's END_STREAM: it may send nothing more.
            Some(_) => Err(Reason::StreamClosed),
            None if id > self.last_stream => {
                return Err(ConnError(Reason::ProtocolError, "DATA on an idle stream"));
            }
            // Closed by both sides, or reset by the client: it knows it may send nothing
            // (RFC 9113 section 6.1).
            None if closed_known => {
                self.abused()?;
                Err(Reason::StreamClosed)
            }
            // A stream the proxy reset (or closed long ago): frames still in flight are
            // ignored (section 5.4.2).
            None => Ok(len),
        };
        match outcome {
            Ok(returned) => {
                give_back += returned;
                // Padding goes back to the stream's window too, or uploads that pad would
                // run it dry.
                let padding = len - data_len;
                if padding > 0
                    && let Some(s) = self.streams.get_mut(&id)
                    && let Some(update) = s.credit(padding, 0)
                {
                    frame::push_window_update(&mut self.out, id, update);
                }
            }
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
        let mut self_dependent = false;
        if head.has(flag::PRIORITY) {
            let priority = fragment.get(..5).ok_or(ConnError(
                Reason::FrameSizeError,
                "HEADERS too short for PRIORITY",
            ))?;
            self_dependent = dependency(priority) == head.stream;
            fragment = &fragment[5..];
        }
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.header_block(head.stream, end_stream, self_dependent, fragment);
        }
        let deadline = Instant::now() + self.shared.limits.header_timeout;
        self.partial = Some(PartialBlock {
            stream: head.stream,
            end_stream,
            self_dependent,
            block: fragment.to_vec(),
            deadline,
        });
        self.watch_until(deadline);
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
        self.header_block(
            partial.stream,
            partial.end_stream,
            partial.self_dependent,
            &partial.block,
        )
    }

    /// A complete header block: a new request, or a request's trailers.
    fn header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        self_dependent: bool,
        block: &[u8],
    ) -> Result<(), ConnError> {
        let trailers = id <= self.last_stream;
        let mut fields = Fields::new(&self.shared.limits, trailers);
        // Decoded whatever else is wrong: the HPACK context must stay in step.
        self.decoder
            .decode(block, |n, v| fields.field(n, v))
            .map_err(|_| ConnError(Reason::CompressionError, "undecodable header block"))?;
        if self_dependent && trailers {
            self.reset(id, Reason::ProtocolError);
            return Ok(());
        }
        if trailers {
            return self.trailers(id, end_stream, fields);
        }
        if self_dependent {
            fields.error = Some(Rejected::Malformed("stream depends on itself"));
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
            match rejected {
                // A malformed request is a stream error (RFC 9113 section 8.1.1): the 400
                // says why, the reset that it was the protocol.
                Rejected::Malformed(_) => self.push_reset(id, Reason::ProtocolError),
                // The client need not send the rest of the body.
                Rejected::TooLarge if !end_stream => self.push_reset(id, Reason::NoError),
                Rejected::TooLarge => self.remember_closed(id, false),
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
            return match (self.closed_by_reset(id), fields.pseudo_seen) {
                // Closed by both sides or by the client's reset (section 5.1).
                (Some(false), _) => Err(ConnError(
                    Reason::StreamClosed,
                    "HEADERS on a closed stream",
                )),
                // A new request on a stream id already used (section 5.1.1).
                (_, true) => Err(ConnError(
                    Reason::ProtocolError,
                    "HEADERS on a used stream id",
                )),
                // Trailers of a stream the proxy reset, sent before the client knew.
                _ => Ok(()),
            };
        };
        if s.recv.is_none() {
            // Half-closed (remote): the client ended the stream already.
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        }
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
}
