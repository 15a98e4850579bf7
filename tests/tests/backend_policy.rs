//! BackendPolicy end to end: active health checks (HTTP, TCP and gRPC probes, one prober per
//! endpoint however many routes use it, state and reason on the admin port), circuit-breaker
//! limits answering 503 with the limit's name, and the policy's status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rauta_tests::harness::{
    RefusingPort, Workspace, eventually, http_get, http_request, metric_value, start_gateway,
};
use rauta_tests::manifests::{documents, gateway, gateway_class, h2c_service, http_route, service};

/// A backend whose `/healthz` answers 200 while `healthy` is set, else 503; every other path
/// answers 200 with the backend's name after `delay`. Counts both kinds of request.
struct Probed {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn probed(name: &'static str, delay: Duration) -> Probed {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (h, p, r) = (
        Arc::clone(&healthy),
        Arc::clone(&probes),
        Arc::clone(&requests),
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (h, p, r) = (Arc::clone(&h), Arc::clone(&p), Arc::clone(&r));
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let probe = req.uri().path() == "/healthz";
                    let status = if probe {
                        p.fetch_add(1, Ordering::SeqCst);
                        if h.load(Ordering::SeqCst) { 200 } else { 503 }
                    } else {
                        r.fetch_add(1, Ordering::SeqCst);
                        200
                    };
                    async move {
                        if !probe {
                            tokio::time::sleep(delay).await;
                        }
                        let mut resp = http::Response::new(Full::new(Bytes::from(name)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Probed {
        addr,
        healthy,
        probes,
        requests,
    }
}

fn backend_policy(name: &str, service: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n{spec}"
    )
}

fn route_to(name: &str, host: &str, service: &str, port: u16) -> String {
    http_route(
        "apps",
        name,
        ("infra", "gw"),
        &[host],
        &format!("  - backendRefs: [{{name: {service}, port: {port}}}]\n"),
    )
}

async fn endpoints_page(admin: SocketAddr) -> serde_json::Value {
    let page = http_get(&format!("http://{admin}/endpoints"), None)
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    serde_json::from_str(&page.body).unwrap()
}

/// The admin page's entry for `endpoint` in `cluster`.
fn endpoint_entry(
    page: &serde_json::Value,
    cluster: &str,
    endpoint: SocketAddr,
) -> serde_json::Value {
    page["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cluster"] == cluster)
        .flat_map(|c| c["endpoints"].as_array().unwrap().iter())
        .find(|e| e["endpoint"] == endpoint.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{cluster} {endpoint} not in {page:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let ws = Workspace::new();
    let (a, b) = (
        probed("a", Duration::ZERO).await,
        probed("b", Duration::ZERO).await,
    );
    // Five routes use the Service: still one prober per endpoint.
    let mut docs = vec![
        gateway_class("rauta"),
        gateway("infra", "gw", "rauta", &[("http", 80, None)]),
        service("apps", "pair", &[a.addr, b.addr]),
        backend_policy(
            "pair",
            "pair",
            "  loadBalancer: {type: RoundRobin}\n  outlierDetection: {consecutiveFailures: 0}\n  healthCheck:\n    interval: 200ms\n    unhealthyThreshold: 1\n    http: {path: /healthz, expectedStatuses: ['200']}\n",
        ),
    ];
    for i in 0..5 {
        docs.push(route_to(
            &format!("r{i}"),
            &format!("r{i}.example"),
            "pair",
            8080,
        ));
    }
    ws.write("all.yaml", &documents(&docs));
    let (controller, proxy) = start_gateway(&ws, &[]).await;
    let url = format!("http://{}/", proxy.listener(80));
    let get = |host: &'static str| {
        let url = url.clone();
        async move { http_request(&url, Some(host), &[], None).await.unwrap() }
    };
    for _ in 0..4 {
        assert_eq!(get("r0.example").await.status, 200);
    }
    assert!(
        a.requests.load(Ordering::SeqCst) > 0,
        "both endpoints in rotation"
    );

    // Probes per endpoint per interval, not per route: 2 s at 200 ms is about 10.
    let before = a.probes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = a.probes.load(Ordering::SeqCst) - before;
    assert!(
        (3..=15).contains(&probes),
        "{probes} probes in 2 s at a 200 ms interval, with five routes"
    );
    let metrics = proxy.metrics().await;
    let probe_series = metrics
        .lines()
        .filter(|l| {
            l.starts_with("rauta_proxy_health_checks_total") && l.contains(&a.addr.to_string())
        })
        .count();
    assert_eq!(
        probe_series, 2,
        "one prober (passed and failed series): {metrics}"
    );

    // A's health check fails while its data path still answers: only the probe takes it out.
    a.healthy.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(10), || async {
        endpoint_entry(&endpoints_page(proxy.admin).await, "apps/pair:8080", a.addr)
            ["unhealthyBecause"]
            == "active"
    })
    .await;
    let entry = endpoint_entry(&endpoints_page(proxy.admin).await, "apps/pair:8080", a.addr);
    assert_eq!(entry["usable"], false, "{entry}");
    assert_eq!(
        entry["healthCheck"]["lastProbe"], "unexpected status 503",
        "{entry}"
    );
    let served_before = a.requests.load(Ordering::SeqCst);
    for host in ["r0.example", "r1.example", "r2.example", "r3.example"] {
        for _ in 0..5 {
            let resp = get(host).await;
            assert_eq!((resp.status, resp.body.as_str()), (200, "b"));
        }
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), served_before);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_endpoint_healthy{{cluster=\"apps/pair:8080\",endpoint=\"{}\"}}",
                a.addr
            )
        ),
        0.0,
        "{metrics}"
    );

    // A recovers: back in rotation within an interval or so.
    a.healthy.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(10), || async {
        endpoint_entry(&endpoints_page(proxy.admin).await, "apps/pair:8080", a.addr)["usable"]
            == true
    })
    .await;
    for _ in 0..4 {
        get("r0.example").await;
    }
    assert!(a.requests.load(Ordering::SeqCst) > served_before);

    // The policy's status: accepted through the Gateway.
    let objects = controller.statuses().await;
    let policy = objects
        .iter()
        .find(|o| o.kind == "BackendPolicy")
        .expect("BackendPolicy status");
    let accepted = &policy.ancestors[0].conditions[0];
    assert_eq!(
        (accepted.r#type.as_str(), accepted.status.as_str()),
        ("Accepted", "True"),
        "{policy:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_grpc_probes_find_dead_and_not_serving_endpoints() {
    use tokio_stream::wrappers::TcpListenerStream;
    let ws = Workspace::new();
    let live = probed("live", Duration::ZERO).await;
    let refusing = RefusingPort::bind();
    // A gRPC server whose health service says NOT_SERVING, and a healthy one.
    let mut grpc = Vec::new();
    for serving in [false, true] {
        let (reporter, health) = tonic_health::server::health_reporter();
        if serving {
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
        } else {
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        grpc.push((listener.local_addr().unwrap(), reporter));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
    }
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "tcp", &[refusing.addr, live.addr]),
            backend_policy(
                "tcp",
                "tcp",
                "  loadBalancer: {type: RoundRobin}\n  healthCheck: {interval: 200ms, unhealthyThreshold: 1, tcp: {}}\n",
            ),
            route_to("tcp", "tcp.example", "tcp", 8080),
            h2c_service("apps", "grpc", &[grpc[0].0, grpc[1].0]),
            backend_policy(
                "grpc",
                "grpc",
                "  healthCheck: {interval: 200ms, unhealthyThreshold: 1, grpc: {}}\n",
            ),
            route_to("grpc", "grpc.example", "grpc", 8081),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let cluster_state = |cluster: &'static str, endpoint: SocketAddr| {
        let admin = proxy.admin;
        async move { endpoint_entry(&endpoints_page(admin).await, cluster, endpoint) }
    };
    eventually(Duration::from_secs(10), || async {
        cluster_state("apps/tcp:8080", refusing.addr).await["unhealthyBecause"] == "active"
            && cluster_state("apps/grpc:8081", grpc[0].0).await["unhealthyBecause"] == "active"
    })
    .await;
    let dead = cluster_state("apps/tcp:8080", refusing.addr).await;
    assert_eq!(dead["healthCheck"]["lastProbe"], "connect failed", "{dead}");
    let not_serving = cluster_state("apps/grpc:8081", grpc[0].0).await;
    assert_eq!(
        not_serving["healthCheck"]["lastProbe"], "gRPC health status 2, not SERVING",
        "{not_serving}"
    );
    assert_eq!(
        cluster_state("apps/grpc:8081", grpc[1].0).await["usable"],
        true
    );
    // Every request goes to the live endpoint: none meets the refusing port.
    let url = format!("http://{}/", proxy.listener(80));
    for _ in 0..6 {
        let resp = http_request(&url, Some("tcp.example"), &[], None)
            .await
            .unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "live"));
    }
    // The service turns SERVING: healthy again.
    grpc[0]
        .1
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    eventually(Duration::from_secs(10), || async {
        cluster_state("apps/grpc:8081", grpc[0].0).await["usable"] == true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breakers_answer_503_with_the_limit_reached() {
    let ws = Workspace::new();
    let slow = probed("slow", Duration::from_millis(1500)).await;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "slow", &[slow.addr]),
            backend_policy("slow", "slow", "  circuitBreaker: {maxRequests: 2}\n"),
            // A plain route (the HTTP/1.1 fast path) and one with a filter (the general path).
            route_to("fast", "fast.example", "slow", 8080),
            http_route(
                "apps",
                "general",
                ("infra", "gw"),
                &["general.example"],
                "  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-a, value: b}]}}]\n    backendRefs: [{name: slow, port: 8080}]\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let url = format!("http://{}/", proxy.listener(80));
    for host in ["fast.example", "general.example"] {
        let requests: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(
                    async move { http_request(&url, Some(host), &[], None).await.unwrap() },
                )
            })
            .collect();
        let mut answers = Vec::new();
        for r in requests {
            answers.push(r.await.unwrap());
        }
        let ok = answers.iter().filter(|r| r.status == 200).count();
        let refused: Vec<_> = answers.iter().filter(|r| r.status == 503).collect();
        assert_eq!(
            (ok, refused.len()),
            (2, 2),
            "{host}: {:?}",
            answers.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        for r in refused {
            assert_eq!(
                r.body, "upstream overflow: max_requests reached\n",
                "{host}"
            );
            assert_eq!(
                r.headers
                    .get("x-rauta-overflow")
                    .map(|v| v.to_str().unwrap()),
                Some("max_requests"),
                "{host}"
            );
        }
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "rauta_proxy_upstream_overflows_total{cluster=\"apps/slow:8080\",limit=\"max_requests\"}"
        ),
        4.0,
        "{metrics}"
    );
    // Refusals are not the endpoint's failures: it was never ejected.
    assert_eq!(
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_endpoint_ejected{{cluster=\"apps/slow:8080\",endpoint=\"{}\"}}",
                slow.addr
            )
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_backend_traffic_policy_gives_a_service_one_session_and_a_retry_budget() {
    use rauta_tests::harness::Echo;
    let ws = Workspace::new();
    let pods = [
        Echo::start("echo-0", "apps", ws.path()),
        Echo::start("echo-1", "apps", ws.path()),
    ];
    let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.http).collect();
    let policy = |name: &str, spec: &str| {
        format!(
            "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: echo}}]\n{spec}"
        )
    };
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "echo", &addrs),
            route_to("a", "a.example", "echo", 8080),
            route_to("b", "b.example", "echo", 8080),
            policy(
                "sticky",
                "  sessionPersistence: {sessionName: sticky, type: Cookie}\n  retryConstraint:\n    budget: {percent: 30, interval: 20s}\n    minRetryRate: {count: 5, interval: 1s}\n",
            ),
            // Later by name (standalone objects have no creation time), for the same Service:
            // conflicted, and invalid besides.
            policy("zz-later", "  retryConstraint: {budget: {percent: 500}}\n"),
        ]),
    );
    let (controller, proxy) = start_gateway(&ws, &[]).await;
    let url = format!("http://{}/", proxy.listener(80));
    let objects = controller.statuses().await;
    let condition = |name: &str| {
        let o = objects
            .iter()
            .find(|o| o.kind == "XBackendTrafficPolicy" && o.name == name)
            .unwrap_or_else(|| panic!("{name}: {objects:?}"));
        let c = &o.ancestors[0].conditions[0];
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(condition("sticky"), ("True".into(), "Accepted".into()));
    assert_eq!(condition("zz-later"), ("False".into(), "Invalid".into()));
    let first = http_request(&url, Some("a.example"), &[], None)
        .await
        .unwrap();
    let cookie = first
        .headers
        .get("set-cookie")
        .expect("a session token")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("sticky="), "{cookie}");
    let pod = first.pod();
    // Every later request with the token, through either route, reaches the same pod.
    for host in ["a.example", "b.example", "a.example", "b.example"] {
        let r = http_request(&url, Some(host), &[("cookie", &cookie)], None)
            .await
            .unwrap();
        assert_eq!(r.pod(), pod, "{host}");
    }
    let dump = proxy.config_dump().await;
    let cluster = dump["resources"]["cluster"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "apps/echo:8080")
        .cloned()
        .expect("the cluster");
    let budget = &cluster["cluster"]["retryBudget"];
    assert_eq!(budget["percent"], 30, "{cluster:#}");
    assert_eq!(budget["minRetryCount"], 5, "{cluster:#}");
}

/// A connection limit is a share per worker (one worker here): requests past it get 503
/// naming it, connections are counted from before they are made (a burst cannot overshoot),
/// and once the exchanges end their connections serve the next requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_refuses_the_burst_past_it_and_frees_its_slots() {
    let ws = Workspace::new();
    let slow = probed("slow", Duration::from_millis(1000)).await;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "slow", &[slow.addr]),
            backend_policy(
                "slow",
                "slow",
                "  circuitBreaker: {maxConnectionsPerEndpoint: 2}\n",
            ),
            route_to("slow", "slow.example", "slow", 8080),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &["--worker-threads", "1"]).await;
    let url = format!("http://{}/", proxy.listener(80));
    let burst = || async {
        let requests: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    http_request(&url, Some("slow.example"), &[], None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut answers = Vec::new();
        for r in requests {
            answers.push(r.await.unwrap());
        }
        answers
    };
    let answers = burst().await;
    let refused: Vec<_> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        refused.len(),
        2,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in refused {
        assert_eq!(
            r.headers
                .get("x-rauta-overflow")
                .map(|v| v.to_str().unwrap()),
            Some("max_connections_per_endpoint")
        );
    }
    // The two connections are idle now, and serve the next two requests.
    for _ in 0..2 {
        let r = http_request(&url, Some("slow.example"), &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        slow.requests.load(Ordering::SeqCst),
        4,
        "refused requests never reached it"
    );
}
