//! The TCP relay end to end (TCPRoute on a TCP listener, TLSRoute on a TLS Terminate
//! listener): a connection survives a snapshot swap that keeps its route and is closed when
//! its route goes (and its metric series once nothing uses them); an idle connection is
//! closed after the idle timeout; a backend that refuses connections is passed over; TLS is
//! terminated with the listener's certificate and the plaintext relayed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rauta_tests::echo::EchoIdentity;
use rauta_tests::harness::{RefusingPort, Workspace, eventually, metric_value, start_gateway_at};
use rauta_tests::l4_echo::{TCP_WELCOME, TcpEcho};
use rauta_tests::manifests::{documents, gateway_class, service};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: tcp, port: 9000, protocol: TCP, allowedRoutes: {namespaces: {from: All}}}\n  - {name: other, port: 9001, protocol: TCP, allowedRoutes: {namespaces: {from: All}}}\n";

fn tcp_route(name: &str, section: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: {section}}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"
    )
}

async fn echo(pod: &str) -> TcpEcho {
    let identity = EchoIdentity {
        pod: pod.into(),
        namespace: "apps".into(),
        ..Default::default()
    };
    TcpEcho::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, identity, None)
        .await
        .unwrap()
}

/// A session with a TCP echo through the proxy: reads the welcome line on connect.
struct Session<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn start(stream: S) -> Result<Self, String> {
        let mut s = Session {
            stream: BufReader::new(stream),
        };
        let mut line = String::new();
        s.stream
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        match line == TCP_WELCOME {
            true => Ok(s),
            false => Err(format!("welcome {line:?}")),
        }
    }

    /// Sends a command; the answer line, or `None` when the connection closed.
    async fn ask(&mut self, cmd: &str) -> Option<String> {
        let line = format!("{cmd}\n");
        let sent = self.stream.get_mut().write_all(line.as_bytes());
        sent.await.ok()?;
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_line(&mut line));
        match read.await {
            Ok(Ok(n)) if n > 0 => Some(line.trim_end().to_owned()),
            _ => None,
        }
    }

    async fn pod(&mut self) -> String {
        let test = self.ask("TEST").await.expect("TEST answered");
        let v: serde_json::Value = serde_json::from_str(&test).unwrap();
        v["pod"].as_str().unwrap().to_owned()
    }
}

async fn connect(addr: SocketAddr) -> Result<Session<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let session = tokio::time::timeout(Duration::from_secs(5), Session::start(tcp));
    session.await.map_err(|_| "no welcome".to_owned())?
}

/// Waits until a connection to `addr` is relayed.
async fn relayed(addr: SocketAddr) -> Session<TcpStream> {
    for _ in 0..100 {
        if let Ok(s) = connect(addr).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} never relayed a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_survive_swaps_and_close_with_their_route() {
    let ws = Workspace::new();
    let (a, b) = (echo("a-1-x").await, echo("b-1-x").await);
    let write = |routes: &[String]| {
        let mut docs = vec![
            gateway_class("rauta"),
            GATEWAY.to_owned(),
            service("apps", "a", &[a.plain]),
            service("apps", "b", &[b.plain]),
        ];
        docs.extend(routes.iter().cloned());
        ws.write("all.yaml", &documents(&docs));
    };
    write(&[tcp_route("to-a", "tcp", "a")]);
    let (_controller, proxy) = start_gateway_at(&ws, 9000, 2, &[]).await;
    let mut session = relayed(proxy.listener(9000)).await;
    assert_eq!(session.pod().await, "a-1-x");

    // A snapshot that adds a route elsewhere leaves the connection as it was.
    write(&[
        tcp_route("to-a", "tcp", "a"),
        tcp_route("to-b", "other", "b"),
    ]);
    let mut other = relayed(proxy.listener(9001)).await;
    assert_eq!(other.pod().await, "b-1-x");
    assert_eq!(session.ask("PING").await.as_deref(), Some("PONG"));
    assert_eq!(session.pod().await, "a-1-x");

    // Its route removed, the connection is closed; the other route's stays open.
    write(&[tcp_route("to-b", "other", "b")]);
    eventually(Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        metric_value(
            &m,
            "rauta_proxy_l4_connections_active{route=\"apps/to-a/rule/0\"}",
        ) == 0.0
    })
    .await;
    assert_eq!(session.ask("PING").await, None, "closed with its route");
    assert_eq!(other.ask("PING").await.as_deref(), Some("PONG"));
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "rauta_proxy_l4_connections_total{route=\"apps/to-b/rule/0\"}"
        ),
        1.0
    );
    // Bytes are counted when a connection ends.
    drop(other);
    eventually(Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        metric_value(
            &m,
            "rauta_proxy_l4_bytes_total{direction=\"out\",route=\"apps/to-b/rule/0\"}",
        ) > 0.0
    })
    .await;

    // The removed route's series go once nothing uses them, at a later snapshot: a proxy
    // that sees routes come and go does not keep a series per route it ever had.
    write(&[
        tcp_route("to-b", "other", "b"),
        tcp_route("to-b-again", "tcp", "b"),
    ]);
    eventually(Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        m.contains("route=\"apps/to-b-again/rule/0\"") && !m.contains("apps/to-a/")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed_after_the_idle_timeout() {
    let ws = Workspace::new();
    let a = echo("a-1-x").await;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            GATEWAY.to_owned(),
            service("apps", "a", &[a.plain]),
            tcp_route("to-a", "tcp", "a"),
        ]),
    );
    let flags = ["--tcp-idle-timeout-ms", "600"];
    let (_controller, proxy) = start_gateway_at(&ws, 9000, 2, &flags).await;
    let mut busy = relayed(proxy.listener(9000)).await;
    let mut quiet = connect(proxy.listener(9000)).await.expect("relayed");
    // Traffic every 200 ms keeps a connection open past the timeout...
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(busy.ask("PING").await.as_deref(), Some("PONG"));
    }
    // ...while the one that said nothing for 1.6 s was closed.
    assert_eq!(quiet.ask("PING").await, None, "closed when idle");
    let m = proxy.metrics().await;
    assert!(metric_value(&m, "rauta_proxy_l4_idle_closed_total") >= 1.0);
    assert_eq!(busy.ask("PING").await.as_deref(), Some("PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relay_passes_over_endpoints_that_refuse() {
    let ws = Workspace::new();
    let live = echo("live-1-x").await;
    // A port nothing listens on.
    let refusing = RefusingPort::bind();
    let dead = refusing.addr;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            GATEWAY.to_owned(),
            service("apps", "db", &[dead, live.plain]),
            tcp_route("db", "tcp", "db"),
        ]),
    );
    let (_controller, proxy) = start_gateway_at(&ws, 9000, 2, &[]).await;
    let addr = proxy.listener(9000);
    relayed(addr).await;
    // Every connection reaches the live endpoint, whichever endpoint Maglev picks first.
    for _ in 0..20 {
        let mut s = connect(addr).await.expect("relayed");
        assert_eq!(s.pod().await, "live-1-x");
    }
    let m = proxy.metrics().await;
    let failures = metric_value(
        &m,
        "rauta_proxy_l4_upstream_connect_failures_total{route=\"apps/db/rule/0\"}",
    );
    // Outlier detection (5 consecutive failures by default) ejects the dead endpoint, if it
    // was ever the first choice: it is tried at most that often.
    assert!(failures <= 5.0, "{failures} failed connects");
}

fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminate_relays_the_plaintext_by_server_name() {
    use base64::Engine;
    let ws = Workspace::new();
    let (a, b) = (echo("a-1-x").await, echo("b-1-x").await);
    let (cert, key) = self_signed("*.example.com");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: infra}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(&cert),
        b64(&key)
    );
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: tls, port: 8443, protocol: TLS, hostname: '*.example.com', tls: {mode: Terminate, certificateRefs: [{name: cert}]}, allowedRoutes: {namespaces: {from: All}}}\n";
    let tls_route = |name: &str, hosts: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [{hosts}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"
        )
    };
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway.to_owned(),
            secret,
            service("apps", "a", &[a.plain]),
            service("apps", "b", &[b.plain]),
            // Two names, one rule: one L4 route (two of one name would be refused).
            tls_route("to-a", "a.example.com, a2.example.com", "a"),
            tls_route("to-b", "'*.example.com'", "b"),
        ]),
    );
    let (_controller, proxy) = start_gateway_at(&ws, 8443, 1, &[]).await;
    let addr = proxy.listener(8443);
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let session = async |name: &str| {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Session::start(tls).await
    };
    let mut to_a = None;
    for _ in 0..100 {
        if let Ok(s) = session("a.example.com").await {
            to_a = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut to_a = to_a.expect("a TLS Terminate connection is relayed");
    // The backend speaks plain TCP: the proxy terminated TLS.
    assert_eq!(to_a.ask("IS_TLS").await.as_deref(), Some("false"));
    assert_eq!(to_a.pod().await, "a-1-x");
    let mut to_b = session("z.example.com").await.unwrap();
    assert_eq!(to_b.pod().await, "b-1-x");
    let mut to_a2 = session("a2.example.com").await.unwrap();
    assert_eq!(to_a2.pod().await, "a-1-x");
}
