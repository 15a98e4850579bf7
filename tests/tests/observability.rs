//! Observability of a forwarded request: W3C traceparent continued (or started) towards the
//! upstream, a JSON access log line with the route, cluster, endpoint and trace id, and the
//! per-route latency histogram and config-apply time in the metrics.

use std::time::Duration;

use rauta_tests::harness::{Echo, Workspace, eventually, http_request, start_gateway};
use rauta_tests::manifests::{infra, prefix_route};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn echoed_traceparent(r: &rauta_tests::harness::HttpResponse) -> String {
    r.echo().expect("echo answer")["headers"]["Traceparent"][0]
        .as_str()
        .expect("traceparent reached the backend")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_access_log_and_route_metrics() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-obs", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("route.yaml", &prefix_route("web", "/", "echo"));
    let (_controller, proxy) = start_gateway(&ws, &["--access-log", "json"]).await;
    let base = format!("http://{}", proxy.listener(80));

    // A client's trace is continued: same trace id and sampling, the proxy's span as parent.
    let r = http_request(
        &format!("{base}/obs?x=1"),
        Some("obs.example"),
        &[("traceparent", PARENT), ("user-agent", "rauta-test")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let sent = echoed_traceparent(&r);
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"), "{sent}");
    assert_ne!(&sent[36..52], "00f067aa0ba902b7");

    // Without one, the proxy starts a trace.
    let r = http_request(&format!("{base}/fresh"), None, &[], None)
        .await
        .unwrap();
    let fresh = echoed_traceparent(&r);
    assert_eq!(fresh.len(), 55);
    assert!(!fresh.contains("4bf92f3577b34da6a3ce929d0e0e4736"));

    // One JSON line per request on stdout.
    let mut lines: Vec<serde_json::Value> = Vec::new();
    eventually(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&proxy.stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let done = lines.len() >= 2;
        async move { done }
    })
    .await;
    let first = lines
        .iter()
        .find(|l| l["path"] == "/obs?x=1")
        .expect("the traced request is logged");
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["authority"], "obs.example");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["cluster"], "apps/echo:8080");
    assert_eq!(first["upstream"], echo.http.to_string());
    assert_eq!(first["user_agent"], "rauta-test");
    assert_eq!(first["listener"], "http-80");
    assert!(
        first["route"].as_str().unwrap().starts_with("apps/web"),
        "{first}"
    );
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);

    let metrics = proxy.metrics().await;
    let route = first["route"].as_str().unwrap();
    let count = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "rauta_proxy_request_duration_seconds_count{{route=\"{route}\"}} "
            ))
        })
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(count, Some(2.0), "{metrics}");
    let applied = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rauta_proxy_config_apply_seconds_count "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        applied >= 4.0,
        "one apply per resource type at least: {applied}"
    );
}
