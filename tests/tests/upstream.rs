//! Upstream connection pools: HTTP/1.1 keep-alive reuse, one multiplexed HTTP/2 connection
//! per worker carrying the client's :authority, and failed connects counted per endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rauta_tests::echo::{EchoIdentity, EchoServer};
use rauta_tests::harness::{RefusingPort, Workspace, eventually, http_get, start_gateway};
use rauta_tests::manifests::{documents, gateway, gateway_class, h2c_service, http_route, service};

const WORKERS: usize = 2;

/// The value of a per-endpoint metric, 0 when absent.
fn endpoint_metric(metrics: &str, name: &str, endpoint: SocketAddr) -> f64 {
    let prefix = format!("rauta_proxy_{name}{{endpoint=\"{endpoint}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_reuse_connections_and_h2_keeps_the_authority() {
    let ws = Workspace::new();
    let identity = EchoIdentity {
        pod: "echo-pool".into(),
        namespace: "apps".into(),
        service: String::new(),
        ingress: String::new(),
    };
    let echo = EchoServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Some(0), identity)
        .await
        .unwrap();
    let h2c = echo.h2c.unwrap();
    let refusing = RefusingPort::bind();
    let dead = refusing.addr;
    let rules = |backend: &str, port: u16| {
        format!("  - backendRefs: [{{name: {backend}, port: {port}}}]\n")
    };
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "plain", &[echo.http]),
            h2c_service("apps", "multiplexed", &[h2c]),
            service("apps", "dead", &[dead]),
            http_route(
                "apps",
                "h1",
                ("infra", "gw"),
                &["h1.example"],
                &rules("plain", 8080),
            ),
            http_route(
                "apps",
                "h2",
                ("infra", "gw"),
                &["h2.example"],
                &rules("multiplexed", 8081),
            ),
            http_route(
                "apps",
                "gone",
                ("infra", "gw"),
                &["dead.example"],
                &rules("dead", 8080),
            ),
        ]),
    );
    let workers = WORKERS.to_string();
    let (_controller, proxy) = start_gateway(&ws, &["--worker-threads", &workers]).await;
    let url = format!("http://{}/pool", proxy.listener(80));

    // HTTP/1.1: 20 requests one after another, each on a new client connection, reuse at
    // most one upstream connection per worker.
    for _ in 0..20 {
        let r = http_get(&url, Some("h1.example")).await.unwrap();
        assert_eq!((r.status, r.pod()), (200, "echo-pool".to_owned()));
    }
    let metrics = proxy.metrics().await;
    let created = endpoint_metric(&metrics, "upstream_connections_created_total", echo.http);
    assert!(
        (1.0..=WORKERS as f64).contains(&created),
        "20 sequential requests opened {created} upstream connections"
    );

    // HTTP/2: 40 requests at once share at most one connection per worker, and the backend
    // sees the client's host as :authority, not the endpoint's address.
    let requests = (0..40).map(|_| http_get(&url, Some("h2.example")));
    for r in futures::future::join_all(requests).await {
        let r = r.unwrap();
        let echoed = r.echo().expect("echo answer");
        assert_eq!(r.status, 200);
        assert_eq!(echoed["proto"], "HTTP/2.0");
        assert_eq!(echoed["host"], "h2.example");
    }
    let metrics = proxy.metrics().await;
    let created = endpoint_metric(&metrics, "upstream_connections_created_total", h2c);
    assert!(
        (1.0..=WORKERS as f64).contains(&created),
        "40 concurrent HTTP/2 requests opened {created} upstream connections"
    );
    assert_eq!(
        endpoint_metric(&metrics, "upstream_connections_open", h2c),
        created,
        "the HTTP/2 connections stay open for the next requests"
    );

    // Nothing listens on the dead endpoint: 502, and the failed connect is counted.
    let r = http_get(&url, Some("dead.example")).await.unwrap();
    assert_eq!(r.status, 502);
    let metrics = proxy.metrics().await;
    assert_eq!(
        endpoint_metric(&metrics, "upstream_connect_failures_total", dead),
        1.0
    );
    assert_eq!(
        endpoint_metric(&metrics, "upstream_connections_open", dead),
        0.0
    );

    // The h2c Service goes away: its connections close, and the requests they carried (all
    // 40 streams) are observed.
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "plain", &[echo.http]),
            http_route(
                "apps",
                "h1",
                ("infra", "gw"),
                &["h1.example"],
                &rules("plain", 8080),
            ),
        ]),
    );
    let streams = |metrics: &str, what: &str| {
        let prefix =
            format!("rauta_proxy_upstream_requests_per_connection_{what}{{protocol=\"h2\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eventually(Duration::from_secs(10), || async {
        let metrics = proxy.metrics().await;
        (streams(&metrics, "count"), streams(&metrics, "sum")) == (created, 40.0)
    })
    .await;
}
