//! The UDP relay end to end (UDPRoute on a UDP listener): a client flow keeps its upstream
//! socket across a snapshot swap that keeps its route, and ends when its route goes or after
//! the idle timeout; a flood of new clients stays within the flow bound; an endpoint that
//! refuses (ICMP port unreachable) is ejected and new flows go elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rauta_tests::echo::EchoIdentity;
use rauta_tests::harness::{Workspace, eventually, metric_value, start_gateway_at};
use rauta_tests::l4_echo::{UdpEcho, UdpMode};
use rauta_tests::manifests::{documents, gateway_class, service};
use tokio::net::UdpSocket;

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: udp, port: 5300, protocol: UDP, allowedRoutes: {namespaces: {from: All}}}\n  - {name: other, port: 5301, protocol: UDP, allowedRoutes: {namespaces: {from: All}}}\n";

fn udp_route(name: &str, section: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: UDPRoute\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: {section}}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"
    )
}

async fn echo(pod: &str) -> UdpEcho {
    let identity = EchoIdentity {
        pod: pod.into(),
        namespace: "apps".into(),
        ..Default::default()
    };
    UdpEcho::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, identity, UdpMode::Echo)
        .await
        .unwrap()
}

async fn client(target: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket.connect(target).await.unwrap();
    socket
}

/// Sends a datagram; the answering pod, or `None` without an answer in time.
async fn probe(socket: &UdpSocket, wait: Duration) -> Option<String> {
    socket.send(b"probe").await.ok()?;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&buf[..n]).ok()?;
    Some(v["pod"].as_str()?.to_owned())
}

/// Probes until the relay answers.
async fn answered(socket: &UdpSocket) -> String {
    for _ in 0..100 {
        if let Some(pod) = probe(socket, Duration::from_millis(200)).await {
            return pod;
        }
    }
    panic!("no answer through the relay");
}

const FLOWS: &str = "rauta_proxy_udp_flows ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_survive_swaps_expire_and_stay_within_the_bound() {
    let ws = Workspace::new();
    let (a, b) = (echo("a-1-x").await, echo("b-1-x").await);
    let write = |routes: &[String]| {
        let mut docs = vec![
            gateway_class("rauta"),
            GATEWAY.to_owned(),
            service("apps", "a", &[a.addr]),
            service("apps", "b", &[b.addr]),
        ];
        docs.extend(routes.iter().cloned());
        ws.write("all.yaml", &documents(&docs));
    };
    write(&[udp_route("to-a", "udp", "a")]);
    let flags = ["--udp-idle-timeout-ms", "8000", "--udp-max-flows", "20"];
    let (_controller, proxy) = start_gateway_at(&ws, 5300, 2, &flags).await;
    let flow = client(proxy.listener(5300)).await;
    assert_eq!(answered(&flow).await, "a-1-x");
    let opened = |m: &str| {
        metric_value(
            m,
            "rauta_proxy_l4_connections_total{route=\"apps/to-a/rule/0\"}",
        )
    };
    let before = opened(&proxy.metrics().await);

    // A snapshot that adds a route elsewhere: the flow goes on on the same upstream socket.
    write(&[
        udp_route("to-a", "udp", "a"),
        udp_route("to-b", "other", "b"),
    ]);
    let other = client(proxy.listener(5301)).await;
    assert_eq!(answered(&other).await, "b-1-x");
    assert_eq!(
        probe(&flow, Duration::from_secs(2)).await.as_deref(),
        Some("a-1-x")
    );
    assert_eq!(opened(&proxy.metrics().await), before, "no new flow");

    // Its route removed, the flow ends before its idle timeout; new datagrams find no route.
    write(&[udp_route("to-b", "other", "b")]);
    eventually(Duration::from_secs(6), || async {
        let m = proxy.metrics().await;
        metric_value(
            &m,
            "rauta_proxy_l4_connections_active{route=\"apps/to-a/rule/0\"}",
        ) == 0.0
    })
    .await;
    assert_eq!(probe(&flow, Duration::from_millis(300)).await, None);

    // The other flow expires after 8 s without a datagram.
    eventually(Duration::from_secs(20), || async {
        let m = proxy.metrics().await;
        metric_value(&m, FLOWS) == 0.0
            && metric_value(&m, "rauta_proxy_udp_flows_expired_total ") >= 1.0
    })
    .await;

    // A flood from 200 source ports: at most 20 flows; the rest is dropped and counted.
    let target = proxy.listener(5301);
    let mut sockets = Vec::new();
    for _ in 0..200 {
        let s = client(target).await;
        s.send(b"flood").await.unwrap();
        sockets.push(s);
    }
    // (A loaded machine may drop some of the flood before the proxy reads it.)
    eventually(Duration::from_secs(20), || async {
        let m = proxy.metrics().await;
        metric_value(&m, "rauta_proxy_udp_flows_refused_total ") >= 100.0
    })
    .await;
    let m = proxy.metrics().await;
    assert!(
        metric_value(&m, FLOWS) <= 20.0,
        "{}",
        metric_value(&m, FLOWS)
    );
    assert!(
        b.received() <= 1 + 20 + 20,
        "{} datagrams reached the backend",
        b.received()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_avoid_an_endpoint_that_refuses() {
    let ws = Workspace::new();
    let live = echo("live-1-x").await;
    // A UDP port nothing listens on: datagrams sent there come back as ICMP port unreachable.
    let dead = {
        let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        s.local_addr().unwrap()
    };
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            GATEWAY.to_owned(),
            service("apps", "db", &[dead, live.addr]),
            udp_route("db", "udp", "db"),
        ]),
    );
    let (_controller, proxy) = start_gateway_at(&ws, 5300, 2, &[]).await;
    let target = proxy.listener(5300);
    // Each new client is a new flow; one that lands on the refusing endpoint gets no answer,
    // and after 5 refusals in a row (the default outlier detection) the endpoint is ejected:
    // then every new client is answered by the live one.
    let mut answers = Vec::new();
    let mut in_a_row = 0;
    while in_a_row < 10 {
        assert!(answers.len() < 60, "{answers:?}");
        let s = client(target).await;
        let answer = probe(&s, Duration::from_secs(1)).await;
        in_a_row = match answer.as_deref() {
            Some("live-1-x") => in_a_row + 1,
            _ => 0,
        };
        answers.push(answer);
    }
    // At most the refusals that eject the endpoint went unanswered.
    let unanswered = answers.iter().filter(|a| a.is_none()).count();
    assert!(unanswered <= 5, "{answers:?}");
}
