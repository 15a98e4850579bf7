//! Writing the client's response head from an upstream's, on the HTTP/1.1 fast path: the
//! upstream's fields in their order and spelling, less the connection-scoped ones, with the
//! route's header changes.

use crate::codec::h1::fields::{connection_values, is, listed, push_field};
use crate::codec::h1::framing::Framing;
use crate::codec::h1::response::{BadResponse, Head, MAX_FIELDS, parse_message};
use crate::model::filters::HeaderOps;

/// A response head, already written for the client.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// The head's length in the upstream's bytes.
    pub len: usize,
    pub framing: Framing,
    /// The upstream connection can carry another request once the body has been read.
    pub reusable: bool,
    /// The client connection closes after this response.
    pub close: bool,
}

pub enum Parsed {
    Final(ResponseHead),
    /// An interim (1xx) response of this length: skipped, as hyper's client skips them.
    Interim(usize),
    Partial,
}

/// Parses the response head at the start of `data` and writes the client's head into `out`.
/// `head_request`: the request was HEAD; `close`: the client connection closes after it.
pub fn parse(
    data: &[u8],
    head_request: bool,
    close: bool,
    ops: &[&HeaderOps],
    out: &mut Vec<u8>,
) -> Result<Parsed, BadResponse> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let message = match parse_message(data, head_request, &mut fields)? {
        Head::Final(message) => message,
        Head::Interim(len) => return Ok(Parsed::Interim(len)),
        Head::Partial => return Ok(Parsed::Partial),
    };
    let close = close || message.framing == Framing::UntilClose;
    write_head(
        out,
        (message.status, message.reason),
        message.fields,
        (message.connection_lists, ops),
        close,
    );
    Ok(Parsed::Final(ResponseHead {
        status: message.status,
        len: message.len,
        framing: message.framing,
        reusable: !message.upstream_closes,
        close,
    }))
}

fn write_head(
    out: &mut Vec<u8>,
    (status, reason): (u16, Option<&str>),
    fields: &[httparse::Header<'_>],
    (connection_lists, ops): (bool, &[&HeaderOps]),
    close: bool,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    let reason = reason.filter(|r| !r.is_empty()).or_else(|| {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
    });
    out.extend_from_slice(reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection = connection_values(fields, connection_lists);
    for field in fields {
        let name = field.name;
        let dropped = is(name, "connection")
            || is(name, "keep-alive")
            || is(name, "proxy-connection")
            || is(name, "upgrade")
            || is(name, "te")
            // Framing fields stay whatever Connection lists: the body is relayed as framed.
            || (!is(name, "content-length")
                && !is(name, "transfer-encoding")
                && listed(name, &connection))
            || (!ops.is_empty() && !HeaderOps::keeps(ops, name));
        if !dropped {
            push_field(out, name.as_bytes(), field.value);
        }
    }
    push_added(out, ops);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the fields that header modifiers add (in the order they apply).
pub(crate) fn push_added(out: &mut Vec<u8>, ops: &[&HeaderOps]) {
    if ops.is_empty() {
        return;
    }
    for (name, value) in HeaderOps::added_by(ops) {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h1::framing::ChunkScanner;

    fn head(data: &[u8], head_request: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        match parse(data, head_request, false, &[], &mut out).unwrap() {
            Parsed::Final(h) => (h, String::from_utf8(out).unwrap()),
            _ => panic!("not a final response"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (h, text) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\nhello",
            false,
        );
        assert_eq!(
            (h.status, h.framing, h.reusable, h.close),
            (200, Framing::Length(5), true, false)
        );
        assert_eq!(text, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked(ChunkScanner::default()));
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Empty, "a HEAD response has no body");
        let (h, text) = head(b"HTTP/1.0 200 OK\r\n\r\n", false);
        assert_eq!(
            (h.framing, h.reusable, h.close),
            (Framing::UntilClose, false, true)
        );
        assert!(text.ends_with("connection: close\r\n\r\n"));
        let (h, _) = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
            false,
        );
        assert!(h.reusable, "HTTP/1.0 keep-alive");
        let (h, _) = head(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!h.reusable);
    }

    #[test]
    fn smuggling_shapes_and_switches_are_refused() {
        let mut out = Vec::new();
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(parse(bad, false, false, &[], &mut out).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1",
                false,
                false,
                &[],
                &mut out
            ),
            Ok(Parsed::Interim(25))
        ));
    }

    #[test]
    fn fields_named_in_connection_are_dropped_and_close_is_added() {
        let mut out = Vec::new();
        let data = b"HTTP/1.1 404 \r\nConnection: x-hop, content-length\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n";
        let Ok(Parsed::Final(h)) = parse(data, false, true, &[], &mut out) else {
            panic!("not parsed");
        };
        assert!(h.close);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nX-End: 2\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
    }
}
