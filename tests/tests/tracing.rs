//! OpenTelemetry spans exported over OTLP/gRPC to a receiver the test runs (a tonic server of
//! the collector's TraceService): one server span per sampled request, from the fast paths and
//! the general path alike, parented on the client's traceparent, with route, cluster,
//! endpoint, status and retries; parent-based sampling; the exporter's counters.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rauta_common::api::otlp::trace_service_server::{TraceService, TraceServiceServer};
use rauta_common::api::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, Span, any_value,
};
use rauta_tests::harness::{
    Echo, Workspace, eventually, http_request, metric_value, start_gateway,
};
use rauta_tests::manifests::{documents, gateway, gateway_class, http_route, service};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .any(|a| a.key == "service.name");
            assert!(service, "the resource names the service");
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, receiver)
}

fn text(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn config(echo: SocketAddr, dead: SocketAddr) -> String {
    documents(&[
        gateway_class("rauta"),
        gateway("infra", "gw", "rauta", &[("http", 80, None)]),
        service("apps", "echo", &[echo]),
        service("apps", "pair", &[dead, echo]),
        http_route(
            "apps",
            "plain",
            ("infra", "gw"),
            &["plain.example"],
            "  - backendRefs: [{name: echo, port: 8080}]\n",
        ),
        // Round robin over a dead endpoint and a live one, retried: some requests need one.
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: pair, namespace: apps}\nspec:\n  targetRefs: [{kind: Service, name: pair}]\n  loadBalancer: {type: RoundRobin}\n  outlierDetection: {consecutiveFailures: 0}\n".to_owned(),
        http_route(
            "apps",
            "retried",
            ("infra", "gw"),
            &["retried.example"],
            "  - retry: {attempts: 2}\n    backendRefs: [{name: pair, port: 8080}]\n",
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_become_spans_at_the_collector() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-0", "apps", ws.path());
    let dead = rauta_tests::harness::RefusingPort::bind();
    let (collector, received) = receiver().await;
    ws.write("all.yaml", &config(echo.http, dead.addr));
    let endpoint = format!("http://{collector}");
    let (_controller, proxy) = start_gateway(
        &ws,
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "0"],
    )
    .await;
    let url = format!("http://{}/path?q=1", proxy.listener(80));
    let sampled = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let unsampled = format!("00-{TRACE}-00f067aa0ba902b8-00");

    // The fast path: a sampled parent is recorded; an unsampled one and (at ratio 0) a new
    // trace are not. The upstream sees the proxy's span as parent, with the decision.
    let resp = http_request(
        &url,
        Some("plain.example"),
        &[("traceparent", &sampled)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    let upstream = resp.seen_header("traceparent");
    assert!(upstream[0].starts_with(&format!("00-{TRACE}-")) && upstream[0].ends_with("-01"));
    let new = http_request(&url, Some("plain.example"), &[], None)
        .await
        .unwrap();
    assert!(
        new.seen_header("traceparent")[0].ends_with("-00"),
        "ratio 0: not sampled"
    );
    http_request(
        &url,
        Some("plain.example"),
        &[("traceparent", &unsampled)],
        None,
    )
    .await
    .unwrap();
    // The general path, with retries.
    for _ in 0..2 {
        let r = http_request(
            &url,
            Some("retried.example"),
            &[("traceparent", &sampled)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }

    eventually(Duration::from_secs(10), || async {
        received.spans.lock().unwrap().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = received.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 3, "only the sampled requests: {spans:#?}");
    for span in &spans {
        assert_eq!(hex(&span.trace_id), TRACE);
        assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(span.kind, 2, "server span");
        assert!(span.end_time_unix_nano > span.start_time_unix_nano);
        assert_eq!(text(span, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(text(span, "url.path").as_deref(), Some("/path"));
        assert_eq!(
            text(span, "http.response.status_code").as_deref(),
            Some("200")
        );
    }
    let plain = spans
        .iter()
        .find(|s| text(s, "server.address").as_deref() == Some("plain.example"))
        .expect("the fast path's span");
    assert_eq!(
        text(plain, "rauta.cluster").as_deref(),
        Some("apps/echo:8080")
    );
    assert_eq!(
        text(plain, "rauta.upstream.address"),
        Some(echo.http.to_string())
    );
    assert_eq!(
        plain.name,
        format!("GET {}", text(plain, "http.route").unwrap())
    );
    // The proxy's span is the one the upstream was told about.
    assert!(upstream[0].contains(&hex(&plain.span_id)));
    let retried: Vec<u32> = spans
        .iter()
        .filter(|s| text(s, "server.address").as_deref() == Some("retried.example"))
        .map(|s| text(s, "rauta.retries").unwrap().parse().unwrap())
        .collect();
    assert_eq!(retried.len(), 2);
    assert_eq!(
        retried.iter().sum::<u32>(),
        1,
        "round robin: one of the two met the dead endpoint first"
    );

    let metrics = proxy.metrics().await;
    assert!(
        metric_value(&metrics, "rauta_proxy_http1_fast_path_requests_total") >= 3.0,
        "the plain route's requests took the fast path: {metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "rauta_proxy_trace_spans_total{result=\"exported\"}"
        ),
        3.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_collector_does_not_take_are_counted_failed() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-0", "apps", ws.path());
    let dead = rauta_tests::harness::RefusingPort::bind();
    ws.write("all.yaml", &config(echo.http, dead.addr));
    let endpoint = format!("http://{}", dead.addr);
    let (_controller, proxy) = start_gateway(&ws, &["--otlp-endpoint", &endpoint]).await;
    let url = format!("http://{}/", proxy.listener(80));
    for _ in 0..3 {
        let resp = http_request(&url, Some("plain.example"), &[], None)
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "requests do not wait for the collector");
    }
    eventually(Duration::from_secs(15), || async {
        metric_value(
            &proxy.metrics().await,
            "rauta_proxy_trace_spans_total{result=\"failed\"}",
        ) == 3.0
    })
    .await;
}
