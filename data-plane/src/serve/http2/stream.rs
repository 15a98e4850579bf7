//! One stream of an HTTP/2 connection: its request's future, then its response body, sent
//! within the flow-control windows; and the request body's side of the windows.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::StatusCode;
use http::header::{CONTENT_LENGTH, DATE, HeaderMap};
use hyper::body::Body;
use tracing::debug;

use crate::body::h2::BodySender;
use crate::codec::h2::frame::{self, Reason, flag, kind};
use crate::codec::h2::hpack;
use crate::serve::local_reply::ProxyBody;
use http::Response;
use std::convert::Infallible;

pub(super) type RequestFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// The connection's part in sending DATA.
pub(super) struct SendWindow<'a> {
    pub conn: &'a mut i64,
    pub max_frame: usize,
}

/// Output past this much is written out before a body gives more.
pub(super) const HIGH_WATER: usize = 256 * 1024;

enum Stage {
    Waiting(RequestFuture),
    Body(ProxyBody),
    Done,
}

/// What polling a stream came to.
pub(super) enum Sent {
    Pending,
    /// Output is past the high-water mark: to be polled again once it is written.
    Deferred,
    /// The response went out whole.
    Done,
    /// The response body failed: the stream is to be reset.
    Failed,
}

pub(super) struct Stream {
    stage: Stage,
    waker: Waker,
    /// What the proxy may still send on this stream.
    pub send_window: i64,
    /// DATA held back for lack of window, and whether it ends the stream.
    pending: Option<(Bytes, bool)>,
    /// Set while the client may still send on the stream.
    pub recv: Option<BodySender>,
    /// What the client may still send on this stream.
    recv_window: i64,
    recv_credit: u32,
    expected: Option<u64>,
    received: u64,
    /// A HEAD request: its response's size says nothing about a body.
    head_request: bool,
    /// Since when the stream has waited for window with data to send (reset past the send
    /// timeout: a client that grants no window would hold the upstream request for ever).
    pub blocked_since: Option<tokio::time::Instant>,
}

impl Stream {
    pub fn new(
        future: RequestFuture,
        waker: Waker,
        send_window: i64,
        recv: Option<(BodySender, i64, Option<u64>)>,
        head_request: bool,
    ) -> Self {
        let (recv, recv_window, expected) = match recv {
            Some((tx, window, expected)) => (Some(tx), window, expected),
            None => (None, 0, None),
        };
        Stream {
            stage: Stage::Waiting(future),
            waker,
            send_window,
            pending: None,
            recv,
            recv_window,
            recv_credit: 0,
            expected,
            received: 0,
            head_request,
            blocked_since: None,
        }
    }

    /// Waiting for window to send what it has.
    pub fn blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// The response went out whole.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// A DATA frame of `frame_len` octets (padding included) carrying `data`. Ok: how much
    /// connection window to give back at once (data nobody will read); Err: the stream error.
    pub fn receive(&mut self, data: Bytes, end: bool, frame_len: u32) -> Result<u32, Reason> {
        self.recv_window -= i64::from(frame_len);
        if self.recv_window < 0 {
            return Err(Reason::FlowControlError);
        }
        self.received += data.len() as u64;
        if self.expected.is_some_and(|e| self.received > e) {
            return Err(Reason::ProtocolError);
        }
        if end && self.expected.is_some_and(|e| e != self.received) {
            return Err(Reason::ProtocolError);
        }
        let Some(recv) = &self.recv else {
            return Err(Reason::StreamClosed);
        };
        let len = data.len() as u32;
        let mut unread = 0;
        if len > 0 && !recv.data(data) {
            unread = len;
        }
        if end {
            recv.end();
            self.recv = None;
        }
        Ok(unread)
    }

    pub fn receive_trailers(&mut self, trailers: HeaderMap) -> Result<(), Reason> {
        if self.expected.is_some_and(|e| e != self.received) {
            return Err(Reason::ProtocolError);
        }
        let Some(recv) = self.recv.take() else {
            return Err(Reason::StreamClosed);
        };
        recv.trailers(trailers);
        Ok(())
    }

    /// Body octets the proxy read; a window update to send once enough has gathered.
    pub fn credit(&mut self, octets: u32, threshold: u32) -> Option<u32> {
        self.recv.as_ref()?;
        self.recv_credit += octets;
        if self.recv_credit < threshold {
            return None;
        }
        self.recv_window += i64::from(self.recv_credit);
        Some(std::mem::take(&mut self.recv_credit))
    }

    /// Moves the response along as far as it can go now.
    pub fn poll(
        &mut self,
        id: u32,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        window: &mut SendWindow<'_>,
    ) -> Sent {
        let mut cx = Context::from_waker(&self.waker);
        loop {
            match &mut self.stage {
                Stage::Waiting(future) => {
                    let resp = match future.as_mut().poll(&mut cx) {
                        Poll::Ready(Ok(resp)) => resp,
                        Poll::Pending => return Sent::Pending,
                    };
                    let (parts, body) = resp.into_parts();
                    // A response to HEAD has no content, whatever the body holds.
                    let end = body.is_end_stream() || self.head_request;
                    scratch.clear();
                    hpack::encode_status(scratch, parts.status.as_u16());
                    encode_headers(scratch, &parts.headers);
                    // No length for HEAD, nor where a body is forbidden (RFC 9110 8.6).
                    let bodiless = matches!(parts.status.as_u16(), 100..=199 | 204 | 304);
                    if !end
                        && !bodiless
                        && !parts.headers.contains_key(CONTENT_LENGTH)
                        && let Some(len) = body.size_hint().exact()
                    {
                        hpack::encode_field(scratch, b"content-length", len.to_string().as_bytes());
                    }
                    if !parts.headers.contains_key(DATE) {
                        with_date(|date| hpack::encode_field(scratch, b"date", date));
                    }
                    push_fields(out, id, scratch, end, window.max_frame);
                    if end {
                        self.stage = Stage::Done;
                        return Sent::Done;
                    }
                    self.stage = Stage::Body(body);
                }
                Stage::Body(body) => {
                    // DATA held back for window first, else the body's next frame.
                    let (data, end) = match self.pending.take() {
                        Some(held) => held,
                        None => {
                            if out.len() > HIGH_WATER {
                                return Sent::Deferred;
                            }
                            match Pin::new(&mut *body).poll_frame(&mut cx) {
                                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                                    Ok(data) => (data, body.is_end_stream()),
                                    Err(frame) => {
                                        if let Ok(trailers) = frame.into_trailers() {
                                            scratch.clear();
                                            encode_headers(scratch, &trailers);
                                            push_fields(out, id, scratch, true, window.max_frame);
                                            self.stage = Stage::Done;
                                            return Sent::Done;
                                        }
                                        continue;
                                    }
                                },
                                Poll::Ready(None) => {
                                    frame::push_header(out, 0, kind::DATA, flag::END_STREAM, id);
                                    self.stage = Stage::Done;
                                    return Sent::Done;
                                }
                                Poll::Ready(Some(Err(err))) => {
                                    debug!(stream = id, %err, "response body failed");
                                    return Sent::Failed;
                                }
                                Poll::Pending => return Sent::Pending,
                            }
                        }
                    };
                    let stream = StreamWindow {
                        window: &mut self.send_window,
                        pending: &mut self.pending,
                    };
                    if !send_data(stream, id, out, window, data, end) {
                        return Sent::Pending;
                    }
                    if end {
                        self.stage = Stage::Done;
                        return Sent::Done;
                    }
                }
                Stage::Done => return Sent::Done,
            }
        }
    }
}

/// A stream's side of sending DATA.
struct StreamWindow<'a> {
    window: &'a mut i64,
    pending: &'a mut Option<(Bytes, bool)>,
}

/// Writes DATA frames as far as both windows allow; what does not fit is held in the
/// stream's `pending`. True when everything went.
fn send_data(
    stream: StreamWindow<'_>,
    id: u32,
    out: &mut Vec<u8>,
    conn: &mut SendWindow<'_>,
    mut data: Bytes,
    end: bool,
) -> bool {
    loop {
        if data.is_empty() {
            if end {
                frame::push_header(out, 0, kind::DATA, flag::END_STREAM, id);
            }
            return true;
        }
        let allowed = (*stream.window).min(*conn.conn).min(conn.max_frame as i64);
        if allowed <= 0 {
            *stream.pending = Some((data, end));
            return false;
        }
        let n = (allowed as usize).min(data.len());
        let last = end && n == data.len();
        frame::push_header(
            out,
            n,
            kind::DATA,
            if last { flag::END_STREAM } else { 0 },
            id,
        );
        out.extend_from_slice(&data[..n]);
        data.advance(n);
        *stream.window -= n as i64;
        *conn.conn -= n as i64;
        if data.is_empty() && (last || !end) {
            return true;
        }
    }
}

/// An answer the connection makes itself (a malformed or oversized request head): no
/// stream is opened for it. The text goes only if the client's windows take it.
pub(super) fn write_local_reply(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    id: u32,
    status: StatusCode,
    text: &[u8],
    windows: (i64, &mut i64),
) {
    let (stream_window, conn_window) = windows;
    let fits = (text.len() as i64) <= stream_window.min(*conn_window);
    let body: &[u8] = if fits { text } else { b"" };
    scratch.clear();
    hpack::encode_status(scratch, status.as_u16());
    hpack::encode_field(scratch, b"content-type", b"text/plain");
    hpack::encode_field(
        scratch,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    with_date(|date| hpack::encode_field(scratch, b"date", date));
    push_fields(out, id, scratch, body.is_empty(), frame::DEFAULT_MAX_FRAME);
    if !body.is_empty() {
        frame::push_header(out, body.len(), kind::DATA, flag::END_STREAM, id);
        out.extend_from_slice(body);
        *conn_window -= body.len() as i64;
    }
}

/// The IMF-fixdate of the current second, formatted once per second per thread.
fn with_date<T>(f: impl FnOnce(&[u8]) -> T) -> T {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != now {
            let ts =
                jiff::Timestamp::from_second(now as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            cached.1 = ts.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
            cached.0 = now;
        }
        f(cached.1.as_bytes())
    })
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
        hpack::encode_field(scratch, name.as_str().as_bytes(), value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_waits_for_window_and_splits_by_frame_size() {
        let mut send_window = 20_000i64;
        let mut pending = None;
        let mut conn = 100_000i64;
        let mut sw = SendWindow {
            conn: &mut conn,
            max_frame: 16_384,
        };
        let mut out = Vec::new();
        let data = Bytes::from(vec![7u8; 30_000]);
        let all = send_data(
            StreamWindow {
                window: &mut send_window,
                pending: &mut pending,
            },
            1,
            &mut out,
            &mut sw,
            data,
            true,
        );
        assert!(!all);
        // 16384 + 3616 sent, in two frames; 10000 held, with the end of the stream.
        assert_eq!(out.len(), 9 + 16_384 + 9 + 3_616);
        assert_eq!(out[4], 0, "no END_STREAM yet");
        assert_eq!(send_window, 0);
        assert_eq!(*sw.conn, 80_000);
        let (held, end) = pending.take().unwrap();
        assert_eq!((held.len(), end), (10_000, true));
        send_window = 10_000;
        out.clear();
        assert!(send_data(
            StreamWindow {
                window: &mut send_window,
                pending: &mut pending
            },
            1,
            &mut out,
            &mut sw,
            held,
            end
        ));
        assert_eq!(out.len(), 9 + 10_000);
        assert_eq!(out[4], flag::END_STREAM);
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        with_date(|d| {
            let d = std::str::from_utf8(d).unwrap();
            assert_eq!(d.len(), 29, "{d}");
            assert!(d.ends_with(" GMT") && d.as_bytes()[3] == b',', "{d}");
        });
    }
}
