//! A raw HTTP/2 client for the tests (every frame ours to choose, so that hostile and
//! malformed ones can be sent), and HPACK encoding just good enough for it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;

/// HPACK: a literal field without indexing and with a literal name, no Huffman coding.
pub fn field(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    for s in [name, value] {
        push_int(block, s.len());
        block.extend_from_slice(s.as_bytes());
    }
}

/// An HPACK integer with a 7-bit prefix (string lengths).
pub fn push_int(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

pub fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    request_block("GET", path, extra)
}

/// A request's header block to h2.example.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", method),
        (":scheme", "http"),
        (":authority", "h2.example"),
        (":path", path),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        field(&mut block, n, v);
    }
    block
}

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// An HTTP/2 client that writes and reads raw frames.
pub struct RawH2 {
    pub io: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and SETTINGS with `settings`.
    pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> RawH2 {
        let mut io = TcpStream::connect(addr).await.unwrap();
        io.write_all(PREFACE).await.unwrap();
        let mut h2 = RawH2 {
            io,
            buf: Vec::new(),
        };
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        h2.send(SETTINGS, 0, 0, &payload).await;
        h2
    }

    pub fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        // The proxy may have closed already (that is what some cases test).
        let _ = self
            .io
            .write_all(&Self::frame_bytes(kind, flags, stream, payload))
            .await;
    }

    /// The next frame; None once the proxy closed the connection.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()),
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            self.buf.reserve(65536);
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.io.read_buf(&mut self.buf))
                    .await
                    .expect("the proxy answers within 10 s");
            if matches!(read, Ok(0) | Err(_)) {
                return None;
            }
        }
    }

    /// Frames until one of `kind` on `stream`; the others are returned too, in order.
    pub async fn until(&mut self, kind: u8, stream: u32) -> (Frame, Vec<Frame>) {
        let mut seen = Vec::new();
        loop {
            let f = self
                .frame()
                .await
                .unwrap_or_else(|| panic!("closed before frame type {kind} on stream {stream}"));
            if f.kind == kind && f.stream == stream {
                return (f, seen);
            }
            seen.push(f);
        }
    }

    /// The GOAWAY's error code, after which the proxy closes.
    pub async fn goaway_code(&mut self) -> u32 {
        let (goaway, _) = self.until(GOAWAY, 0).await;
        let code = u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap());
        while self.frame().await.is_some() {}
        code
    }

    /// A response's `:status` (the proxy encodes statuses as static-table indexes or
    /// literals without Huffman), and its body, read to END_STREAM.
    pub async fn response(&mut self, stream: u32) -> (String, Vec<u8>) {
        let (head, _) = self.until(HEADERS, stream).await;
        let status = status_of(&head.payload);
        let mut body = Vec::new();
        if head.flags & END_STREAM == 0 {
            loop {
                let (data, _) = self.until(DATA, stream).await;
                body.extend_from_slice(&data.payload);
                if data.flags & END_STREAM != 0 {
                    break;
                }
            }
        }
        (status, body)
    }
}

pub fn status_of(block: &[u8]) -> String {
    match block[0] {
        0x88 => "200".into(),
        0x89 => "204".into(),
        0x8c => "400".into(),
        0x8d => "404".into(),
        // Literal without indexing, name index 8 (:status), raw 3-digit value.
        0x08 => String::from_utf8_lossy(&block[2..5]).into_owned(),
        other => panic!("unexpected status encoding {other:#x}"),
    }
}
