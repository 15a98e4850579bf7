//! Request limits: a head over the size or header-count limit gets 431, a body over the limit
//! gets 413 (declared or chunked), a malformed request gets 400, an idle connection is
//! closed, and a limit flag out of range is refused with a usage message.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rauta_tests::harness::{Echo, Workspace, bin, http_request, start_gateway};
use rauta_tests::manifests::{infra, prefix_route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes and returns everything the proxy answers until it closes (5 s at most).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_4xx_and_idle_connections_close() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-limits", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("route.yaml", &prefix_route("web", "/", "echo"));
    let (_controller, proxy) = start_gateway(
        &ws,
        &[
            "--max-request-header-bytes",
            "8192",
            "--max-request-headers",
            "20",
            "--max-request-body-bytes",
            "1024",
            "--idle-timeout",
            "1",
        ],
    )
    .await;
    let addr = proxy.listener(80);
    let url = format!("http://{addr}/");

    let ok = http_request(&url, None, &[], None).await.unwrap();
    assert_eq!(ok.status, 200);

    let many: Vec<(String, String)> = (0..30).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = http_request(&url, None, &many, None).await.unwrap();
    assert_eq!(r.status, 431, "30 headers over a limit of 20");

    let big = "a".repeat(10_000);
    let r = http_request(&url, None, &[("x-big", &big)], None)
        .await
        .unwrap();
    assert_eq!(r.status, 431, "a 10 KB header over a limit of 8 KiB");

    let small = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 512\r\n\r\n{}",
        "b".repeat(512)
    );
    assert_eq!(status_of(&raw(addr, small.as_bytes()).await), "200");

    let declared = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2048\r\n\r\n{}",
        "b".repeat(2048)
    );
    assert_eq!(status_of(&raw(addr, declared.as_bytes()).await), "413");

    let chunk = "c".repeat(700);
    let chunked = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert_eq!(
        status_of(&raw(addr, chunked.as_bytes()).await),
        "413",
        "1400 chunked bytes over a limit of 1024"
    );

    assert_eq!(status_of(&raw(addr, b"GARBAGE\r\n\r\n").await), "400");

    // A connection that sends nothing is closed after the idle timeout (1 s, checked every
    // second): within a few seconds, not held open.
    let started = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "idle connection not closed: {read:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn out_of_range_limits_are_usage_errors() {
    let out = std::process::Command::new(bin("rauta-proxy"))
        .args([
            "--controller",
            "http://127.0.0.1:1",
            "--gateway",
            "a/b",
            "--max-request-header-bytes",
            "100",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--max-request-header-bytes") && stderr.contains("8192"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_to_an_http2_backend_is_413_and_not_the_backends_fault() {
    use rauta_tests::echo::{EchoIdentity, EchoServer};
    use rauta_tests::manifests::{documents, gateway, gateway_class, h2c_service, http_route};
    let ws = Workspace::new();
    let mut backends = Vec::new();
    for pod in ["h2-a", "h2-b"] {
        let identity = EchoIdentity {
            pod: pod.into(),
            namespace: "apps".into(),
            service: String::new(),
            ingress: String::new(),
        };
        let server = EchoServer::start(Ipv4Addr::LOCALHOST.into(), 0, Some(0), identity)
            .await
            .unwrap();
        backends.push(server);
    }
    let endpoints: Vec<SocketAddr> = backends.iter().map(|b| b.h2c.unwrap()).collect();
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            h2c_service("apps", "multiplexed", &endpoints),
            http_route(
                "apps",
                "h2",
                ("infra", "gw"),
                &["h2.example"],
                "  - backendRefs: [{name: multiplexed, port: 8081}]\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &["--max-request-body-bytes", "1024"]).await;
    let addr = proxy.listener(80);

    // Streamed (chunked) past the limit, towards HTTP/2 upstreams: 413 each time, and more
    // times than the outlier threshold (5) without any endpoint being ejected.
    let chunk = "c".repeat(700);
    let chunked = format!(
        "POST /upload HTTP/1.1\r\nHost: h2.example\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n0\r\n\r\n"
    );
    for _ in 0..8 {
        assert_eq!(status_of(&raw(addr, chunked.as_bytes()).await), "413");
    }
    let ok = http_request(&format!("http://{addr}/"), Some("h2.example"), &[], None)
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let metrics = proxy.metrics().await;
    let ejections: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("rauta_proxy_outlier_ejections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(ejections, 0.0, "{metrics}");
}
