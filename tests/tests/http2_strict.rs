//! RFC 9113 strictness, section by section, with raw frames (what h2spec checks and the
//! proxy's own server once got wrong): the connection preface, stream states, stream
//! dependencies, and malformed requests as stream errors.

use std::net::SocketAddr;

use rauta_tests::backend::gateway_to_backend;
use rauta_tests::harness::Workspace;
use rauta_tests::raw_h2::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PRIORITY: u8 = 2;
const PRIORITY_FLAG: u8 = 0x20;
const PROTOCOL_ERROR: u32 = 0x1;
const STREAM_CLOSED: u32 = 0x5;
const CANCEL: u32 = 0x8;

fn code(frame: &Frame) -> u32 {
    u32::from_be_bytes(frame.payload[..4].try_into().unwrap())
}

/// A request on a fresh stream is answered: the connection is still in order.
async fn still_serves(h2: &mut RawH2, stream: u32) {
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        stream,
        &get_block("/", &[]),
    )
    .await;
    assert_eq!(h2.response(stream).await, ("200".into(), b"ok".to_vec()));
}

/// A priority block: exclusive bit clear, the dependency, weight 16.
fn priority(depends_on: u32) -> Vec<u8> {
    let mut p = depends_on.to_be_bytes().to_vec();
    p.push(15);
    p
}

#[tokio::test]
async fn section_3_4_a_wrong_preface_gets_goaway() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    let addr: SocketAddr = proxy.listener(80);
    let mut io = tokio::net::TcpStream::connect(addr).await.unwrap();
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = io.read_to_end(&mut answer).await;
    // The server's SETTINGS, then GOAWAY(PROTOCOL_ERROR): not an HTTP/1.1 400.
    assert!(!answer.starts_with(b"HTTP/1.1"), "{answer:?}");
    let mut rest = &answer[..];
    let mut goaway = None;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest[3] == GOAWAY {
            goaway = Some(u32::from_be_bytes(rest[13..17].try_into().unwrap()));
        }
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert_eq!(goaway, Some(PROTOCOL_ERROR), "{answer:?}");
    // The port still speaks HTTP/1.1 to everyone else.
    let mut io = tokio::net::TcpStream::connect(addr).await.unwrap();
    io.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    io.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn section_5_1_frames_on_closed_and_half_closed_streams() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    let addr = proxy.listener(80);

    // half-closed (remote): DATA, then HEADERS, while the response is on its way.
    let mut h2 = RawH2::connect(addr, &[]).await;
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/slow", &[]),
    )
    .await;
    h2.send(DATA, 0, 1, b"late").await;
    let (rst, _) = h2.until(RST_STREAM, 1).await;
    assert_eq!(code(&rst), STREAM_CLOSED, "DATA on half-closed (remote)");
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &get_block("/slow", &[]),
    )
    .await;
    h2.send(HEADERS, END_STREAM | END_HEADERS, 3, &get_block("/", &[]))
        .await;
    let (rst, _) = h2.until(RST_STREAM, 3).await;
    assert_eq!(code(&rst), STREAM_CLOSED, "HEADERS on half-closed (remote)");
    still_serves(&mut h2, 5).await;

    // closed by both sides: DATA is a stream error.
    h2.send(DATA, 0, 5, b"late").await;
    let (rst, _) = h2.until(RST_STREAM, 5).await;
    assert_eq!(code(&rst), STREAM_CLOSED, "DATA on a closed stream");
    still_serves(&mut h2, 7).await;

    // closed by the client's reset: DATA is a stream error, HEADERS a connection error.
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        9,
        &get_block("/slow", &[]),
    )
    .await;
    h2.send(RST_STREAM, 0, 9, &CANCEL.to_be_bytes()).await;
    h2.send(DATA, 0, 9, b"late").await;
    let (rst, _) = h2.until(RST_STREAM, 9).await;
    assert_eq!(
        code(&rst),
        STREAM_CLOSED,
        "DATA after the client's RST_STREAM"
    );
    h2.send(HEADERS, END_STREAM | END_HEADERS, 9, &get_block("/", &[]))
        .await;
    assert_eq!(h2.goaway_code().await, STREAM_CLOSED);

    // Frames the client sent before it saw the proxy's reset are ignored.
    let mut h2 = RawH2::connect(addr, &[]).await;
    let upper = request_block("POST", "/count", &[("X-Upper", "1")]);
    h2.send(HEADERS, END_HEADERS, 1, &upper).await;
    let (rst, _) = h2.until(RST_STREAM, 1).await;
    assert_eq!(code(&rst), PROTOCOL_ERROR);
    h2.send(DATA, END_STREAM, 1, b"in flight").await;
    still_serves(&mut h2, 3).await;

    // section 5.1.1: a stream id lower than one already opened, never used.
    let mut h2 = RawH2::connect(addr, &[]).await;
    still_serves(&mut h2, 5).await;
    h2.send(HEADERS, END_STREAM | END_HEADERS, 3, &get_block("/", &[]))
        .await;
    assert_eq!(h2.goaway_code().await, PROTOCOL_ERROR);
}

#[tokio::test]
async fn section_5_3_1_a_stream_cannot_depend_on_itself() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    let addr = proxy.listener(80);
    let mut h2 = RawH2::connect(addr, &[]).await;
    let mut headers = priority(1);
    headers.extend_from_slice(&get_block("/", &[]));
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS | PRIORITY_FLAG,
        1,
        &headers,
    )
    .await;
    let (rst, _) = h2.until(RST_STREAM, 1).await;
    assert_eq!(code(&rst), PROTOCOL_ERROR, "HEADERS depending on itself");
    // The header block was decoded all the same: the HPACK context is intact.
    still_serves(&mut h2, 3).await;

    // PRIORITY on an open stream, depending on itself: a stream error.
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        5,
        &get_block("/slow", &[]),
    )
    .await;
    h2.send(PRIORITY, 0, 5, &priority(5)).await;
    let (rst, _) = h2.until(RST_STREAM, 5).await;
    assert_eq!(code(&rst), PROTOCOL_ERROR, "PRIORITY depending on itself");
    still_serves(&mut h2, 7).await;

    // On an idle stream there is no stream to reset: the connection ends.
    h2.send(PRIORITY, 0, 9, &priority(9)).await;
    assert_eq!(h2.goaway_code().await, PROTOCOL_ERROR);
}

#[tokio::test]
async fn section_8_malformed_requests_are_stream_errors() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    let addr = proxy.listener(80);
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "h2.example"),
        (":path", "/"),
    ];
    fn with(
        base: &[(&'static str, &'static str)],
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut fields = base.to_vec();
        fields.extend_from_slice(extra);
        fields
    }
    let without = |name: &str| -> Vec<(&str, &str)> {
        base.iter().copied().filter(|(n, _)| *n != name).collect()
    };
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("an unknown pseudo-header", with(&base, &[(":foo", "bar")])),
        (
            "a response pseudo-header",
            with(&base, &[(":status", "200")]),
        ),
        (
            "a pseudo-header after a regular field",
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                ("accept", "*/*"),
                (":authority", "h2.example"),
                (":path", "/"),
            ],
        ),
        (
            "a connection-specific field",
            with(&base, &[("connection", "keep-alive")]),
        ),
        ("TE other than trailers", with(&base, &[("te", "gzip")])),
        ("an upper-case field name", with(&base, &[("X-Upper", "1")])),
        ("an empty :path", {
            let mut f = without(":path");
            f.push((":path", ""));
            f
        }),
        ("no :method", without(":method")),
        ("no :scheme", without(":scheme")),
        ("no :path", without(":path")),
        ("two :path", with(&base, &[(":path", "/again")])),
        ("two :method", {
            let mut f = vec![(":method", "GET")];
            f.extend(base.iter().copied());
            f
        }),
    ];
    let mut h2 = RawH2::connect(addr, &[]).await;
    let mut stream = 1;
    for (what, fields) in cases {
        let mut block = Vec::new();
        for (n, v) in fields {
            field(&mut block, n, v);
        }
        h2.send(HEADERS, END_STREAM | END_HEADERS, stream, &block)
            .await;
        let (rst, seen) = h2.until(RST_STREAM, stream).await;
        assert_eq!(code(&rst), PROTOCOL_ERROR, "{what}");
        let answered = seen
            .iter()
            .find(|f| f.kind == HEADERS && f.stream == stream)
            .map(|f| status_of(&f.payload));
        assert_eq!(
            answered.as_deref(),
            Some("400"),
            "{what}: the 400 comes first"
        );
        stream += 2;
    }
    still_serves(&mut h2, stream).await;
}
