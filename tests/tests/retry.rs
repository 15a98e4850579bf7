//! Retries go to another endpoint: with one of two endpoints dead, a route with a retry
//! policy answers every client, while the same backend without retries fails the clients that
//! Maglev maps to the dead endpoint.

use std::net::IpAddr;

use rauta_tests::harness::{Controller, Echo, Proxy, Workspace, free_port, http_request};
use rauta_tests::manifests::{documents, gateway, gateway_class, http_route, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_reaches_the_other_endpoint() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rules = "  - matches: [{path: {type: PathPrefix, value: /with-retries}}]\n    backendRefs: [{name: mixed, port: 8080}]\n    retry: {attempts: 1, codes: [503]}\n  - matches: [{path: {type: PathPrefix, value: /plain}}]\n    backendRefs: [{name: mixed, port: 8080}]\n";
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "mixed", &[echo.http, dead]),
            http_route("apps", "web", ("infra", "gw"), &[], rules),
        ]),
    );
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let base = format!("http://{}", proxy.listener(80));

    let mut plain_failures = 0;
    for last in 2..30u8 {
        let source: IpAddr = format!("127.0.0.{last}").parse().unwrap();
        let plain = http_request(&format!("{base}/plain"), None, &[], Some(source))
            .await
            .unwrap();
        if plain.status == 502 {
            plain_failures += 1;
        }
        let retried = http_request(&format!("{base}/with-retries"), None, &[], Some(source))
            .await
            .unwrap();
        assert_eq!(
            (retried.status, retried.pod()),
            (200, echo.pod.clone()),
            "client {source}"
        );
    }
    assert!(
        plain_failures > 0,
        "some clients should map to the dead endpoint without retries"
    );
    // Retries are counted per cluster.
    let metrics = proxy.metrics().await;
    let retries = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("rauta_proxy_upstream_retries_total{cluster=\"apps/mixed:8080\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retries >= 1.0, "{metrics}");
}
