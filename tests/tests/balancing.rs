//! Endpoint choice: outlier detection ejects an endpoint that keeps failing and takes it back
//! once it recovers; Maglev can hash a header (session affinity) instead of the source
//! address; least-request spreads requests. Settings come from `rauta.dev/*` annotations on
//! the Service.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rauta_tests::harness::{Echo, Workspace, http_request, metric_value, start_gateway};
use rauta_tests::manifests::{annotated_service, documents, gateway, gateway_class, http_route};

/// A backend answering 503 until `healthy` is set, then 200; counts requests.
struct Flaky {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn flaky() -> Flaky {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, n) = (Arc::clone(&healthy), Arc::clone(&hits));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (h, n) = (Arc::clone(&h), Arc::clone(&n));
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    n.fetch_add(1, Ordering::SeqCst);
                    let status = if h.load(Ordering::SeqCst) { 200 } else { 503 };
                    async move {
                        let mut r = http::Response::new(Full::new(Bytes::from_static(b"flaky\n")));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Flaky {
        addr,
        healthy,
        hits,
    }
}

/// A Service balanced round robin whose endpoints are ejected after 3 failures in a row.
fn round_robin_ejecting(name: &str, endpoints: &[SocketAddr], ejection: &str) -> String {
    annotated_service(
        "apps",
        name,
        endpoints,
        &[
            ("rauta.dev/load-balancer", "round-robin"),
            ("rauta.dev/outlier-consecutive-failures", "3"),
            ("rauta.dev/outlier-base-ejection-time", ejection),
        ],
    )
}

fn route(name: &str, host: &str, service: &str) -> String {
    http_route(
        "apps",
        name,
        ("infra", "gw"),
        &[host],
        &format!("  - backendRefs: [{{name: {service}, port: 8080}}]\n"),
    )
}

/// Found by benches/chaos.sh: endpoint A fails and is ejected; A recovers, then B (the only
/// one left in rotation, which the cap keeps there) fails. A must come back before its
/// ejection ends, or every request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_comes_back_early_when_the_rest_fail() {
    let ws = Workspace::new();
    let (a, b) = (flaky().await, flaky().await);
    b.healthy.store(true, Ordering::SeqCst);
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            round_robin_ejecting("pair", &[a.addr, b.addr], "300s"),
            route("web", "web.example", "pair"),
            http_route(
                "apps",
                "retrying",
                ("infra", "gw"),
                &["retry.example"],
                "  - retry: {attempts: 1, codes: [503]}\n    backendRefs: [{name: pair, port: 8080}]\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let url = format!("http://{}/", proxy.listener(80));
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            http_request(&url, Some("web.example"), &[], None)
                .await
                .unwrap()
                .status,
        );
    }
    assert!(
        statuses[6..].iter().all(|s| *s == 200),
        "A ejected: {statuses:?}"
    );
    // A recovers; B dies. A retry goes to the ejected A once B (all that is left in
    // rotation) has failed it: the client sees no failure at all.
    a.healthy.store(true, Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    let retried = http_request(&url, Some("retry.example"), &[], None)
        .await
        .unwrap();
    assert_eq!(
        retried.status, 200,
        "the retry went to the recovered endpoint"
    );
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(
            http_request(&url, Some("web.example"), &[], None)
                .await
                .unwrap()
                .status,
        );
    }
    assert!(
        statuses.iter().filter(|s| **s == 503).count() <= 4,
        "B's failures cost a few requests, not the ejection's 300 s: {statuses:?}"
    );
    assert!(statuses[10..].iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_taken_back() {
    let ws = Workspace::new();
    let good = Echo::start("echo-good", "apps", ws.path());
    let bad = flaky().await;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            round_robin_ejecting("mixed", &[good.http, bad.addr], "2s"),
            route("web", "web.example", "mixed"),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let url = format!("http://{}/", proxy.listener(80));

    // Round robin alternates: the flaky endpoint answers 503 three times, then is ejected
    // and every later request goes to the good one.
    let mut statuses = Vec::new();
    for _ in 0..14 {
        statuses.push(
            http_request(&url, Some("web.example"), &[], None)
                .await
                .unwrap()
                .status,
        );
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 3, "statuses {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 3);
    assert!(
        statuses[8..].iter().all(|s| *s == 200),
        "statuses {statuses:?}"
    );
    let metrics = proxy.metrics().await;
    let bad_label = format!("endpoint=\"{}\"", bad.addr);
    assert_eq!(
        metric_value(
            &metrics,
            &format!("rauta_proxy_outlier_ejections_total{{{bad_label}}} ")
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            &format!("rauta_proxy_endpoint_ejected{{cluster=\"apps/mixed:8080\",{bad_label}}} ")
        ),
        1.0
    );

    // The admin dump shows the settings from the annotations and the endpoint's state.
    let dump = proxy.config_dump().await;
    let cluster = dump["resources"]["cluster"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "apps/mixed:8080")
        .expect("cluster in the dump");
    assert_eq!(
        cluster["cluster"]["lbPolicy"],
        "LOAD_BALANCER_POLICY_ROUND_ROBIN"
    );
    assert_eq!(
        cluster["cluster"]["outlierDetection"]["consecutiveFailures"],
        3
    );
    let state = dump["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == bad.addr.to_string())
        .expect("endpoint state in the dump");
    assert_eq!(state["ejected"], true);

    // Recovered, and the ejection period over: it gets requests again.
    bad.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    for _ in 0..6 {
        let r = http_request(&url, Some("web.example"), &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(bad.hits.load(Ordering::SeqCst) > 3, "back in the rotation");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            &format!("rauta_proxy_endpoint_ejected{{cluster=\"apps/mixed:8080\",{bad_label}}} ")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_affinity_and_least_request() {
    let ws = Workspace::new();
    let a = Echo::start("echo-a", "apps", ws.path());
    let b = Echo::start("echo-b", "apps", ws.path());
    let both = [a.http, b.http];
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            annotated_service(
                "apps",
                "sticky",
                &both,
                &[("rauta.dev/hash-on", "header:x-user")],
            ),
            annotated_service(
                "apps",
                "spread",
                &both,
                &[("rauta.dev/load-balancer", "least-request")],
            ),
            route("sticky", "sticky.example", "sticky"),
            route("spread", "spread.example", "spread"),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let url = format!("http://{}/", proxy.listener(80));

    // One user, many source addresses: always the same endpoint.
    let mut seen = BTreeSet::new();
    for last in 2..14u8 {
        let source: IpAddr = format!("127.0.0.{last}").parse().unwrap();
        let r = http_request(
            &url,
            Some("sticky.example"),
            &[("x-user", "alice")],
            Some(source),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        seen.insert(r.pod());
    }
    assert_eq!(seen.len(), 1, "alice moved between {seen:?}");
    // Many users from one address: both endpoints.
    let mut seen = BTreeSet::new();
    for user in 0..24 {
        let user = format!("user-{user}");
        let r = http_request(&url, Some("sticky.example"), &[("x-user", &user)], None)
            .await
            .unwrap();
        seen.insert(r.pod());
    }
    assert_eq!(seen.len(), 2, "users all on {seen:?}");

    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        seen.insert(
            http_request(&url, Some("spread.example"), &[], None)
                .await
                .unwrap()
                .pod(),
        );
    }
    assert_eq!(seen.len(), 2, "least-request used only {seen:?}");
}

/// The value of a `Set-Cookie` for `name` (without attributes), and its attributes.
fn set_cookie<'a>(
    r: &'a rauta_tests::harness::HttpResponse,
    name: &str,
) -> Option<(&'a str, &'a str)> {
    let value = r.headers.get(http::header::SET_COOKIE)?.to_str().ok()?;
    let rest = value.strip_prefix(name)?.strip_prefix('=')?;
    Some(rest.split_once(';').unwrap_or((rest, "")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_persistence_keeps_a_session_on_its_endpoint() {
    let ws = Workspace::new();
    let a = Echo::start("echo-a", "apps", ws.path());
    let b = Echo::start("echo-b", "apps", ws.path());
    let both = [a.http, b.http];
    let broken = flaky().await;
    let sticky_rule = |persistence: &str| {
        format!(
            "  - sessionPersistence: {persistence}\n    backendRefs: [{{name: rotating, port: 8080}}]\n"
        )
    };
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            // Round robin: without a session, consecutive requests alternate.
            annotated_service(
                "apps",
                "rotating",
                &both,
                &[("rauta.dev/load-balancer", "round-robin")],
            ),
            annotated_service(
                "apps",
                "half-broken",
                &[broken.addr, a.http],
                &[("rauta.dev/load-balancer", "round-robin")],
            ),
            http_route(
                "apps",
                "retried",
                ("infra", "gw"),
                &["retried.example"],
                "  - sessionPersistence: {sessionName: r}\n    retry: {attempts: 1, codes: [503], backoff: 1ms}\n    backendRefs: [{name: half-broken, port: 8080}]\n",
            ),
            http_route(
                "apps",
                "cookie",
                ("infra", "gw"),
                &["cookie.example"],
                // The rule drops the upstream's own cookies; not the session's.
                &format!(
                    "{}    filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {{remove: [set-cookie]}}\n",
                    sticky_rule(
                        "{sessionName: shop, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}",
                    )
                ),
            ),
            http_route(
                "apps",
                "header",
                ("infra", "gw"),
                &["header.example"],
                &sticky_rule("{type: Header, sessionName: x-session, idleTimeout: 10m}"),
            ),
            http_route(
                "apps",
                "short",
                ("infra", "gw"),
                &["short.example"],
                &sticky_rule("{sessionName: brief, absoluteTimeout: 1s}"),
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let url = format!("http://{}/", proxy.listener(80));
    let get = |host: &'static str, headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let r = http_request(&url, Some(host), &headers, None)
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            r
        }
    };

    // Cookie: the first answer opens the session (a permanent cookie lives an hour); requests
    // that bring it back all reach the endpoint that answered first, and get no new cookie.
    let first = get("cookie.example", vec![]).await;
    let (token, attributes) = set_cookie(&first, "shop").expect("a session cookie");
    assert_eq!(attributes, " Path=/; HttpOnly; Max-Age=3600");
    let cookie = format!("theme=dark; shop={token}");
    for _ in 0..8 {
        let r = get("cookie.example", vec![("cookie", cookie.clone())]).await;
        assert_eq!(r.pod(), first.pod(), "the session moved");
        assert!(r.headers.get(http::header::SET_COOKIE).is_none());
    }
    // Without it, round robin reaches both, each answer opening a session.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let r = get("cookie.example", vec![]).await;
        assert!(set_cookie(&r, "shop").is_some());
        seen.insert(r.pod());
    }
    assert_eq!(seen.len(), 2, "without a session: {seen:?}");
    // A token naming no endpoint of the route is ignored, and replaced.
    let forged = get(
        "cookie.example",
        vec![("cookie", "shop=3132372e302e302e313a31.0.0".into())],
    )
    .await;
    assert!(set_cookie(&forged, "shop").is_some());

    // Header: the token comes back in the same header; an idle timeout renews it every time.
    let first = get("header.example", vec![]).await;
    let token = first.headers["x-session"].to_str().unwrap().to_owned();
    for _ in 0..6 {
        let r = get("header.example", vec![("x-session", token.clone())]).await;
        assert_eq!(r.pod(), first.pod());
        assert!(r.headers.contains_key("x-session"), "renewed");
    }

    // An absolute timeout ends the session: after it, the token no longer pins the endpoint
    // and a new session starts.
    let first = get("short.example", vec![]).await;
    let (token, attributes) = set_cookie(&first, "brief").unwrap();
    assert_eq!(
        attributes, " Path=/; HttpOnly",
        "a session cookie has no Max-Age"
    );
    let cookie = format!("brief={token}");
    let again = get("short.example", vec![("cookie", cookie.clone())]).await;
    assert_eq!(again.pod(), first.pod());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let r = get("short.example", vec![("cookie", cookie.clone())]).await;
        assert!(set_cookie(&r, "brief").is_some(), "a new session");
        seen.insert(r.pod());
    }
    assert_eq!(seen.len(), 2, "the expired session still pinned {seen:?}");

    // A first attempt that fails and is retried elsewhere: the token names the endpoint that
    // answered, never the failing one.
    for _ in 0..4 {
        let r = get("retried.example", vec![]).await;
        assert_eq!(r.pod(), "echo-a");
        let (token, _) = set_cookie(&r, "r").expect("a session cookie");
        let hex = token.split('.').next().unwrap();
        let named: String = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap() as char)
            .collect();
        assert_eq!(named, a.http.to_string());
    }
}
