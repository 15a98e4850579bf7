//! The non-HTTP expectation kinds of TCPRoute, UDPRoute and TLSRoute (Terminate) cases
//! (`tcp_echo`, `tcp_connect`, `tcp_echo_samples`, `udp_echo`, `udp_echo_samples`,
//! `dns_query`, `weighted_distribution` over TCP or UDP), as the case directory's README.md
//! describes them, and the TCP, UDP and DNS pods that answer them (ECHO.md).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

use super::world::World;
use crate::echo::{EchoIdentity, EchoTls};
use crate::l4_echo::{TCP_WELCOME, TcpEcho, UdpEcho, UdpMode};

/// The pod of a Deployment that is not an HTTP echo.
pub enum L4Pod {
    Tcp(TcpEcho),
    Udp(UdpEcho),
}

/// Which non-HTTP program a pod template runs: echo-basic's TCP or UDP mode (by its
/// environment), or `coredns`; `None` for the HTTP echo.
pub fn mode_of(pod: &Value) -> Option<&'static str> {
    let container = &pod["containers"][0];
    let env_set = |name: &str| {
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == name && e["value"].as_str().is_some_and(|v| !v.is_empty()))
    };
    if env_set("GRPC_ECHO_SERVER") {
        None
    } else if env_set("TCP_ECHO_SERVER") {
        Some("tcp")
    } else if env_set("UDP_ECHO_SERVER") {
        Some("udp")
    } else if container["image"]
        .as_str()
        .is_some_and(|i| i.contains("/coredns"))
    {
        Some("dns")
    } else {
        None
    }
}

/// The pods of one non-HTTP Deployment.
pub async fn start_pods(
    mode: &str,
    identities: Vec<EchoIdentity>,
    tls: Option<&EchoTls>,
) -> Result<Vec<L4Pod>, String> {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut pods = Vec::new();
    for identity in identities {
        pods.push(match mode {
            "tcp" => L4Pod::Tcp(TcpEcho::start(localhost, 0, identity, tls).await?),
            "udp" => L4Pod::Udp(UdpEcho::start(localhost, 0, identity, UdpMode::Echo).await?),
            _ => L4Pod::Udp(UdpEcho::start(localhost, 0, identity, UdpMode::Dns).await?),
        });
    }
    Ok(pods)
}

/// The EndpointSlice ports of a Service's ports for one non-HTTP pod: the TCP echo's plain
/// (3000) and TLS (8443) ports, or the UDP socket for every UDP port.
pub fn slice_ports(svc: &Value, pod: &L4Pod) -> Vec<Value> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let target = p["targetPort"].as_u64().or_else(|| p["port"].as_u64())?;
            let (local, protocol) = match pod {
                L4Pod::Tcp(t) if target == 8443 => (t.tls?.port(), "TCP"),
                L4Pod::Tcp(t) => (t.plain.port(), "TCP"),
                L4Pod::Udp(u) => (u.addr.port(), "UDP"),
            };
            let mut port = json!({"port": local, "protocol": protocol});
            if let Some(n) = p["name"].as_str() {
                port["name"] = json!(n);
            }
            Some(port)
        })
        .collect()
}

impl L4Pod {
    pub fn pod_name(&self) -> &str {
        match self {
            L4Pod::Tcp(t) => &t.identity().pod,
            L4Pod::Udp(u) => &u.identity().pod,
        }
    }
}

/// The fields of one non-HTTP expectation that this module reads (README.md in the case
/// directory, "Non-HTTP expectation kinds"); the rest stays in `fields`.
#[derive(Debug, serde::Deserialize)]
struct Expect {
    #[serde(default)]
    tls: Option<Value>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(flatten)]
    fields: serde_json::Map<String, Value>,
}

fn f64_of(e: &Expect, key: &str, default: f64) -> f64 {
    e.fields.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn str_of<'a>(e: &'a Expect, key: &str) -> Option<&'a str> {
    e.fields.get(key).and_then(Value::as_str)
}

/// A backend's name: the pod name without its last two `-` segments.
fn backend_of(pod: &str) -> &str {
    let mut parts = pod.rsplitn(3, '-');
    let (_, _, rest) = (parts.next(), parts.next(), parts.next());
    rest.unwrap_or(pod)
}

/// Runs one non-HTTP expectation of `kind` (`spec` is the whole entry) against `target`.
pub async fn run_expect(
    world: &World,
    kind: &str,
    spec: &Value,
    target: SocketAddr,
) -> Result<(), String> {
    let e: Expect = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs_f64(f64_of(&e, "timeout_s", 30.0));
    match kind {
        "tcp_echo" => {
            let client = tls_client(world, &e)?;
            tcp_echo(&e, target, client, timeout).await
        }
        "tcp_connect" => tcp_connect(target, timeout).await,
        "tcp_echo_samples" => tcp_samples(&e, target).await,
        "udp_echo" => udp_echo(&e, target, timeout).await,
        "udp_echo_samples" => udp_samples(&e, target).await,
        "dns_query" => dns_query(&e, target, timeout).await,
        "weighted_distribution" => weighted(&e, target).await,
        other => Err(format!("expectation kind {other:?} is not supported")),
    }
}

/// The TLS client of a `tcp_echo` entry: its SNI, trusting only the named CA ConfigMap.
fn tls_client(
    world: &World,
    e: &Expect,
) -> Result<Option<(Arc<rustls::ClientConfig>, String)>, String> {
    let Some(tls) = e.tls.as_ref().filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let reference = tls["ca_from_configmap"].as_str().unwrap_or_default();
    let (ns, name) = reference.split_once('/').unwrap_or(("", reference));
    let pem = world
        .object("ConfigMap", ns, name)
        .and_then(|cm| cm["data"]["ca.crt"].as_str())
        .ok_or_else(|| format!("ConfigMap {reference} has no ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = tls["server_name"].as_str().unwrap_or_default().to_owned();
    Ok(Some((Arc::new(config), server_name)))
}

/// Why an attempt failed: retried (transport) or fatal (content).
enum Failure {
    Retry(String),
    Fatal(String),
}

async fn read_line<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> Result<String, Failure> {
    let mut line = String::new();
    match r.read_line(&mut line).await {
        Ok(0) => Err(Failure::Retry("connection closed".into())),
        Ok(_) => Ok(line),
        Err(err) => Err(Failure::Retry(err.to_string())),
    }
}

/// One `tcp_echo` attempt on a connected stream.
async fn tcp_exchange<S>(stream: S, e: &Expect) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    let welcome = read_line(&mut stream).await?;
    if welcome != TCP_WELCOME {
        return Err(Failure::Fatal(format!("welcome line {welcome:?}")));
    }
    let mut ask = async |cmd: &str| -> Result<String, Failure> {
        let line = format!("{cmd}\n");
        let write = stream.get_mut().write_all(line.as_bytes());
        write.await.map_err(|e| Failure::Retry(e.to_string()))?;
        read_line(&mut stream).await
    };
    let pong = ask("PING").await?;
    if pong != "PONG\n" {
        return Err(Failure::Fatal(format!("PING answered {pong:?}")));
    }
    let is_tls = ask("IS_TLS").await?;
    let want_tls = e.fields.get("backend_is_tls").and_then(Value::as_bool);
    if want_tls.is_some_and(|w| is_tls.trim_end() != w.to_string()) {
        return Err(Failure::Fatal(format!("IS_TLS answered {is_tls:?}")));
    }
    let test = ask("TEST").await?;
    let v: Value = serde_json::from_str(&test).map_err(|e| Failure::Retry(e.to_string()))?;
    let pod = v["pod"].as_str().unwrap_or_default();
    if let Some(b) = e.backend.as_deref().filter(|b| !b.is_empty())
        && !pod.starts_with(&format!("{b}-"))
    {
        return Err(Failure::Fatal(format!("answered by pod {pod}, want {b}")));
    }
    if let Some(ns) = &e.namespace
        && v["namespace"] != *ns
    {
        return Err(Failure::Fatal(format!(
            "namespace {}, want {ns}",
            v["namespace"]
        )));
    }
    if let Some(name) = str_of(e, "backend_server_name")
        && v["tls"]["serverName"] != name
    {
        return Err(Failure::Fatal(format!(
            "backend saw server name {}, want {name}",
            v["tls"]["serverName"]
        )));
    }
    Ok(())
}

/// `tcp_echo`: an attempt every second until one completes; a content mismatch fails at once.
async fn tcp_echo(
    e: &Expect,
    target: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let attempt = async {
            let tcp = TcpStream::connect(target)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
            let Some((config, name)) = &tls else {
                return tcp_exchange(tcp, e).await;
            };
            let server_name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| Failure::Fatal(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(server_name, tcp)
                .await
                .map_err(|e| Failure::Retry(format!("TLS handshake: {e}")))?;
            tcp_exchange(stream, e).await
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(Failure::Fatal(msg))) => return Err(msg),
            Ok(Err(Failure::Retry(msg))) => last = msg,
            Err(_) => last = "timed out".into(),
        }
    }
    Err(format!("no attempt completed: {last}"))
}

async fn tcp_connect(target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(target).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One one-shot exchange: welcome, `TEST`, the answering pod.
async fn tcp_sample(target: SocketAddr, timeout: Duration) -> Result<String, String> {
    let exchange = async {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = BufReader::new(tcp);
        let welcome = read_line(&mut stream).await.map_err(failure_text)?;
        if welcome != TCP_WELCOME {
            return Err(format!("welcome line {welcome:?}"));
        }
        stream
            .get_mut()
            .write_all(b"TEST\n")
            .await
            .map_err(|e| e.to_string())?;
        let line = read_line(&mut stream).await.map_err(failure_text)?;
        let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        match v["pod"].as_str() {
            Some(p) if !p.is_empty() => Ok(p.to_owned()),
            _ => Err(format!("no pod in {line:?}")),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Retry(m) | Failure::Fatal(m) => m,
    }
}

async fn tcp_samples(e: &Expect, target: SocketAddr) -> Result<(), String> {
    let samples = f64_of(e, "samples", 100.0) as usize;
    let timeout = Duration::from_secs_f64(f64_of(e, "per_request_timeout_s", 5.0));
    let forbidden = str_of(e, "forbidden_backend");
    for i in 0..samples {
        let pod = tcp_sample(target, timeout)
            .await
            .map_err(|err| format!("sample {i}: {err}"))?;
        let want = e.backend.as_deref().unwrap_or_default();
        if !pod.starts_with(&format!("{want}-"))
            || forbidden.is_some_and(|f| pod.starts_with(&format!("{f}-")))
        {
            return Err(format!("sample {i} answered by {pod}, want {want}"));
        }
    }
    Ok(())
}

/// One UDP probe from a new socket: the answer datagram.
async fn udp_probe(target: SocketAddr, payload: &[u8], wait: Duration) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(target).await.map_err(|e| e.to_string())?;
    socket.send(payload).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

async fn udp_echo(e: &Expect, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let payload = str_of(e, "payload").unwrap_or("gateway-api-conformance-udp-echo");
    let service = str_of(e, "service");
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let answer = udp_probe(target, payload.as_bytes(), Duration::from_secs(2)).await?;
            if service.is_none() && e.namespace.is_none() {
                return Ok(());
            }
            let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
            if let Some(s) = service
                && v["service"] != s
            {
                return Err(format!("answered by service {}, want {s}", v["service"]));
            }
            match &e.namespace {
                Some(ns) if v["namespace"] != *ns => {
                    Err(format!("namespace {}, want {ns}", v["namespace"]))
                }
                _ => Ok(()),
            }
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(err) => last = err,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}

async fn udp_pod(target: SocketAddr, payload: &[u8], wait: Duration) -> Result<String, String> {
    let answer = udp_probe(target, payload, wait).await?;
    let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    match v["pod"].as_str() {
        Some(p) if !p.is_empty() => Ok(p.to_owned()),
        _ => Err("no pod in the answer".into()),
    }
}

async fn udp_samples(e: &Expect, target: SocketAddr) -> Result<(), String> {
    let payload = str_of(e, "payload").unwrap_or("gateway-api-conformance-udp-weight\n");
    let probes = f64_of(e, "probes_per_round", 20.0) as usize;
    let wait = Duration::from_secs_f64(f64_of(e, "per_probe_timeout_s", 2.0));
    let deadline = Instant::now() + Duration::from_secs_f64(f64_of(e, "timeout_s", 60.0));
    let want = e.backend.as_deref().unwrap_or_default();
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut complete = true;
        for _ in 0..probes {
            match udp_pod(target, payload.as_bytes(), wait).await {
                Ok(pod) if backend_of(&pod) == want => {}
                Ok(pod) => return Err(format!("answered by {pod}, want {want}")),
                Err(err) => {
                    last = err;
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}

/// A query for `name` type A class IN with RD set.
fn dns_query_bytes(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

async fn dns_query(e: &Expect, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let name = e.fields.get("question").and_then(|q| q["name"].as_str());
    let name = name.unwrap_or("foo.bar.com.");
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let id: u16 = rand::random();
        match udp_probe(target, &dns_query_bytes(id, name), Duration::from_secs(2)).await {
            Ok(a) if a.len() >= 12 && a[0..2] == id.to_be_bytes() && a[2] & 0x80 != 0 => {
                return Ok(());
            }
            Ok(a) => last = format!("not an answer to the query: {a:?}"),
            Err(err) => last = err,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}

/// `weighted_distribution` over TCP or UDP: 500 samples, 10 at a time, shares within the
/// tolerance; up to 10 attempts.
async fn weighted(e: &Expect, target: SocketAddr) -> Result<(), String> {
    let udp = str_of(e, "protocol") == Some("udp");
    let total = f64_of(e, "total_requests", 500.0) as usize;
    let concurrency = f64_of(e, "concurrency", 10.0) as usize;
    let tolerance = f64_of(e, "tolerance", 0.05);
    let wait = Duration::from_secs_f64(f64_of(e, "per_request_timeout_s", 10.0));
    let weights: BTreeMap<String, f64> = e
        .fields
        .get("expected_weights")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    let mut last = String::new();
    for _ in 0..f64_of(e, "max_attempts", 10.0) as usize {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut failed = None;
        for batch in (0..total).collect::<Vec<_>>().chunks(concurrency.max(1)) {
            let tasks: Vec<_> = batch
                .iter()
                .map(|_| {
                    tokio::spawn(async move {
                        match udp {
                            true => {
                                udp_pod(target, b"gateway-api-conformance-udp-weight\n", wait).await
                            }
                            false => tcp_sample(target, wait).await,
                        }
                    })
                })
                .collect();
            for t in tasks {
                match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
                    Ok(pod) => *seen.entry(backend_of(&pod).to_owned()).or_default() += 1,
                    Err(err) => failed = Some(err),
                }
            }
        }
        if let Some(err) = failed {
            last = err;
            continue;
        }
        let share = |b: &str| seen.get(b).copied().unwrap_or(0) as f64 / total as f64;
        let within = weights
            .iter()
            .all(|(b, w)| (share(b) - w).abs() <= tolerance);
        let known = seen.keys().all(|b| weights.contains_key(b));
        let names = weights.values().filter(|w| **w > 0.0).count() == seen.len();
        if within && known && names {
            return Ok(());
        }
        last = format!("observed {seen:?} of {total}, want shares {weights:?}");
    }
    Err(last)
}
