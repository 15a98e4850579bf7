//! Local rate limits (RateLimitPolicy, gateway.rauta.dev/v1alpha1) end to end through the real
//! controller, proxy and echo backend: policies attached to the Gateway, a listener, a route
//! and a named rule, and named by an ExtensionRef filter, each applying where it is the most
//! specific; 429 answers with Retry-After, RateLimit-Policy and RateLimit; counts per client
//! address and per header value, shared by HTTP/1.1 and HTTP/2 and by the proxy's workers,
//! and kept across snapshots; policy status in the admin service, the status files and, in
//! Kubernetes mode, written back to the cluster; the counters in /metrics.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use rauta_common::api::v1::ListStatusesRequest;
use rauta_tests::fake_kube::FakeApiServer;
use rauta_tests::harness::{
    Controller, Echo, HttpResponse, Proxy, Workspace, eventually, free_port, h2c_connect,
    http_request, metric_value, start_gateway_at,
};
use rauta_tests::manifests::{
    CONTROLLER_NAME, documents, gateway_class, infra, prefix_route, service,
};
use serde_json::json;

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n  - {name: admin, port: 80, protocol: HTTP, hostname: admin.example, allowedRoutes: {namespaces: {from: All}}}\n";

const ROUTES: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra, sectionName: http}]\n  rules:\n  - name: login\n    matches: [{path: {type: PathPrefix, value: /login}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /search}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: RateLimitPolicy, name: per-tenant}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: echo, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: console, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra, sectionName: admin}]\n  rules:\n  - backendRefs: [{name: echo, port: 8080}]\n";

fn policy(name: &str, namespace: &str, targets: &str, limit: &str) -> String {
    format!(
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  targetRefs: {targets}\n  local:\n    limits: [{limit}]\n"
    )
}

fn config(echo: std::net::SocketAddr) -> String {
    documents(&[
        gateway_class("rauta"),
        GATEWAY.to_owned(),
        service("apps", "echo", &[echo]),
        ROUTES.to_owned(),
        // The Gateway's: every route of the Gateway, counted per client.
        policy(
            "gateway-wide",
            "infra",
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
            "{requests: 3, unit: Hour, key: [{type: ClientAddress}]}",
        ),
        // The route's, over the Gateway's for the route's rules.
        policy(
            "api",
            "apps",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]",
            "{requests: 4, unit: Hour, key: [{type: ClientAddress}]}",
        ),
        // The login rule's, over the route's.
        policy(
            "login",
            "apps",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: login}]",
            "{requests: 2, unit: Hour, key: [{type: ClientAddress}]}",
        ),
        // Named by the search rule's filter, counted per tenant header.
        policy(
            "per-tenant",
            "apps",
            "[]",
            "{requests: 2, unit: Hour, key: [{type: Header, name: x-tenant}]}",
        ),
    ])
}

async fn get(
    proxy: &Proxy,
    host: &str,
    path: &str,
    client: u8,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let url = format!("http://{}{path}", proxy.listener(80));
    let local = IpAddr::from([127, 0, 0, client]);
    http_request(&url, Some(host), extra, Some(local))
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// How many of `n` requests pass before the first 429, which it returns.
async fn passes(
    proxy: &Proxy,
    host: &str,
    path: &str,
    client: u8,
    extra: &[(&str, &str)],
) -> (usize, HttpResponse) {
    for passed in 0..20 {
        let resp = get(proxy, host, path, client, extra).await;
        match resp.status {
            200 => continue,
            429 => return (passed, resp),
            other => panic!("{path}: {other} {resp:?}"),
        }
    }
    panic!("{path}: never limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_policy_limits_each_rule_and_answers_429() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("all.yaml", &config(echo.http));
    let (controller, proxy) = start_gateway_at(&ws, 80, 1, &[]).await;
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "api.example", "/", 9, &[]).await.status == 200
    })
    .await;

    // Rule beats route beats Gateway; each client has its own count. The HTTP/1.1 fast path
    // serves all three requests, the 429 included.
    let fast = |m: &str| metric_value(m, "rauta_proxy_http1_fast_path_requests_total");
    let before = fast(&proxy.metrics().await);
    let (n, limited) = passes(&proxy, "api.example", "/login", 2, &[]).await;
    assert_eq!(fast(&proxy.metrics().await) - before, 3.0);
    assert_eq!(n, 2, "the login rule's policy: 2 an hour");
    assert_eq!(limited.body, "rate limited\n");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1700..=1800).contains(&retry_after),
        "one request every 30 minutes: {retry_after}"
    );
    assert_eq!(
        limited.headers["ratelimit-policy"],
        "\"apps/login/0\";q=2;w=3600"
    );
    assert_eq!(
        limited.headers["ratelimit"].to_str().unwrap(),
        format!("\"apps/login/0\";r=0;t={retry_after}")
    );
    // Another client, on the general path (a Host in capitals is not the fast path's).
    let (n, general) = passes(&proxy, "API.EXAMPLE", "/login", 3, &[]).await;
    assert_eq!(n, 2, "another client");
    assert_eq!(
        general.headers["ratelimit-policy"],
        limited.headers["ratelimit-policy"]
    );
    assert!(
        general.headers.contains_key("retry-after") && general.headers.contains_key("ratelimit")
    );
    assert_eq!(general.body, "rate limited\n");
    assert_eq!(
        passes(&proxy, "api.example", "/", 2, &[]).await.0,
        4,
        "the route's policy"
    );
    assert_eq!(
        passes(&proxy, "admin.example", "/", 2, &[]).await.0,
        3,
        "the Gateway's policy"
    );

    // A header key: each tenant counted on its own; a request without the header is not
    // counted by that limit.
    let tenant = |t: &'static str| [("x-tenant", t)];
    assert_eq!(
        passes(&proxy, "api.example", "/search", 4, &tenant("a"))
            .await
            .0,
        2
    );
    assert_eq!(
        passes(&proxy, "api.example", "/search", 4, &tenant("b"))
            .await
            .0,
        2
    );
    for _ in 0..4 {
        assert_eq!(
            get(&proxy, "api.example", "/search", 4, &[]).await.status,
            200
        );
    }

    // HTTP/2 shares the counts: a fresh client (127.0.0.1, as the HTTP/2 connection comes
    // from) passes twice over HTTP/1.1, and its third request, over HTTP/2, is refused.
    for _ in 0..2 {
        assert_eq!(
            get(&proxy, "api.example", "/login", 1, &[]).await.status,
            200
        );
    }
    let mut h2 = h2c_connect::<Empty<Bytes>>(proxy.listener(80)).await;
    let req = http::Request::get("http://api.example/login")
        .body(Empty::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(
        resp.status(),
        429,
        "HTTP/2 from the same address shares the count"
    );

    // The counters.
    let metrics = proxy.metrics().await;
    let series = |limit: &str, result: &str| {
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_rate_limit_requests_total{{limit=\"{limit}\",route=\"\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(series("apps/login/0", "allowed"), 6.0, "{metrics}");
    assert_eq!(series("apps/login/0", "limited"), 3.0, "{metrics}");

    // Policy status: every targeting policy accepted through the Gateway.
    let objects = controller
        .admin()
        .await
        .list_statuses(ListStatusesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .objects;
    let policies: Vec<_> = objects
        .iter()
        .filter(|o| o.kind == "RateLimitPolicy")
        .collect();
    let mut names: Vec<&str> = policies.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "gateway-wide", "login"], "{policies:?}");
    for p in &policies {
        let accepted = &p.ancestors[0].conditions[0];
        assert_eq!(
            (accepted.r#type.as_str(), accepted.status.as_str()),
            ("Accepted", "True"),
            "{p:?}"
        );
        assert_eq!(
            p.ancestors[0]
                .ancestor_ref
                .as_ref()
                .map(|r| r.name.as_str()),
            Some("gw")
        );
    }
    let status_file = ws
        .config
        .join("status")
        .join("RateLimitPolicy.apps.login.yaml");
    eventually(Duration::from_secs(10), || async { status_file.exists() }).await;
    let text = std::fs::read_to_string(&status_file).unwrap();
    assert!(
        text.contains("gateway.rauta.dev/v1alpha1") && text.contains("Accepted"),
        "{text}"
    );

    // Counts outlive snapshots: an edit elsewhere leaves the login count where it was.
    let mut edited = config(echo.http);
    edited.push_str("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: extra, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra, sectionName: http}]\n  hostnames: [extra.example]\n  rules:\n  - backendRefs: [{name: echo, port: 8080}]\n");
    ws.write("all.yaml", &edited);
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "extra.example", "/", 9, &[]).await.status == 200
    })
    .await;
    assert_eq!(
        get(&proxy, "api.example", "/login", 2, &[]).await.status,
        429
    );
}

/// Concurrent clients on many connections, served by both workers, get exactly the limit
/// between them: the count is one atomic per key, not a bucket per worker. The only slack is
/// what the limit refills while the test runs (one request every 2.4 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_over_both_workers_get_exactly_the_limit() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let exact = policy(
        "exact",
        "apps",
        "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]",
        "{requests: 25, unit: Minute}",
    );
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            GATEWAY.to_owned(),
            service("apps", "echo", &[echo.http]),
            ROUTES.to_owned(),
            exact,
        ]),
    );
    let (_controller, proxy) = start_gateway_at(&ws, 80, 1, &["--worker-threads", "2"]).await;
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "admin.example", "/", 9, &[]).await.status == 200
    })
    .await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..10u8 {
        let addr = proxy.listener(80);
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                let url = format!("http://{addr}/");
                let local = IpAddr::from([127, 0, 1, client + 1]);
                let resp = http_request(&url, Some("api.example"), &[], Some(local))
                    .await
                    .unwrap();
                statuses.push(resp.status);
            }
            statuses
        }));
    }
    let mut allowed = 0;
    let mut limited = 0;
    for t in tasks {
        for status in t.await.unwrap() {
            match status {
                200 => allowed += 1,
                429 => limited += 1,
                other => panic!("status {other}"),
            }
        }
    }
    let refilled = (started.elapsed().as_secs_f64() / 2.4).ceil() as usize;
    assert!(
        (25..=25 + refilled).contains(&allowed),
        "{allowed} allowed, {limited} limited; limit 25 (+{refilled} refilled)"
    );
    assert_eq!(allowed + limited, 100);
}

/// In Kubernetes mode the policy comes from the cluster and its status goes back to it, next
/// to another controller's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_kubernetes_mode_the_policy_applies_and_its_status_is_written_back() {
    let ws = Workspace::new();
    let blue = Echo::start("blue-1-a", "apps", ws.path());
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("blue", &[blue.http])]));
    fake.apply_yaml(&prefix_route("web", "/", "blue"));
    // Counted per x-client header: the readiness probes below, without it, are not counted.
    fake.apply_yaml(&policy(
        "web",
        "apps",
        "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]",
        "{requests: 2, unit: Hour, key: [{type: Header, name: x-client}]}",
    ));
    const API: &str = "gateway.rauta.dev/v1alpha1";
    let theirs = json!({
        "ancestorRef": {"name": "their-gateway", "namespace": "apps"},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    });
    let mut object = fake.object(API, "RateLimitPolicy", "apps", "web").unwrap();
    object["status"] = json!({"ancestors": [theirs.clone()]});
    fake.apply(object);

    let kubeconfig = fake.kubeconfig(ws.path());
    let args = [
        "--identity",
        "replica-a",
        "--leader-election-namespace",
        "rauta-system",
    ];
    let controller = Controller::start_kubernetes(&kubeconfig, ws.path(), &args);
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/app", proxy.listener(80));
    let get = |client: Option<&'static str>| {
        let url = url.clone();
        async move {
            let headers: Vec<(&str, &str)> = client.map(|c| ("x-client", c)).into_iter().collect();
            http_request(&url, Some("web.example"), &headers, None)
                .await
                .map_or(0, |r| r.status)
        }
    };
    eventually(Duration::from_secs(20), || async { get(None).await == 200 }).await;
    assert_eq!(
        [
            get(Some("a")).await,
            get(Some("a")).await,
            get(Some("a")).await
        ],
        [200, 200, 429]
    );
    assert_eq!(get(Some("b")).await, 200);

    eventually(Duration::from_secs(20), || async {
        let object = fake.object(API, "RateLimitPolicy", "apps", "web").unwrap();
        let ancestors = object["status"]["ancestors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ancestors.contains(&theirs)
            && ancestors.iter().any(|a| {
                a["controllerName"] == CONTROLLER_NAME
                    && a["ancestorRef"]["name"] == "gw"
                    && a["conditions"][0]["type"] == "Accepted"
                    && a["conditions"][0]["status"] == "True"
            })
    })
    .await;
}

/// A HEAD over a limit on a kept-alive HTTP/1.1 connection gets a 429 head without a body,
/// and the next request's answer follows it cleanly (a body there would be read as the start
/// of the next answer). Both requests arrive together, as a pipelining client sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_limit_gets_a_head_alone_and_the_connection_stays_in_step() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let none_left = policy(
        "none-left",
        "apps",
        "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: console}]",
        "{requests: 1, unit: Hour}",
    );
    let docs = [
        gateway_class("rauta"),
        GATEWAY.to_owned(),
        service("apps", "echo", &[echo.http]),
        ROUTES.to_owned(),
        none_left,
    ];
    ws.write("all.yaml", &documents(&docs));
    let (_controller, proxy) = start_gateway_at(&ws, 80, 1, &[]).await;
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "admin.example", "/", 9, &[]).await.status == 429
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(proxy.listener(80))
        .await
        .unwrap();
    conn.write_all(
        b"HEAD / HTTP/1.1\r\nHost: admin.example\r\n\r\nGET / HTTP/1.1\r\nHost: admin.example\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.ends_with(b"rate limited\n") && Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    let answers: Vec<&str> = text.split("\r\n\r\n").collect();
    assert_eq!(answers.len(), 3, "two heads and one body: {text:?}");
    assert!(answers[0].starts_with("HTTP/1.1 429"), "{text:?}");
    assert!(
        answers[0].contains("content-length: 13"),
        "the GET's length: {text:?}"
    );
    assert!(
        answers[1].starts_with("HTTP/1.1 429"),
        "the second answer right after the first head: {text:?}"
    );
    assert_eq!(answers[2], "rate limited\n");
}
