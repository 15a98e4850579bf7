//! Reading a response head: its status, fields, and how its body is framed.

use super::fields::{is, tokens};
use super::framing::{ChunkScanner, Framing};

/// Header fields parsed per response; more is refused, as hyper's client refuses them.
pub const MAX_FIELDS: usize = 100;
/// The longest response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What is wrong with an upstream's response.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("conflicting message length")]
    Length,
    #[error("protocol switch nobody asked for")]
    Switch,
}

/// A final response head as the upstream sent it, with what its framing means.
#[derive(Debug)]
pub struct Message<'h, 'b> {
    pub status: u16,
    pub reason: Option<&'b str>,
    /// The head's length in the upstream's bytes.
    pub len: usize,
    pub fields: &'h [httparse::Header<'b>],
    pub framing: Framing,
    /// The upstream closes the connection after this response.
    pub upstream_closes: bool,
    /// Connection lists field names besides close and keep-alive.
    pub connection_lists: bool,
}

/// A response head read from an upstream.
pub enum Head<'h, 'b> {
    Final(Message<'h, 'b>),
    /// An interim (1xx) response of this length: skipped, as hyper's client skips them.
    Interim(usize),
    Partial,
}

/// Parses the response head at the start of `data` (`fields` holds its field lines), and
/// works out how its body is framed (RFC 9112 section 6.3). `head_request`: the request was
/// HEAD, so no body follows whatever the fields say.
pub fn parse_message<'h, 'b>(
    data: &'b [u8],
    head_request: bool,
    fields: &'h mut [httparse::Header<'b>],
) -> Result<Head<'h, 'b>, BadResponse> {
    let mut resp = httparse::Response::new(fields);
    let len = match resp.parse(data)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if data.len() > MAX_RESPONSE_HEAD => {
            return Err(BadResponse::TooLarge);
        }
        httparse::Status::Partial => return Ok(Head::Partial),
    };
    let httparse::Response {
        code,
        version,
        reason,
        headers: fields,
    } = resp;
    let (Some(status), Some(version)) = (code, version) else {
        return Ok(Head::Partial);
    };
    match status {
        101 => return Err(BadResponse::Switch),
        100..=199 => return Ok(Head::Interim(len)),
        _ => {}
    }
    let mut chunked = None;
    let mut length = None;
    let mut close_token = false;
    let mut keep_alive_token = false;
    let mut connection_lists = false;
    for field in fields.iter() {
        if is(field.name, "transfer-encoding") {
            chunked = tokens(field.value)
                .last()
                .map(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if is(field.name, "content-length") {
            let parsed: Option<u64> = std::str::from_utf8(field.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok());
            match (length, parsed) {
                (_, None) => return Err(BadResponse::Length),
                (Some(a), Some(b)) if a != b => return Err(BadResponse::Length),
                (_, parsed) => length = parsed,
            }
        } else if is(field.name, "connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close_token = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.is_empty() {
                    connection_lists = true;
                }
            }
        }
    }
    // A message with both is how requests get smuggled (RFC 9112 section 6.3).
    if chunked.is_some() && length.is_some() {
        return Err(BadResponse::Length);
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(ChunkScanner::default()),
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    Ok(Head::Final(Message {
        status,
        reason,
        len,
        fields,
        framing,
        // HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 keeps alive unless asked to
        // close; a body that ends with the connection ends it.
        upstream_closes: close_token
            || (version == 0 && !keep_alive_token)
            || framing == Framing::UntilClose,
        connection_lists,
    }))
}
