//! Requests through the real proxy reach the right backend: exact, prefix and regular-expression
//! paths, header and query matches, weights, Maglev stickiness, and the documented error statuses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use rauta_tests::harness::{
    Controller, Echo, Proxy, RefusingPort, eventually, free_port, http_get, http_request,
};
use rauta_tests::manifests::{documents, gateway, gateway_class, http_route, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_path_header_and_weight() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let api = Echo::start("api-7d9f-x1", "apps", work.path());
    let v1 = Echo::start("web-v1-5c4b-a1", "apps", work.path());
    let v2 = Echo::start("web-v2-6d5c-b2", "apps", work.path());
    let sticky: Vec<Echo> = (0..3)
        .map(|i| Echo::start(&format!("sticky-0-{i}"), "apps", work.path()))
        .collect();
    let refusing = RefusingPort::bind();
    let dead_port = refusing.addr.port();

    let rules = r#"  - matches:
    - path: {type: Exact, value: /exact}
    backendRefs:
    - {name: api, port: 8080}
  - matches:
    - path: {type: PathPrefix, value: /web}
      headers:
      - {name: X-Canary, value: "yes"}
    backendRefs:
    - {name: web-v2, port: 8080}
  - matches:
    - path: {type: PathPrefix, value: /web}
    backendRefs:
    - {name: web-v1, port: 8080, weight: 3}
    - {name: web-v2, port: 8080, weight: 1}
  - matches:
    - path: {type: RegularExpression, value: "/items/[0-9]+"}
      headers:
      - {type: RegularExpression, name: X-Tier, value: "gold|silver"}
      queryParams:
      - {type: RegularExpression, name: v, value: "[0-9]+"}
    backendRefs:
    - {name: api, port: 8080}
  - matches:
    - path: {type: PathPrefix, value: /sticky}
    backendRefs:
    - {name: sticky, port: 8080}
  - matches:
    - path: {type: PathPrefix, value: /empty}
    backendRefs:
    - {name: empty, port: 8080}
  - matches:
    - path: {type: PathPrefix, value: /dead}
    backendRefs:
    - {name: dead, port: 8080}
  - matches:
    - path: {type: PathPrefix, value: /missing}
    backendRefs:
    - {name: no-such-service, port: 8080}
"#;
    let sticky_addrs: Vec<_> = sticky.iter().map(|e| e.http).collect();
    let yaml = documents(&[
        gateway_class("rauta"),
        gateway("infra", "gw", "rauta", &[("http", 80, None)]),
        service("apps", "api", &[api.http]),
        service("apps", "web-v1", &[v1.http]),
        service("apps", "web-v2", &[v2.http]),
        service("apps", "sticky", &sticky_addrs),
        service("apps", "empty", &[]),
        service(
            "apps",
            "dead",
            &[format!("127.0.0.1:{dead_port}").parse().unwrap()],
        ),
        http_route("apps", "web", ("infra", "gw"), &["example.com"], rules),
    ]);
    std::fs::write(config.join("gateway.yaml"), yaml).unwrap();

    let controller = Controller::start(&config, work.path());
    let offset = free_port() - 80;
    let proxy = Proxy::start(&controller.url(), "infra/gw", offset, work.path());
    proxy.wait_ready().await;
    let base = format!("http://{}", proxy.listener(80));

    // Exact path.
    let r = http_get(&format!("{base}/exact"), Some("example.com"))
        .await
        .unwrap();
    assert_eq!((r.status, r.pod()), (200, api.pod.clone()), "{r:?}");
    let echo = r.echo().unwrap();
    assert_eq!(echo["path"], "/exact");
    assert_eq!(echo["host"], "example.com");
    assert_eq!(echo["headers"]["X-Forwarded-For"][0], "127.0.0.1");
    // Dot segments are resolved before routing, and the backend sees the resolved path.
    let r = http_get(&format!("{base}/web/../exact"), Some("example.com"))
        .await
        .unwrap();
    assert_eq!((r.status, r.pod()), (200, api.pod.clone()), "{r:?}");
    assert_eq!(r.echo().unwrap()["path"], "/exact");
    // The same listener speaks cleartext HTTP/2 with prior knowledge.
    let h2 = h2c_get(&format!("{base}/exact"), "example.com").await;
    assert_eq!(h2["pod"], api.pod.as_str());
    assert_eq!(
        h2["host"], "example.com",
        "the :authority reaches an HTTP/1.1 upstream as Host"
    );
    assert_eq!(h2["proto"], "HTTP/1.1");
    // Exact does not match a longer path, and no other rule takes /exact/more.
    let r = http_get(&format!("{base}/exact/more"), Some("example.com"))
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // Regular expressions match the whole path, header value and query parameter.
    for (path, tier, status) in [
        ("/items/42?v=7", "gold", 200),
        ("/items/42?v=7", "silver", 200),
        ("/items/42?v=7", "bronze", 404),
        ("/items/42?v=x", "gold", 404),
        ("/items/42/more?v=7", "gold", 404),
        ("/x/items/42?v=7", "gold", 404),
    ] {
        let r = http_request(
            &format!("{base}{path}"),
            Some("example.com"),
            &[("x-tier", tier)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, status, "{path} {tier}: {r:?}");
        if status == 200 {
            assert_eq!(r.pod(), api.pod, "{path} {tier}");
        }
    }

    // Header match wins over the plain prefix (more header matches = higher precedence).
    for _ in 0..10 {
        let r = http_request(
            &format!("{base}/web/x"),
            Some("example.com"),
            &[("x-canary", "yes")],
            None,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.pod()), (200, v2.pod.clone()));
    }

    // Weights 3:1 over 800 requests: expect 75% to v1 (binomial sd 1.5%; allow 6 sd).
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..800 {
        let r = http_get(&format!("{base}/web/page?i={i}"), Some("example.com"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        *counts.entry(r.pod()).or_default() += 1;
    }
    let share_v1 = f64::from(counts[&v1.pod]) / 800.0;
    assert!(
        (0.66..=0.84).contains(&share_v1),
        "web-v1 share {share_v1} ({counts:?})"
    );
    assert_eq!(counts.len(), 2, "{counts:?}");

    // Maglev on the client address: one source address sticks to one endpoint, many spread.
    let mut pods_seen = HashMap::new();
    for last in 2..40u8 {
        let source: IpAddr = format!("127.0.0.{last}").parse().unwrap();
        let mut pods = Vec::new();
        for _ in 0..4 {
            let r = http_request(
                &format!("{base}/sticky"),
                Some("example.com"),
                &[],
                Some(source),
            )
            .await
            .unwrap();
            pods.push(r.pod());
        }
        let first = pods[0].clone();
        assert!(
            pods.iter().all(|p| *p == first),
            "source {source} moved between endpoints: {pods:?}"
        );
        *pods_seen.entry(first).or_insert(0) += 1;
    }
    assert_eq!(
        pods_seen.len(),
        3,
        "38 client addresses should reach all 3 endpoints: {pods_seen:?}"
    );

    // Errors: no ready endpoint 503, upstream refusing connections 502, unresolved backend 500,
    // unknown host 404.
    for (path, host, status) in [
        ("/empty", "example.com", 503),
        ("/dead", "example.com", 502),
        ("/missing", "example.com", 500),
        ("/exact", "other.org", 404),
    ] {
        let r = http_get(&format!("{base}{path}"), Some(host))
            .await
            .unwrap();
        assert_eq!(r.status, status, "{path} on {host}: {r:?}");
    }

    // The requests show up in Prometheus metrics per route rule and status class.
    let metrics = proxy.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "rauta_proxy_requests_total{route=\"apps/web/rule/2\",status_class=\"2xx\"}",
            )
        })
        .unwrap_or_else(|| panic!("no metric for rule 2:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 800.0, "{line}");
    assert!(
        metrics
            .contains("rauta_proxy_upstream_response_seconds_bucket{cluster=\"apps/web-v1:8080\"")
    );
    eventually(Duration::from_secs(5), || async {
        !controller.proxies().await.is_empty()
    })
    .await;
}

/// One GET over cleartext HTTP/2 with prior knowledge on a raw connection, so :authority can
/// name the virtual host while the socket goes to the proxy; returns the echoed JSON.
async fn h2c_get(url: &str, authority_host: &str) -> serde_json::Value {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    let uri: http::Uri = url.parse().unwrap();
    let addr = uri.authority().unwrap().as_str().parse().unwrap();
    let mut sender = rauta_tests::harness::h2c_connect(addr).await;
    let target = format!("http://{authority_host}{}", uri.path());
    let req = http::Request::get(target)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}
