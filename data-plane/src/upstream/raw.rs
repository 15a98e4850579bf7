//! The general path's HTTP/1.1 client for requests without a body (GET and HEAD, most of
//! them): the request head is written straight onto a pooled [`RawConn`] and the response read
//! back in the same task. hyper's client would relay both through a task per connection and a
//! channel; for HTTP/2 clients, whose requests never take the HTTP/1.1 fast path, that hop was
//! a good part of the cost of a request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::{Body, Frame, SizeHint};
use hyper::ext::ReasonPhrase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::UpstreamBody;
use super::error::{ExchangeError, UpstreamError};
use super::pool::{EndpointPool, RawConn};
use crate::codec::h1::framing::{BadChunk, Framing};
use crate::codec::h1::response::{self, Head, MAX_FIELDS};
use crate::upstream::stream::RawStream;

const READ_CHUNK: usize = 8 * 1024;
/// The longest trailer section accepted (hyper's client has the same limit).
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a raw response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum RawBodyError {
    #[error("upstream: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection mid-body")]
    Truncated,
    #[error("upstream: {0}")]
    Framing(#[from] BadChunk),
    #[error("upstream: malformed trailer fields")]
    Trailers,
}

/// Whether the request can go on a raw connection: no body, and a method whose request the
/// proxy may send again when a pooled connection turns out closed.
pub fn takes(req: &Request<UpstreamBody>) -> bool {
    let empty = match req.body() {
        Either::Left(streamed) => streamed.is_end_stream(),
        Either::Right(full) => full.is_end_stream(),
    };
    empty
        && (req.method() == Method::GET || req.method() == Method::HEAD)
        && !req.headers().contains_key(CONTENT_LENGTH)
        && !req.headers().contains_key(TRANSFER_ENCODING)
}

/// Sends `req` (origin-form, Host set: see [`EndpointPool::send`]) and reads the response
/// head. A pooled connection the upstream closed meanwhile is replaced by a new one.
pub async fn send(
    pool: &Arc<EndpointPool>,
    req: Request<UpstreamBody>,
) -> Result<Response<RawBody>, UpstreamError> {
    let mut head = Vec::with_capacity(512);
    write_request_head(&req, &mut head);
    send_head(pool, &head, req.method() == Method::HEAD).await
}

/// [`send`] for a request head already written: a GET or HEAD (`head_request`) without a body.
pub async fn send_head(
    pool: &Arc<EndpointPool>,
    head: &[u8],
    head_request: bool,
) -> Result<Response<RawBody>, UpstreamError> {
    let (mut conn, mut reused) = match pool.checkout_raw() {
        Some(c) => (c, true),
        None => (pool.connect_raw().await?, false),
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match attempt(&mut conn.stream, head, &mut buf, head_request).await {
            Ok(parts) => {
                conn.count_request();
                return Ok(RawBody::response(parts, conn, buf, Arc::clone(pool)));
            }
            // Safe to send again: GET and HEAD, and nothing came back.
            Err((_, false)) if reused => {
                conn = pool.connect_raw().await?;
                reused = false;
            }
            Err((source, _)) => {
                return Err(UpstreamError::Exchange {
                    addr: pool.addr(),
                    source,
                });
            }
        }
    }
}

/// Writes the request head and reads up to the end of the response head. An error says
/// whether anything was received.
async fn attempt(
    stream: &mut RawStream,
    head: &[u8],
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<ResponseStart, (ExchangeError, bool)> {
    buf.clear();
    // A write fails when the upstream reset the connection; after a mere FIN it succeeds,
    // and the close shows as an empty read.
    // Flushed: over TLS the last record may still sit in the session until then.
    let sent = async {
        stream.write_all(head).await?;
        stream.flush().await
    };
    sent.await.map_err(|e| (e.into(), false))?;
    let mut received = false;
    loop {
        make_room(buf);
        match stream.read_buf(buf).await {
            Ok(0) => return Err((ExchangeError::Closed, received)),
            Ok(_) => received = true,
            Err(e) => return Err((e.into(), received)),
        }
        if let Some(start) = response_head(buf, head_request).map_err(|e| (e, true))? {
            return Ok(start);
        }
    }
}

/// A response head: its parts, its body's framing, and whether the connection can carry
/// another request after it.
type ResponseStart = (http::response::Parts, Framing, bool);

/// The response head's parts and framing, once `buf` holds a final response head (interim
/// responses are skipped); the head's bytes are taken out of `buf`, and the field values are
/// slices of them (no copy, no allocation per value).
fn response_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseStart>, ExchangeError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        // Where each field's name and value are in the head.
        let mut spans = [const { (0..0, 0..0) }; MAX_FIELDS];
        let message = match response::parse_message(buf, head_request, &mut fields)? {
            Head::Final(message) => message,
            Head::Interim(len) => {
                buf.advance(len);
                continue;
            }
            Head::Partial => return Ok(None),
        };
        let at = |part: &[u8]| {
            let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            Some(start..start + part.len()).filter(|r| r.end <= message.len)
        };
        for (span, field) in spans.iter_mut().zip(message.fields) {
            *span = at(field.name.as_bytes())
                .zip(at(field.value))
                .ok_or(ExchangeError::Field)?;
        }
        let status = StatusCode::from_u16(message.status).map_err(|_| ExchangeError::Field)?;
        // A reason phrase of the upstream's own goes on to HTTP/1.1 clients, as with hyper's
        // client (and on the fast path).
        let reason = message
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .and_then(|r| ReasonPhrase::try_from(r.as_bytes().to_vec()).ok());
        let (framing, reusable, len) = (message.framing, !message.upstream_closes, message.len);
        let count = message.fields.len();
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for (name, value) in spans.into_iter().take(count) {
            let name = HeaderName::from_bytes(&head[name]).map_err(|_| ExchangeError::Field)?;
            let value = HeaderValue::from_maybe_shared(head.slice(value))
                .map_err(|_| ExchangeError::Field)?;
            headers.append(name, value);
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        if let Some(reason) = reason {
            parts.extensions.insert(reason);
        }
        parts.status = status;
        parts.version = Version::HTTP_11;
        parts.headers = headers;
        return Ok(Some((parts, framing, reusable)));
    }
}

/// Room for the next read, in chunks rather than a few bytes at a time.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
}

/// `METHOD target HTTP/1.1`, then the fields as they are in the map.
fn write_request_head(req: &Request<UpstreamBody>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response body read off a raw connection, de-chunked; when it ends at a message boundary,
/// the connection goes back to the pool. Dropped early, the connection is closed.
#[derive(Debug)]
pub struct RawBody {
    conn: Option<RawConn>,
    pool: Arc<EndpointPool>,
    /// Read and not yet returned.
    buf: BytesMut,
    framing: Framing,
    /// The trailer section's bytes, as they arrive.
    trailers: Vec<u8>,
    reusable: bool,
    done: bool,
}

impl RawBody {
    fn response(
        (parts, framing, reusable): ResponseStart,
        conn: RawConn,
        buf: BytesMut,
        pool: Arc<EndpointPool>,
    ) -> Response<RawBody> {
        let mut body = RawBody {
            conn: Some(conn),
            pool,
            buf,
            framing,
            trailers: Vec::new(),
            reusable,
            done: false,
        };
        if framing == Framing::Empty {
            body.finish();
        }
        Response::from_parts(parts, body)
    }

    /// The body ended: its connection is kept if nothing past the message was read.
    fn finish(&mut self) {
        self.done = true;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && self.buf.is_empty()
        {
            self.pool.release_raw(conn);
        }
    }

    /// The body cannot be read to its end: its connection is closed, not pooled.
    fn fail<T>(&mut self, error: RawBodyError) -> Poll<Option<Result<T, RawBodyError>>> {
        self.conn = None;
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }

    /// The next frame from what is in `buf`, if it holds one.
    fn decode(&mut self) -> Result<Option<Frame<Bytes>>, RawBodyError> {
        match &mut self.framing {
            Framing::Empty => {
                self.finish();
                Ok(None)
            }
            Framing::Length(left) => {
                let take = usize::try_from(*left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
                *left -= take as u64;
                let data = self.buf.split_to(take).freeze();
                if *left == 0 {
                    self.finish();
                }
                Ok(Some(Frame::data(data)))
            }
            Framing::UntilClose => Ok(Some(Frame::data(self.buf.split().freeze()))),
            Framing::Chunked(scanner) => loop {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let in_trailers = scanner.in_trailers();
                let step = scanner.step(&self.buf)?;
                let mut consumed = self.buf.split_to(step.consumed);
                if in_trailers {
                    // Bounded as hyper's client bounds them: an upstream that never ends its
                    // trailer section must not grow this without end.
                    if self.trailers.len() + consumed.len() > MAX_TRAILER_BYTES {
                        return Err(RawBodyError::Trailers);
                    }
                    self.trailers.extend_from_slice(&consumed);
                }
                if step.done {
                    let trailers = parse_trailers(&self.trailers)?;
                    self.finish();
                    return Ok(trailers.map(Frame::trailers));
                }
                if !step.data.is_empty() {
                    consumed.advance(step.data.start);
                    return Ok(Some(Frame::data(consumed.freeze())));
                }
            },
        }
    }
}

/// The trailer section (ending with its empty line) as fields; none when it is empty.
fn parse_trailers(section: &[u8]) -> Result<Option<HeaderMap>, RawBodyError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let fields = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(RawBodyError::Trailers),
    };
    if fields.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| RawBodyError::Trailers)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| RawBodyError::Trailers)?;
        map.append(name, value);
    }
    Ok(Some(map))
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = RawBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RawBodyError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // An empty body was finished when the response was made: `done` already.
            if !this.buf.is_empty() {
                match this.decode() {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) => continue,
                    Err(e) => return this.fail(e),
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            make_room(&mut this.buf);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut this.buf
            ));
            match read {
                // The end of a body framed by the close: not reusable, so dropped.
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(RawBodyError::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(left) if !self.done => SizeHint::with_exact(left),
            _ if self.done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_becomes_parts_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
               HTTP/1.1 200 Fine\r\nX-A: 1\r\nx-a: \r\nX-B: caf\xe9\r\nContent-Length: 3\r\n\r\nabc"[..],
        );
        let (parts, framing, reusable) = response_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(
            parts.headers.get_all("x-a").iter().collect::<Vec<_>>(),
            ["1", ""]
        );
        assert_eq!(parts.headers["x-b"].as_bytes(), b"caf\xe9");
        assert_eq!(parts.headers["content-length"], "3");
        assert_eq!(
            parts.extensions.get::<ReasonPhrase>().map(|r| r.as_bytes()),
            Some(&b"Fine"[..])
        );
        assert_eq!((framing, reusable), (Framing::Length(3), true));
        assert_eq!(&buf[..], b"abc");

        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(response_head(&mut partial, false).unwrap().is_none());
        assert_eq!(
            partial.len(),
            27,
            "nothing taken until the head is complete"
        );

        let mut canonical = BytesMut::from(&b"HTTP/1.0 404 Not Found\r\n\r\n"[..]);
        let (parts, framing, reusable) = response_head(&mut canonical, false).unwrap().unwrap();
        assert!(parts.extensions.get::<ReasonPhrase>().is_none());
        assert_eq!((framing, reusable), (Framing::UntilClose, false));
    }

    #[test]
    fn trailer_sections_become_trailers() {
        assert!(parse_trailers(b"\r\n").unwrap().is_none());
        let map = parse_trailers(b"X-Sum: 12\r\ngrpc-status: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (map["x-sum"].as_bytes(), map["grpc-status"].as_bytes()),
            (&b"12"[..], &b"0"[..])
        );
        assert!(parse_trailers(b"bad line\r\n\r\n").is_err());
    }
}
