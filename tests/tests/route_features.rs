//! Route features RAUTA claims in GatewayClass status whose upstream conformance cases are not
//! in tests/conformance (docs/conformance.md lists them), end to end through the real proxy:
//! listener isolation (GatewayHTTPListenerIsolation), method matches, a 307 redirect, the
//! backendRequest timeout and a request mirrored to two backends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rauta_tests::echo::{EchoIdentity, EchoServer};
use rauta_tests::harness::{Workspace, eventually, start_gateway};
use rauta_tests::manifests::{documents, gateway_class, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request on a fresh connection; returns the status and the raw head.
async fn request(addr: SocketAddr, method: &str, host: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        Some((status, text))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

async fn echo(pod: &str) -> EchoServer {
    let identity = EchoIdentity {
        pod: pod.into(),
        namespace: "apps".into(),
        ..Default::default()
    };
    EchoServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, None, identity)
        .await
        .unwrap()
}

const GATEWAY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: any, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: wild, port: 80, protocol: HTTP, hostname: "*.example.com", allowedRoutes: {namespaces: {from: All}}}
"#;

const ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-any, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: infra, sectionName: any}]
  hostnames: [bar.com, bar.example.com, "*.example.com"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /any}}]
    backendRefs: [{name: main, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-wild, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: infra, sectionName: wild}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /wild}}]
    backendRefs: [{name: main, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: features, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: infra, sectionName: any}]
  hostnames: [features.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /m}, method: POST}]
    backendRefs: [{name: other, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /m}}]
    backendRefs: [{name: main, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 307}
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 10s, backendRequest: 300ms}
    backendRefs: [{name: main, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: mirror-a, port: 8080}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: mirror-b, port: 8080}}}
    backendRefs: [{name: main, port: 8080}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_route_features_without_upstream_cases() {
    let main = echo("main-1-a").await;
    let other = echo("other-1-a").await;
    let mirror_a = echo("mirror-a-1-a").await;
    let mirror_b = echo("mirror-b-1-a").await;
    let ws = Workspace::new();
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            GATEWAY.to_owned(),
            service("apps", "main", &[main.http]),
            service("apps", "other", &[other.http]),
            service("apps", "mirror-a", &[mirror_a.http]),
            service("apps", "mirror-b", &[mirror_b.http]),
            ROUTES.to_owned(),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let addr = proxy.listener(80);
    eventually(Duration::from_secs(15), || async {
        request(addr, "GET", "features.test", "/m").await.0 == 200
    })
    .await;

    // Listener isolation: *.example.com belongs to the wild listener, whose routes answer it
    // even though on-any names bar.example.com and *.example.com; bar.com stays on-any's.
    assert_eq!(request(addr, "GET", "bar.com", "/any").await.0, 200);
    assert_eq!(request(addr, "GET", "bar.example.com", "/any").await.0, 404);
    assert_eq!(request(addr, "GET", "x.example.com", "/any").await.0, 404);
    assert_eq!(
        request(addr, "GET", "bar.example.com", "/wild").await.0,
        200
    );

    // Method matches (HTTPRouteMethodMatching).
    let (status, post) = request(addr, "POST", "features.test", "/m").await;
    assert!(status == 200 && post.contains("other-1-a"), "{post}");
    let (status, get) = request(addr, "GET", "features.test", "/m").await;
    assert!(status == 200 && get.contains("main-1-a"), "{get}");

    // A 307 redirect to https (HTTPRoute307RedirectStatusCode, HTTPRouteSchemeRedirect).
    let (status, moved) = request(addr, "GET", "features.test", "/moved/x").await;
    assert_eq!(status, 307, "{moved}");
    assert!(
        moved
            .to_ascii_lowercase()
            .contains("location: https://features.test/moved/x"),
        "{moved}"
    );

    // The backendRequest timeout (HTTPRouteBackendTimeout): a 2 s answer is cut at 300 ms.
    let started = std::time::Instant::now();
    assert_eq!(
        request(addr, "GET", "features.test", "/slow?delay=2s")
            .await
            .0,
        504
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        request(addr, "GET", "features.test", "/slow?delay=10ms")
            .await
            .0,
        200
    );

    // Two mirrors both get a copy (HTTPRouteRequestMultipleMirrors).
    assert_eq!(
        request(addr, "GET", "features.test", "/mirror?id=42")
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(5), || async {
        [&mirror_a, &mirror_b]
            .iter()
            .all(|m| m.received().iter().any(|t| t == "/mirror?id=42"))
    })
    .await;
}
