//! Retries go to another endpoint: with one of two endpoints dead, a route with a retry
//! policy answers every client, while the same backend without retries fails the clients that
//! Maglev maps to the dead endpoint. The retry budget lets a burst of failures be retried at
//! once, and holds the retries of a cluster that keeps failing to a share of its requests.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rauta_tests::harness::{
    Controller, Echo, Proxy, RefusingPort, Workspace, free_port, http_request, start_gateway,
};
use rauta_tests::manifests::{
    annotated_service, documents, gateway, gateway_class, http_route, service,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_reaches_the_other_endpoint() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let refusing = RefusingPort::bind();
    let dead = refusing.addr;
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

/// A backend that answers every request with `status` after `delay`.
async fn answering(status: u16, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    let mut r = http::Response::new(Full::new(Bytes::from(format!("{status}\n"))));
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn counter(metrics: &str, name: &str, cluster: &str) -> f64 {
    let prefix = format!("{name}{{cluster=\"{cluster}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Found by benches/chaos.sh: when a backend dies, every request in flight on it fails at the
/// same moment. A budget of retries *in flight* (20% of the requests in flight, at least 3)
/// refused most of their retries although the other backend was healthy; a budget of retries
/// over time (a reserve of 10 a second, plus 20% of the requests) takes the burst, and still
/// refuses to multiply the load on a cluster where everything fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_takes_a_burst_and_caps_a_cluster_that_keeps_failing() {
    let ws = Workspace::new();
    let failing = answering(503, Duration::from_millis(100)).await;
    let slow = answering(200, Duration::from_millis(400)).await;
    let all_failing = [
        answering(503, Duration::ZERO).await,
        answering(503, Duration::ZERO).await,
    ];
    let round_robin = [("rauta.dev/load-balancer", "round-robin")];
    let retry = "    retry: {attempts: 1, codes: [503]}\n";
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            annotated_service("apps", "half", &[failing, slow], &round_robin),
            annotated_service("apps", "down", &all_failing, &round_robin),
            http_route(
                "apps",
                "half",
                ("infra", "gw"),
                &["half.test"],
                &format!("  - backendRefs: [{{name: half, port: 8080}}]\n{retry}"),
            ),
            http_route(
                "apps",
                "down",
                ("infra", "gw"),
                &["down.test"],
                &format!("  - backendRefs: [{{name: down, port: 8080}}]\n{retry}"),
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let base = format!("http://{}", proxy.listener(80));

    // 16 at once: 8 fail after 100 ms, while all 16 are in flight, and are retried together
    // on the endpoint that answers in 400 ms.
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let url = format!("{base}/");
            tokio::spawn(async move {
                http_request(&url, Some("half.test"), &[], None)
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in burst {
        statuses.push(request.await.unwrap());
    }
    assert_eq!(statuses, [200; 16], "every request of the burst retried");
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "rauta_proxy_upstream_retries_total",
            "apps/half:8080"
        ),
        8.0,
        "{metrics}"
    );

    // Everything fails: 300 requests may add their fifth (60) plus the reserve (100 in 10 s)
    // in retries, not 300.
    for _ in 0..300 {
        let status = http_request(&format!("{base}/"), Some("down.test"), &[], None)
            .await
            .unwrap()
            .status;
        assert_eq!(status, 503);
    }
    let metrics = proxy.metrics().await;
    let retries = counter(
        &metrics,
        "rauta_proxy_upstream_retries_total",
        "apps/down:8080",
    );
    let refused = counter(
        &metrics,
        "rauta_proxy_upstream_retries_refused_total",
        "apps/down:8080",
    );
    assert_eq!(retries + refused, 300.0, "{metrics}");
    assert!(
        (150.0..=170.0).contains(&retries),
        "{retries} retries, {refused} refused"
    );
}
