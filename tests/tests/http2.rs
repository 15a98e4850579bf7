//! The proxy's own HTTP/2 server end to end: a raw frame client (every frame ours to choose)
//! and real HTTP/2 clients (hyper's, curl's) against the real proxy, in front of an HTTP/1.1
//! backend in this process. Settings, flow control both ways with tiny and large windows,
//! malformed and oversized requests answered on their stream, protocol errors answered with
//! GOAWAY, the floods the server cuts off (rapid reset, CONTINUATION), and refused streams.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rauta_tests::backend::start_backend;
use rauta_tests::harness::{Proxy, Workspace, start_gateway};
use rauta_tests::manifests::{http_route, on_http_gateway, service};
use rauta_tests::raw_h2::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn gateway(ws: &Workspace) -> (rauta_tests::harness::Controller, Proxy) {
    let backend = start_backend().await;
    let rule = "  - backendRefs: [{name: plain, port: 8080}]\n";
    ws.write(
        "all.yaml",
        &on_http_gateway(&[
            service("apps", "plain", &[backend]),
            http_route("apps", "all", ("infra", "gw"), &["h2.example"], rule),
        ]),
    );
    start_gateway(ws, &[]).await
}

#[tokio::test]
async fn settings_ping_and_requests_on_the_raw_protocol() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway(&ws).await;
    let mut h2 = RawH2::connect(proxy.listener(80), &[]).await;
    // The proxy's SETTINGS: 256 streams, a 1 MiB stream window, the header limit.
    let settings = h2.frame().await.unwrap();
    assert_eq!((settings.kind, settings.flags), (SETTINGS, 0));
    let values: Vec<(u16, u32)> = settings
        .payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes(c[2..6].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(values, [(3, 256), (4, 1 << 20), (6, 65536)]);
    let (ack, _) = h2.until(SETTINGS, 0).await;
    assert_eq!(ack.flags, 1, "our SETTINGS acknowledged");

    h2.send(PING, 0, 0, b"12345678").await;
    let (pong, _) = h2.until(PING, 0).await;
    assert_eq!((pong.flags, pong.payload.as_slice()), (1, &b"12345678"[..]));

    h2.send(HEADERS, END_STREAM | END_HEADERS, 1, &get_block("/", &[]))
        .await;
    assert_eq!(h2.response(1).await, ("200".into(), b"ok".to_vec()));

    // Malformed on its own stream: 400, and the connection goes on.
    let upper = get_block("/", &[("X-Upper", "1")]);
    h2.send(HEADERS, END_STREAM | END_HEADERS, 3, &upper).await;
    assert_eq!(h2.response(3).await.0, "400");
    let mut no_path = Vec::new();
    field(&mut no_path, ":method", "GET");
    field(&mut no_path, ":scheme", "http");
    h2.send(HEADERS, END_STREAM | END_HEADERS, 5, &no_path)
        .await;
    assert_eq!(h2.response(5).await.0, "400");
    let smuggled = get_block("/", &[("transfer-encoding", "chunked")]);
    h2.send(HEADERS, END_STREAM | END_HEADERS, 7, &smuggled)
        .await;
    assert_eq!(h2.response(7).await.0, "400");

    // A header list over the limit, in a HEADERS and CONTINUATIONs: 431.
    let big = "v".repeat(70_000);
    let block = get_block("/", &[("x-big", &big)]);
    let mut chunks = block.chunks(16_384).peekable();
    h2.send(HEADERS, END_STREAM, 9, chunks.next().unwrap())
        .await;
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        h2.send(CONTINUATION, flags, 9, chunk).await;
    }
    assert_eq!(h2.response(9).await.0, "431");

    // A request body, with a content-length that does not match it: the stream is reset.
    let post = request_block("POST", "/count", &[("content-length", "10")]);
    h2.send(HEADERS, END_HEADERS, 11, &post).await;
    h2.send(DATA, END_STREAM, 11, b"short").await;
    let (rst, _) = h2.until(RST_STREAM, 11).await;
    assert_eq!(rst.payload, 1u32.to_be_bytes(), "PROTOCOL_ERROR");

    // The same with a matching length is counted by the backend.
    h2.send(HEADERS, END_HEADERS, 13, &post).await;
    h2.send(DATA, 0, 13, b"01234").await;
    h2.send(DATA, END_STREAM, 13, b"56789").await;
    assert_eq!(h2.response(13).await, ("200".into(), b"10:525".to_vec()));

    // Padding counts against the windows and is given back on both: 5000 DATA frames of one
    // octet and 255 of padding each (1.25 MiB of padding, over the 1 MiB stream window).
    let padded_post = request_block("POST", "/count", &[]);
    h2.send(HEADERS, END_HEADERS, 17, &padded_post).await;
    let mut frames = Vec::new();
    for i in 0..5000 {
        let mut payload = vec![255u8, b'a'];
        payload.extend_from_slice(&[0; 255]);
        let flags = 0x8 | if i == 4999 { END_STREAM } else { 0 };
        frames.extend(RawH2::frame_bytes(DATA, flags, 17, &payload));
    }
    h2.io.write_all(&frames).await.unwrap();
    assert_eq!(
        h2.response(17).await,
        ("200".into(), b"5000:485000".to_vec())
    );

    // A request line smuggled in :path, which would become the upstream's request line.
    let injected = get_block("/ HTTP/1.1\r\nhost: other.example\r\n\r\n", &[]);
    h2.send(HEADERS, END_STREAM | END_HEADERS, 19, &injected)
        .await;
    assert_eq!(h2.response(19).await.0, "400");

    // A request on a stream id already used ends the connection.
    h2.send(HEADERS, END_STREAM | END_HEADERS, 3, &get_block("/", &[]))
        .await;
    assert_eq!(h2.goaway_code().await, 0x1, "PROTOCOL_ERROR");
}

#[tokio::test]
async fn the_client_goaway_is_answered() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway(&ws).await;
    let mut h2 = RawH2::connect(proxy.listener(80), &[]).await;
    h2.send(HEADERS, END_STREAM | END_HEADERS, 1, &get_block("/", &[]))
        .await;
    assert_eq!(h2.response(1).await, ("200".into(), b"ok".to_vec()));

    // The client's GOAWAY: the proxy answers GOAWAY too, and closes.
    h2.send(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]).await;
    assert_eq!(h2.goaway_code().await, 0);
}

#[tokio::test]
async fn flow_control_holds_both_ways() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway(&ws).await;

    // A 100-octet stream window: the proxy sends 100 octets, then waits for WINDOW_UPDATE.
    let mut h2 = RawH2::connect(proxy.listener(80), &[(4, 100)]).await;
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/big?n=250", &[]),
    )
    .await;
    let (head, _) = h2.until(HEADERS, 1).await;
    assert_eq!(status_of(&head.payload), "200");
    let (first, _) = h2.until(DATA, 1).await;
    assert_eq!((first.payload.len(), first.flags), (100, 0));
    let nothing = tokio::time::timeout(Duration::from_millis(300), h2.frame()).await;
    assert!(nothing.is_err(), "nothing more sent without window");
    h2.send(WINDOW_UPDATE, 0, 1, &200u32.to_be_bytes()).await;
    let mut rest = Vec::new();
    loop {
        let (data, _) = h2.until(DATA, 1).await;
        rest.extend_from_slice(&data.payload);
        if data.flags & END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(first.payload.len() + rest.len(), 250);
    assert!(rest.starts_with(b"wxyz"), "continues where it stopped");

    // Real clients: hyper's with a 16 KiB stream window, a 3 MB download and a 3 MB upload (over the
    // proxy's 1 MiB stream and 4 MiB connection windows, so both need WINDOW_UPDATEs).
    let tcp = TcpStream::connect(proxy.listener(80)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16_384)
        .initial_connection_window_size(65_535)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let n = 3_000_000;
    let req = http::Request::get(format!("http://h2.example/big?n={n}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), n);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8)
    );

    let upload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    for _ in 0..2 {
        let req = http::Request::post("http://h2.example/count")
            .body(Full::new(Bytes::from(upload.clone())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("{n}:{sum}").as_bytes());
    }
}

#[tokio::test]
async fn protocol_errors_end_the_connection_with_goaway() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway(&ws).await;
    let addr = proxy.listener(80);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "DATA on stream 0",
            RawH2::frame_bytes(DATA, 0, 0, b"x"),
            0x1,
        ),
        (
            "HEADERS on an even stream",
            RawH2::frame_bytes(HEADERS, END_STREAM | END_HEADERS, 2, &get_block("/", &[])),
            0x1,
        ),
        (
            "a frame over 16384 octets",
            RawH2::frame_bytes(PING, 0, 0, &[0; 16_385]),
            0x6,
        ),
        (
            "the connection window over 2^31-1",
            RawH2::frame_bytes(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            0x3,
        ),
        (
            "an undecodable header block",
            RawH2::frame_bytes(HEADERS, END_STREAM | END_HEADERS, 1, &[0x80]),
            0x9,
        ),
        (
            "CONTINUATION without HEADERS",
            RawH2::frame_bytes(CONTINUATION, END_HEADERS, 1, &[0x82]),
            0x1,
        ),
        (
            "RST_STREAM on an idle stream",
            RawH2::frame_bytes(RST_STREAM, 0, 5, &8u32.to_be_bytes()),
            0x1,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut h2 = RawH2::connect(addr, &[]).await;
        let _ = h2.io.write_all(&bytes).await;
        assert_eq!(h2.goaway_code().await, code, "{what}");
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("rauta_proxy_http2_connection_errors_total{reason=\"PROTOCOL_ERROR\"} 4"),
        "{metrics}"
    );
}

/// `count` streams to /slow, each opened with END_STREAM and followed by `then(id)`.
fn slow_streams_then(count: u32, then: impl Fn(u32) -> Vec<u8>) -> Vec<u8> {
    let mut burst = Vec::new();
    for i in 0..count {
        let id = 2 * i + 1;
        burst.extend(RawH2::frame_bytes(
            HEADERS,
            END_STREAM | END_HEADERS,
            id,
            &get_block("/slow", &[]),
        ));
        burst.extend(then(id));
    }
    burst
}

#[tokio::test]
async fn floods_and_excess_streams_are_cut_off() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway(&ws).await;
    let addr = proxy.listener(80);

    // Rapid reset: streams opened and cancelled at once, hundreds of them.
    let mut h2 = RawH2::connect(addr, &[]).await;
    let burst = slow_streams_then(300, |id| {
        RawH2::frame_bytes(RST_STREAM, 0, id, &8u32.to_be_bytes())
    });
    let _ = h2.io.write_all(&burst).await;
    assert_eq!(h2.goaway_code().await, 0xb, "ENHANCE_YOUR_CALM");

    // The same with streams the proxy resets for the client's error (DATA after END_STREAM).
    let mut h2 = RawH2::connect(addr, &[]).await;
    let burst = slow_streams_then(300, |id| RawH2::frame_bytes(DATA, 0, id, b""));
    let _ = h2.io.write_all(&burst).await;
    assert_eq!(h2.goaway_code().await, 0xb, "ENHANCE_YOUR_CALM");

    // A header block that never ends.
    let mut h2 = RawH2::connect(addr, &[]).await;
    h2.send(HEADERS, END_STREAM, 1, &get_block("/", &[])).await;
    let filler = vec![0x82u8; 16_384];
    for _ in 0..12 {
        h2.send(CONTINUATION, 0, 1, &filler).await;
    }
    assert_eq!(h2.goaway_code().await, 0xb, "ENHANCE_YOUR_CALM");

    // More than 256 streams at once: the 257th is refused, the first 256 answered.
    let mut h2 = RawH2::connect(addr, &[]).await;
    let open = slow_streams_then(257, |_| Vec::new());
    h2.io.write_all(&open).await.unwrap();
    let (refused, _) = h2.until(RST_STREAM, 513).await;
    assert_eq!(refused.payload, 7u32.to_be_bytes(), "REFUSED_STREAM");
    let mut answered = 0;
    while answered < 256 {
        let f = h2.frame().await.expect("all 256 answered");
        if f.kind == DATA && f.flags & END_STREAM != 0 {
            assert_eq!(f.payload, b"slow");
            answered += 1;
        }
    }
    let metrics = proxy.metrics().await;
    for line in [
        "rauta_proxy_http2_connection_errors_total{reason=\"ENHANCE_YOUR_CALM\"} 3",
        "rauta_proxy_http2_stream_errors_total{reason=\"REFUSED_STREAM\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn curl_speaks_http2_with_prior_knowledge() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway(&ws).await;
    let url = format!("http://{}/big?n=100000", proxy.listener(80));
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "host: h2.example",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %{size_download}",
            &url,
        ])
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (curl 7.88 cannot reuse a prior-knowledge connection, against any server: one request.)
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200 100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_goaway_and_finishes_the_streams_in_flight() {
    let ws = Workspace::new();
    let (_controller, mut proxy) = gateway(&ws).await;
    let mut sender = rauta_tests::harness::h2c_connect(proxy.listener(80)).await;
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        let req = http::Request::get("http://h2.example/slow")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let sent = sender.send_request(req);
        in_flight.push(tokio::spawn(async move {
            let resp = sent.await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.process.terminate();
    for answer in in_flight {
        let (status, body) = answer.await.unwrap().expect("answered despite the drain");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"slow"[..]));
    }
    // GOAWAY came first: the connection takes no new stream.
    let req = http::Request::get("http://h2.example/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(sender.send_request(req).await.is_err());
    let exited =
        tokio::task::spawn_blocking(move || proxy.process.wait_exit(Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}
