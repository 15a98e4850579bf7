//! DirectResponse objects (gateway.rauta.dev/v1alpha1) named by ExtensionRef filters, end to
//! end through the real controller and proxy, read from a directory and from the Kubernetes
//! API: the rule answers with the object's status, headers and body, over HTTP/1.1 (HEAD
//! included) and HTTP/2; an edit to the object changes the answer live; a rule whose object
//! is gone answers 500 while the route's other rules keep forwarding.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rauta_tests::fake_kube::FakeApiServer;
use rauta_tests::harness::{
    Controller, Echo, HttpResponse, Proxy, Workspace, eventually, eventually_served_by, free_port,
    h2c_connect, http_get, start_gateway,
};
use rauta_tests::manifests::infra;

fn direct_response(body: &str) -> String {
    format!(
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: DirectResponse\nmetadata: {{name: healthz, namespace: apps}}\nspec:\n  status: 200\n  contentType: application/json\n  body: '{body}'\n  headers: [{{name: Cache-Control, value: max-age=5}}]\n"
    )
}

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - matches: [{path: {type: Exact, value: /healthz}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: DirectResponse, name: healthz}}]\n  - backendRefs: [{name: blue, port: 8080}]\n";

async fn get(proxy: &Proxy, path: &str) -> HttpResponse {
    let url = format!("http://{}{path}", proxy.listener(80));
    http_get(&url, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Waits until /healthz answers with `body`.
async fn answers(proxy: &Proxy, body: &str) {
    eventually(Duration::from_secs(15), || async {
        get(proxy, "/healthz").await.body == body
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_response_answers_its_rule_and_follows_its_object() {
    let ws = Workspace::new();
    let blue = Echo::start("blue-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("blue", &[blue.http])]));
    ws.write("route.yaml", ROUTE);
    ws.write("answer.yaml", &direct_response(r#"{"status":"ok"}"#));
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    answers(&proxy, r#"{"status":"ok"}"#).await;

    let resp = get(&proxy, "/healthz").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["content-type"], "application/json");
    assert_eq!(resp.headers["cache-control"], "max-age=5");
    assert_eq!(resp.headers["content-length"], "15");
    // The route's other rule still forwards.
    assert_eq!(get(&proxy, "/other").await.pod(), blue.pod);

    // HEAD: the same head, no body.
    let head = async {
        let mut h2 = h2c_connect::<Empty<Bytes>>(proxy.listener(80)).await;
        let req = http::Request::head("http://gw.test/healthz")
            .body(Empty::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        let content_type = resp.headers()["content-type"].clone();
        (
            resp.status(),
            content_type,
            resp.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    let (status, content_type, body) = head.await;
    assert_eq!(
        (status.as_u16(), &content_type, body.len()),
        (200, &"application/json".parse().unwrap(), 0)
    );
    // HTTP/2 GET.
    let mut h2 = h2c_connect::<Empty<Bytes>>(proxy.listener(80)).await;
    let req = http::Request::get("http://gw.test/healthz")
        .body(Empty::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "max-age=5");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"status":"ok"}"#);

    // An edit to the object reaches the proxy.
    ws.write("answer.yaml", &direct_response(r#"{"status":"draining"}"#));
    answers(&proxy, r#"{"status":"draining"}"#).await;

    // Gone: the rule answers 500 (its filter must not be skipped), the other rule forwards.
    ws.remove("answer.yaml");
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "/healthz").await.status == 500
    })
    .await;
    assert_eq!(get(&proxy, "/other").await.pod(), blue.pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_are_read_from_the_kubernetes_api() {
    let ws = Workspace::new();
    let blue = Echo::start("blue-1-a", "apps", ws.path());
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("blue", &[blue.http])]));
    fake.apply_yaml(ROUTE);
    fake.apply_yaml(&direct_response("up"));
    let kubeconfig = fake.kubeconfig(ws.path());
    let controller = Controller::start_kubernetes(&kubeconfig, ws.path(), &[]);
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    eventually_served_by(
        &format!("http://{}/other", proxy.listener(80)),
        &blue.pod,
        Duration::from_secs(20),
    )
    .await;
    answers(&proxy, "up").await;
    fake.apply_yaml(&direct_response("changed"));
    answers(&proxy, "changed").await;
}
