//! TLS passthrough end to end: a TLS listener in Passthrough mode routes connections by the
//! ClientHello's server name to the TLSRoute's backend, which terminates TLS itself (the client
//! sees the backend's certificate); an unknown name is refused; the connections show in the
//! relays' metrics; the routes and the listener report TLSRoute status.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use rauta_tests::echo::{EchoIdentity, EchoServer, EchoTls};
use rauta_tests::harness::{
    Controller, Proxy, Workspace, eventually, free_port, https_get, metric_value,
};
use rauta_tests::manifests::{documents, gateway_class, service};

fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

async fn tls_backend(pod: &str, name: &str) -> (EchoServer, String, Vec<u8>) {
    let (cert, key, der) = self_signed(name);
    let identity = EchoIdentity {
        pod: pod.into(),
        namespace: "apps".into(),
        ..Default::default()
    };
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut echo = EchoServer::start(localhost, 0, None, identity)
        .await
        .unwrap();
    let tls = EchoTls {
        chain_pem: cert.clone(),
        key_pem: key,
        client_cas_pem: None,
    };
    echo.serve_tls(localhost, 0, &tls).await.unwrap();
    (echo, cert, der)
}

fn tls_route(name: &str, hostname: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [{hostname}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_routes_by_server_name_without_terminating() {
    let ws = Workspace::new();
    let (a, a_cert, a_der) = tls_backend("a-1-x", "a.example.com").await;
    let (b, b_cert, b_der) = tls_backend("b-1-x", "*.b.example.com").await;
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - name: tls\n    port: 443\n    protocol: TLS\n    tls: {mode: Passthrough}\n    allowedRoutes: {namespaces: {from: All}, kinds: [{kind: TLSRoute}]}\n";
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway.to_owned(),
            service("apps", "a", &[a.https.unwrap()]),
            service("apps", "b", &[b.https.unwrap()]),
            tls_route("to-a", "a.example.com", "a"),
            tls_route("to-b", "'*.b.example.com'", "b"),
        ]),
    );
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 443, ws.path());
    proxy.wait_ready().await;
    let addr = proxy.listener(443);
    let trusted = [a_cert.as_str(), b_cert.as_str()];

    // The backend's own certificate reaches the client: the proxy did not terminate TLS.
    let r = https_get(addr, "a.example.com", &trusted, false, "/hello")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.peer_certificate.clone()),
        (200, a_der),
        "{r:?}"
    );
    let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echoed["tls"]["serverName"], "a.example.com");
    assert_eq!(echoed["pod"], "a-1-x");
    // HTTP/2 over the relayed TLS works too (ALPN is between client and backend).
    let r = https_get(addr, "a.example.com", &trusted, true, "/h2")
        .await
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echoed["proto"], "HTTP/2.0");

    // A wildcard TLSRoute hostname; the backend sees the name the client sent.
    let r = https_get(addr, "x.b.example.com", &trusted, false, "/")
        .await
        .unwrap();
    assert_eq!(r.peer_certificate, b_der);
    let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echoed["tls"]["serverName"], "x.b.example.com");

    // No TLSRoute for the name: the connection is closed, nothing answers.
    let r = https_get(addr, "c.example.com", &trusted, false, "/").await;
    assert!(r.is_err(), "{r:?}");

    // Passthrough connections are relays like the others: counted per route, and the
    // unroutable one too.
    let m = proxy.metrics().await;
    let connections = |route: &str| {
        metric_value(
            &m,
            &format!("rauta_proxy_l4_connections_total{{route=\"apps/{route}/rule/0\"}}"),
        )
    };
    assert_eq!(
        (connections("to-a"), connections("to-b")),
        (2.0, 1.0),
        "{m}"
    );
    assert!(
        metric_value(&m, "rauta_proxy_l4_unrouted_total") >= 1.0,
        "{m}"
    );

    // Status: routes accepted, the listener serves TLSRoute with both attached.
    eventually(Duration::from_secs(10), || async {
        let Ok(response) = controller
            .admin()
            .await
            .list_statuses(rauta_common::api::v1::ListStatusesRequest::default())
            .await
        else {
            return false;
        };
        let statuses = response.into_inner().objects;
        let accepted = statuses
            .iter()
            .filter(|o| o.kind == "TLSRoute")
            .filter(|o| {
                o.parents.iter().any(|p| {
                    p.conditions
                        .iter()
                        .any(|c| c.r#type == "Accepted" && c.status == "True")
                })
            })
            .count();
        let listener = statuses
            .iter()
            .find(|o| o.kind == "Gateway" && o.name == "gw")
            .and_then(|g| g.listeners.first().cloned());
        accepted == 2
            && listener.is_some_and(|l| {
                l.attached_routes == 2 && l.supported_kinds.iter().any(|k| k.kind == "TLSRoute")
            })
    })
    .await;
    drop(a);
}
