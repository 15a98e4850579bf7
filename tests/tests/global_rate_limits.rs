//! Global rate limits (RateLimitPolicy `global`) end to end: two real proxies count one limit
//! in one real Redis server, so the fleet admits the limit, not twice it; with Redis killed a
//! limit that fails open lets requests through and one that fails closed answers 503, neither
//! stalls; with Redis back, limits count again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, eventually, free_port, http_request, metric_value,
};
use rauta_tests::manifests::{documents, gateway, gateway_class, service};
use rauta_tests::redis::RedisServer;

const LIMIT: usize = 20;

fn config(echo: std::net::SocketAddr) -> String {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - name: open\n    matches: [{path: {type: PathPrefix, value: /open}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: closed\n    matches: [{path: {type: PathPrefix, value: /closed}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - backendRefs: [{name: echo, port: 8080}]\n";
    let policy = |name: &str, mode: &str| {
        format!(
            "apiVersion: gateway.rauta.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: {name}}}]\n  global:\n    failureMode: {mode}\n    limits: [{{requests: {LIMIT}, unit: Hour, key: [{{type: Header, name: x-client}}]}}]\n"
        )
    };
    documents(&[
        gateway_class("rauta"),
        gateway("infra", "gw", "rauta", &[("http", 80, None)]),
        service("apps", "echo", &[echo]),
        route.to_owned(),
        policy("open", "Open"),
        policy("closed", "Closed"),
    ])
}

async fn status(proxy: &Proxy, path: &str, client: &str) -> u16 {
    let url = format!("http://{}{path}", proxy.listener(80));
    http_request(&url, Some("api.example"), &[("x-client", client)], None)
        .await
        .map_or(0, |r| r.status)
}

/// Windows are hours: a test that would straddle the top of the hour waits for it to pass.
fn away_from_a_window_edge() {
    let into_hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 3600;
    if into_hour > 3600 - 60 {
        std::thread::sleep(Duration::from_secs(3600 - into_hour + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_limit_in_redis_and_survive_its_loss() {
    away_from_a_window_edge();
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let mut redis = RedisServer::start(ws.path());
    ws.write("all.yaml", &config(echo.http));
    let controller = Controller::start(&ws.config, ws.path());
    let flags = ["--rate-limit-redis", &redis.url()];
    let proxies = [0, 1].map(|_| {
        Proxy::start_with(
            &controller.url(),
            "infra/gw",
            free_port() - 80,
            std::net::Ipv4Addr::LOCALHOST,
            ws.path(),
            &flags,
        )
    });
    for p in &proxies {
        p.wait_ready().await;
        eventually(Duration::from_secs(15), || async {
            status(p, "/", "probe").await == 200
        })
        .await;
    }

    // Alternating between the proxies, client "a" gets the limit, once, across both.
    let mut allowed = 0;
    let mut refused = [false, false];
    for i in 0..(LIMIT * 3) {
        let which = i % 2;
        match status(&proxies[which], "/open", "a").await {
            200 => allowed += 1,
            429 => refused[which] = true,
            other => panic!("status {other}"),
        }
        if refused == [true, true] {
            break;
        }
    }
    // Never more than the limit; at most a batch (2 here) unspent per proxy.
    assert!(
        (LIMIT - 4..=LIMIT).contains(&allowed),
        "{allowed} allowed for a fleet-wide limit of {LIMIT}"
    );
    assert_eq!(
        refused,
        [true, true],
        "both proxies refuse once it is used up"
    );
    assert_eq!(
        status(&proxies[0], "/open", "b").await,
        200,
        "another client"
    );
    let metrics = proxies[0].metrics().await;
    let reservations = metric_value(
        &metrics,
        "rauta_proxy_global_rate_limit_reservations_total{limit=\"apps/open/global/0\",route=\"\"}",
    );
    assert!(
        reservations > 0.0 && reservations < (LIMIT / 2) as f64,
        "one Redis request per batch, not per request: {reservations}\n{metrics}"
    );

    // Redis gone: a new client is let through where the limit fails open and refused with
    // 503 where it fails closed, at once.
    redis.stop();
    let started = std::time::Instant::now();
    assert_eq!(status(&proxies[0], "/open", "c").await, 200);
    assert_eq!(status(&proxies[1], "/closed", "c").await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}: requests must not wait for Redis",
        started.elapsed()
    );
    let errors = |m: &str| metric_value(m, "rauta_proxy_rate_limit_redis_errors_total");
    assert!(errors(&proxies[1].metrics().await) >= 1.0);
    // A client already used up stays refused without Redis.
    assert_eq!(status(&proxies[0], "/open", "a").await, 429);

    // Redis back (empty): the limits count again.
    redis.restart();
    eventually(Duration::from_secs(15), || async {
        status(&proxies[1], "/closed", "d").await == 200
    })
    .await;
    let mut allowed = 1;
    while status(&proxies[1], "/closed", "d").await == 200 {
        allowed += 1;
        assert!(allowed <= LIMIT, "past the limit after Redis came back");
    }
    assert!(allowed >= LIMIT - 2, "{allowed}");

    // Redis frozen: the connection stays up and nothing answers. One request waits out the
    // deadline; the others fail open at once for a second instead of each waiting 100 ms.
    let pid = redis.process.pid().to_string();
    let signal = |s: &str| {
        let ok = std::process::Command::new("kill").args([s, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {s}");
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    for i in 0..30 {
        let client = format!("frozen-{i}");
        assert_eq!(status(&proxies[0], "/open", &client).await, 200);
    }
    let took = started.elapsed();
    signal("-CONT");
    assert!(
        took < Duration::from_millis(1500),
        "30 requests took {took:?}: each waited for a silent Redis"
    );
    // And the connection made anew after the timeout counts again: a request for a new
    // client is counted in Redis, not let through for want of it.
    let failed_open = |m: &str| {
        metric_value(
            m,
            "rauta_proxy_global_rate_limit_requests_total{limit=\"apps/open/global/0\",route=\"\",result=\"failed_open\"}",
        )
    };
    let mut n = 0;
    let first = &proxies[0];
    eventually(Duration::from_secs(15), || {
        n += 1;
        let client = format!("thawed-{n}");
        async move {
            let before = failed_open(&first.metrics().await);
            let ok = status(first, "/open", &client).await == 200;
            ok && failed_open(&first.metrics().await) == before
        }
    })
    .await;
    let mut allowed = 0;
    while status(&proxies[0], "/open", "after-freeze-2").await == 200 {
        allowed += 1;
        assert!(allowed <= LIMIT, "past the limit after Redis thawed");
    }
    assert!(allowed >= LIMIT - 2, "{allowed}");
}
