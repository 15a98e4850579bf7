//! Hostile clients against the real proxy, one defect each (every case failed before its fix):
//! Host fields that disagree, malformed framing, CONNECT, request lines too long, work a client
//! stalls on purpose (bodies trickled, responses never read, windows never granted, header
//! blocks never finished), floods of frames that carry nothing, HTTP/2 DATA frames of one
//! octet, and more connections than a worker is allowed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rauta_tests::backend::gateway_to_backend;
use rauta_tests::harness::{Workspace, eventually};
use rauta_tests::raw_h2::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns everything the proxy answers until it closes (5 s at most).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn http1_status(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or("none")
}

/// The value of a counter in Prometheus text (0 when absent).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_and_targets_get_4xx_on_both_paths() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    let addr = proxy.listener(80);
    // The same requests through the general path alone (no HTTP/1.1 fast path).
    let ws_general = Workspace::new();
    let (_c2, general) = gateway_to_backend(&ws_general, &["--http1-fast-path", "off"]).await;

    for addr in [addr, general.listener(80)] {
        let ok = raw(
            addr,
            b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(http1_status(&ok), "200", "{ok}");
        // Routed by one Host, the other going upstream: refused (RFC 9112 section 3.2).
        let two_hosts =
            b"GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n";
        assert_eq!(http1_status(&raw(addr, two_hosts).await), "400");
        let no_host = b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert_eq!(http1_status(&raw(addr, no_host).await), "400");
        // HTTP/1.0 needs no Host.
        let old = raw(addr, b"GET /x HTTP/1.0\r\n\r\n").await;
        assert_eq!(http1_status(&old), "200", "{old}");
        // A malformed chunk is the client's error, not the upstream's.
        let bad_chunk = b"POST /count HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\
                          Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
        assert_eq!(http1_status(&raw(addr, bad_chunk).await), "400");
        // A request refused after a good one on the same connection (the fast path hands
        // the second to hyper as bytes already read).
        let many: String = (0..120).map(|i| format!("x-{i}: v\r\n")).collect();
        for (second, status) in [
            (
                "GET /2 HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\x0b".to_owned(),
                "400",
            ),
            (format!("GET /2 HTTP/1.1\r\nHost: a\r\n{many}\r\n"), "431"),
            ("GET /2 HTTP/1.7\r\nHost: a\r\n\r\n".to_owned(), "400"),
        ] {
            let piped = format!("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n{second}");
            let piped = raw(addr, piped.as_bytes()).await;
            let statuses: Vec<&str> = piped
                .match_indices("HTTP/1.1 ")
                .map(|(at, _)| &piped[at + 9..at + 12])
                .collect();
            assert_eq!(statuses, ["200", status], "{piped}");
        }
        // Nothing tunnels: CONNECT would go upstream as a request for "/".
        let connect = raw(
            addr,
            b"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n",
        )
        .await;
        assert_eq!(http1_status(&connect), "405", "{connect}");
        assert!(
            connect.to_ascii_lowercase().contains("allow: "),
            "{connect}"
        );
    }
    // A megabyte of request line (the fast path sees it first).
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert_eq!(http1_status(&raw(addr, long.as_bytes()).await), "414");
    let metrics = proxy.metrics().await;
    assert!(
        !metrics.contains("status=\"502\""),
        "no request counted as an upstream failure:\n{metrics}"
    );

    // HTTP/2: two host fields and no :authority; a host that differs from :authority.
    let mut h2 = RawH2::connect(addr, &[]).await;
    let mut two = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        ("host", "a.test"),
        ("host", "b.test"),
    ] {
        field(&mut two, n, v);
    }
    h2.send(HEADERS, END_STREAM | END_HEADERS, 1, &two).await;
    assert_eq!(h2.response(1).await.0, "400");
    let differs = get_block("/", &[("host", "other.test")]);
    h2.send(HEADERS, END_STREAM | END_HEADERS, 3, &differs)
        .await;
    assert_eq!(h2.response(3).await.0, "400");
    let fine = get_block("/", &[]);
    h2.send(HEADERS, END_STREAM | END_HEADERS, 5, &fine).await;
    assert_eq!(h2.response(5).await.0, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_work_has_deadlines() {
    let ws = Workspace::new();
    let flags = [
        "--idle-timeout",
        "30",
        "--client-body-timeout",
        "2",
        "--send-timeout",
        "2",
        "--request-header-timeout",
        "2",
    ];
    let (_controller, proxy) = gateway_to_backend(&ws, &flags).await;
    let addr = proxy.listener(80);

    // An HTTP/1.1 body trickled at an octet per half second: 408 once the allowance is spent.
    let started = Instant::now();
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"POST /count HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let (mut read, mut write) = trickle.into_split();
        let feed = async {
            for _ in 0..100 {
                if write.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let mut answer = Vec::new();
        tokio::select! {
            _ = feed => {}
            _ = read.read_to_end(&mut answer) => {}
        }
        String::from_utf8_lossy(&answer).into_owned()
    });
    let answer = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the trickled body is cut off")
        .unwrap();
    assert_eq!(http1_status(&answer), "408", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // A client that never reads an endless response: the proxy gives up on it.
    let mut sink = TcpStream::connect(addr).await.unwrap();
    sink.write_all(b"GET /forever HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut drained = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sink.read(&mut drained).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a response nobody reads is not held for ever"
    );

    // HTTP/2: a stream whose window the client never opens is reset.
    let mut h2 = RawH2::connect(addr, &[(4, 0)]).await;
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/forever", &[]),
    )
    .await;
    let (rst, _) = h2.until(RST_STREAM, 1).await;
    assert_eq!(rst.payload, 8u32.to_be_bytes(), "CANCEL");

    // HTTP/2: a header block never finished ends the connection.
    let mut h2 = RawH2::connect(addr, &[]).await;
    h2.send(HEADERS, END_STREAM, 1, &get_block("/", &[])).await;
    assert_eq!(h2.goaway_code().await, 0xb, "ENHANCE_YOUR_CALM");

    // HTTP/2: a request body trickled.
    let mut h2 = RawH2::connect(addr, &[]).await;
    let post = request_block("POST", "/count", &[]);
    h2.send(HEADERS, END_HEADERS, 1, &post).await;
    let stream = &mut h2;
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            stream.send(DATA, 0, 1, b"x").await;
            let next = tokio::time::timeout(Duration::from_millis(500), stream.frame()).await;
            if let Ok(Some(f)) = next
                && f.kind == HEADERS
                && f.stream == 1
            {
                return status_of(&f.payload);
            }
        }
    })
    .await
    .expect("the trickled HTTP/2 body is cut off");
    assert_eq!(answered, "408");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_carry_nothing_are_floods() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    let addr = proxy.listener(80);

    // A header block kept open by empty CONTINUATION frames.
    let mut h2 = RawH2::connect(addr, &[]).await;
    h2.send(HEADERS, END_STREAM, 1, &get_block("/", &[])).await;
    for _ in 0..100 {
        h2.send(CONTINUATION, 0, 1, &[]).await;
    }
    assert_eq!(h2.goaway_code().await, 0xb, "ENHANCE_YOUR_CALM");

    // Empty DATA frames that end nothing.
    let mut h2 = RawH2::connect(addr, &[]).await;
    h2.send(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/count", &[]),
    )
    .await;
    for _ in 0..100 {
        h2.send(DATA, 0, 1, &[]).await;
    }
    assert_eq!(h2.goaway_code().await, 0xb, "ENHANCE_YOUR_CALM");

    // SETTINGS, each answered, by the hundred; each frame full of window sizes.
    let mut h2 = RawH2::connect(addr, &[]).await;
    let entries: Vec<u8> = (0..2730u32)
        .flat_map(|i| {
            4u16.to_be_bytes()
                .into_iter()
                .chain((65535 + i).to_be_bytes())
        })
        .collect();
    for _ in 0..200 {
        h2.send(SETTINGS, 0, 0, &entries).await;
    }
    assert_eq!(h2.goaway_code().await, 0xb, "ENHANCE_YOUR_CALM");

    let metrics = proxy.metrics().await;
    assert!(
        metrics
            .contains("rauta_proxy_http2_connection_errors_total{reason=\"ENHANCE_YOUR_CALM\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_octet_data_frames_cost_about_their_window() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    let addr = proxy.listener(80);
    let before = rss_kib(proxy.process.pid());

    // A million one-octet DATA frames (the stream's whole 1 MiB window) for a backend that
    // does not read them: once the sockets between are full, the proxy holds the rest.
    let mut h2 = RawH2::connect(addr, &[]).await;
    h2.send(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/hold", &[]),
    )
    .await;
    let frame = RawH2::frame_bytes(DATA, 0, 1, b"x");
    let burst: Vec<u8> = frame.repeat(16 * 1024);
    for _ in 0..(1 << 20) / (16 * 1024) {
        h2.io.write_all(&burst).await.unwrap();
    }
    h2.send(PING, 0, 0, b"barrier!").await;
    loop {
        let (ping, _) = h2.until(PING, 0).await;
        if ping.payload == b"barrier!" {
            break;
        }
    }
    let grown = rss_kib(proxy.process.pid()).saturating_sub(before);
    // Before the fix: about 40 MiB (a queue entry per frame, each holding a read buffer).
    assert!(grown < 12 * 1024, "the proxy grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_worker_limit_are_refused() {
    let ws = Workspace::new();
    let flags = ["--worker-threads", "1", "--max-connections-per-worker", "3"];
    let (_controller, proxy) = gateway_to_backend(&ws, &flags).await;
    let addr = proxy.listener(80);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    // The fourth is closed at once.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert_eq!(
        counter(
            &proxy.metrics().await,
            "rauta_proxy_connections_refused_total"
        ),
        1
    );
    // One gone, one more fits.
    drop(held.pop());
    rauta_tests::harness::eventually(Duration::from_secs(5), || async {
        raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_bounds_its_connections_and_their_heads() {
    let ws = Workspace::new();
    let (_controller, proxy) = gateway_to_backend(&ws, &[]).await;
    // 64 idle connections take every slot; the 65th is closed at once.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(proxy.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(proxy.admin).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(idle);
    // The slots are free once the port has noticed those connections closed: until then a new
    // one is refused at once, which the check below would take for a head cut off early.
    eventually(Duration::from_secs(10), || async {
        proxy.metrics().await.contains("rauta_proxy_")
    })
    .await;

    // A request head trickled and never finished is cut off (after the header timeout, not
    // at once: the connection was let in).
    let mut slow = TcpStream::connect(proxy.admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the admin port dropped the unfinished head");
    assert!(started.elapsed() >= Duration::from_secs(5));
    // And the port still serves.
    assert!(proxy.metrics().await.contains("rauta_proxy_"));
}
