//! ResponseCache objects (gateway.rauta.dev/v1alpha1) named by ExtensionRef filters, end to
//! end through the real controller, proxy and echo backend: a cacheable backend answer is kept
//! and served (Age, Cache-Status) over HTTP/1.1, HTTP/2 and HTTPS until it is stale; requests
//! with credentials or no-cache bypass it; answers the backend keeps private are not kept;
//! the counters show what the cache did.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rauta_tests::harness::{
    Echo, HttpResponse, Proxy, Workspace, eventually, h2c_connect, http_request, https_request,
    metric_value, start_gateway_at,
};
use rauta_tests::manifests::{documents, gateway_class, service, tls_secret};

/// The echo backend sets the fields it is told to (items split at commas; a name given twice
/// gets both values, comma-joined).
const CACHEABLE: &str = "Cache-Control: max-age=60";

fn config(cert: &str, key: &str, echo: std::net::SocketAddr) -> String {
    documents(&[
        gateway_class("rauta"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n  - {name: https, port: 81, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}, allowedRoutes: {namespaces: {from: All}}}\n".to_owned(),
        tls_secret("infra", "cert", cert, key),
        service("apps", "echo", &[echo]),
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: ResponseCache\nmetadata: {name: flags, namespace: apps}\nspec: {maxTTL: 3s, statuses: [200]}\n".to_owned(),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /flags}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: ResponseCache, name: flags}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - backendRefs: [{name: echo, port: 8080}]\n".to_owned(),
    ])
}

/// A GET on the HTTP listener with the backend told to send `cache_control`; `n` is echoed
/// back, so an answer from the cache shows the `n` of the request that filled it.
async fn get(proxy: &Proxy, path: &str, n: u32, extra: &[(&str, &str)]) -> HttpResponse {
    let url = format!("http://{}{path}", proxy.listener(80));
    let n = n.to_string();
    let mut headers = vec![("x-echo-set-header", CACHEABLE), ("x-n", n.as_str())];
    headers.extend_from_slice(extra);
    http_request(&url, Some("flags.example"), &headers, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The `x-n` the backend saw for the request whose answer this is.
fn n_of(body: &str) -> String {
    let echoed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    echoed["headers"]["X-N"][0]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn cache_status(resp: &HttpResponse) -> &str {
    resp.headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacheable_answers_are_kept_and_served_until_stale_on_every_listener() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["flags.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    ws.write(
        "all.yaml",
        &config(&cert.pem(), &key.serialize_pem(), echo.http),
    );
    let (_controller, proxy) = start_gateway_at(&ws, 80, 2, &[]).await;
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "/other", 0, &[]).await.status == 200
    })
    .await;

    // A miss fills the cache; the next request is answered from it.
    let first = get(&proxy, "/flags", 1, &[]).await;
    assert_eq!(
        (first.status, cache_status(&first)),
        (200, "rauta; fwd=uri-miss; stored"),
        "{first:?}"
    );
    assert_eq!(n_of(&first.body), "1");
    let hit = get(&proxy, "/flags", 2, &[]).await;
    assert_eq!(cache_status(&hit), "rauta; hit", "{hit:?}");
    assert_eq!(n_of(&hit.body), "1", "answered from the cache");
    assert_eq!(hit.body, first.body);
    assert_eq!(hit.headers["cache-control"], "max-age=60");
    assert!(hit.headers.contains_key("age"));
    assert_eq!(
        hit.headers["content-length"],
        first.headers["content-length"]
    );

    // Credentials and no-cache go to the backend, and their answers are not kept.
    for (i, header) in [
        ("cookie", "session=1"),
        ("authorization", "Bearer t"),
        ("cache-control", "no-cache"),
    ]
    .into_iter()
    .enumerate()
    {
        let n = 10 + u32::try_from(i).unwrap();
        let bypass = get(&proxy, "/flags", n, &[header]).await;
        assert_eq!(cache_status(&bypass), "rauta; fwd=request", "{header:?}");
        assert_eq!(n_of(&bypass.body), n.to_string());
    }
    assert_eq!(n_of(&get(&proxy, "/flags", 3, &[]).await.body), "1");

    // The query is part of the key.
    let other = get(&proxy, "/flags?v=2", 4, &[]).await;
    assert_eq!(cache_status(&other), "rauta; fwd=uri-miss; stored");
    assert_eq!(n_of(&get(&proxy, "/flags?v=2", 5, &[]).await.body), "4");

    // An answer the backend keeps private is forwarded every time.
    let private = [(
        "x-echo-set-header",
        "Cache-Control: private,Cache-Control: max-age=60",
    )];
    let url = format!("http://{}/flags/private", proxy.listener(80));
    for n in ["20", "21"] {
        let resp = http_request(&url, None, &[private[0], ("x-n", n)], None)
            .await
            .unwrap();
        assert_eq!(cache_status(&resp), "rauta; fwd=uri-miss");
        assert_eq!(n_of(&resp.body), n);
    }

    // HTTP/2 on the same listener: the same key, so the same answer.
    let mut h2 = h2c_connect::<Empty<Bytes>>(proxy.listener(80)).await;
    let req = http::Request::get("http://flags.example/flags")
        .header("x-n", "30")
        .body(Empty::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert!(
        resp.headers()["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("rauta; hit")
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(n_of(&String::from_utf8_lossy(&body)), "1");

    // HEAD from the kept GET answer: its head, no body.
    let req = http::Request::head("http://flags.example/flags")
        .body(Empty::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert!(
        resp.headers()["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("rauta; hit")
    );
    assert_eq!(
        resp.headers()["content-length"],
        first.headers["content-length"]
    );
    assert!(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    // HTTPS: answers are kept by scheme too (the backend may answer differently).
    let trusted = [cert.pem()];
    let trusted = [trusted[0].as_str()];
    let https = async |n: &'static str| {
        let headers = [("x-echo-set-header", CACHEABLE), ("x-n", n)];
        https_request(
            proxy.listener(81),
            "flags.example",
            &trusted,
            false,
            "/flags",
            &headers,
        )
        .await
    };
    let tls_first = https("40").await.unwrap();
    assert_eq!(
        tls_first.headers["cache-status"],
        "rauta; fwd=uri-miss; stored"
    );
    let tls_hit = https("41").await.unwrap();
    assert!(
        tls_hit.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("rauta; hit")
    );
    assert_eq!(n_of(&tls_hit.body), "40");

    // maxTTL (3 s) ends the entry although the backend allowed 60 s.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let refreshed = get(&proxy, "/flags", 50, &[]).await;
    assert_eq!(cache_status(&refreshed), "rauta; fwd=uri-miss; stored");
    assert_eq!(n_of(&refreshed.body), "50");

    let metrics = proxy.metrics().await;
    let series = |result: &str| {
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_cache_requests_total{{route=\"apps/web/rule/0\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(series("bypass"), 3.0, "{metrics}");
    assert_eq!(series("miss"), 2.0);
    assert!(series("hit") >= 6.0, "{metrics}");
    assert_eq!(series("stored"), 4.0);
}
