//! Starts the real binaries on 127.0.0.1 and talks to them like a user would.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rauta_common::api::v1::admin_client::AdminClient;
use rauta_common::api::v1::{ListProxiesRequest, ProxyStatus};
use rauta_common::types::ResourceType;
use tonic::transport::Channel;

/// Directory holding the workspace's built binaries (target/debug or target/release): the
/// test executable lives in its `deps/` subdirectory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("profile dir")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Path of a workspace binary; panics with a hint when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// An address on 127.0.0.1 where connections are refused for as long as this lives: its port
/// is bound and never listened on, so no other test (they run in parallel) can take it. A
/// port that was merely free a moment ago may be some other test's server by the time the
/// proxy connects, and answer.
pub struct RefusingPort {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl RefusingPort {
    pub fn bind() -> RefusingPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("bound address");
        RefusingPort {
            _socket: socket,
            addr,
        }
    }
}

/// A port that was free a moment ago, below the kernel's ephemeral range. A port the kernel
/// hands out for `bind(0)` comes from the range it also takes the source ports of outgoing
/// connections from, and tests make many: one of those could take the port before the server
/// it was picked for binds it (a proxy's listener then failed with "Address already in use").
/// Below the range, only another explicit bind competes, and the pick is random.
pub fn free_port() -> u16 {
    let low = ephemeral_low().max(FREE_PORT_FLOOR + 1024);
    // Room above each pick for `free_ports` to find consecutive ones.
    let span = u64::from(low - FREE_PORT_FLOOR - 64);
    for _ in 0..1000 {
        let pick = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8) % span;
        let port = FREE_PORT_FLOOR + u16::try_from(pick).unwrap_or(0);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The lowest port `free_port` picks: above the well-known and registered services tests
/// start (Redis at 6379, say).
const FREE_PORT_FLOOR: u16 = 10_000;

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`; Linux's
/// default where it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The first of `n` consecutive ports that were all free a moment ago, for TCP and for UDP
/// (a proxy whose Gateway has several listeners binds them at one offset).
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let first = free_port();
        let free = (0..n).all(|i| {
            let Some(port) = first.checked_add(i) else {
                return false;
            };
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
                && std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        });
        if free {
            return first;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A child process that is killed when dropped; its stderr goes to a log file.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stderr(file).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (a graceful stop) without waiting.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill -TERM {}",
            self.pid()
        );
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        // RAUTA_TEST_LOGS=1 prints every process log, e.g. to debug a conformance case.
        if std::thread::panicking() || std::env::var_os("RAUTA_TEST_LOGS").is_some() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

pub struct Controller {
    pub process: Process,
    pub grpc: SocketAddr,
    pub config_dir: PathBuf,
}

impl Controller {
    pub fn start(config_dir: &Path, work: &Path) -> Controller {
        Self::start_on(
            config_dir,
            work,
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
        )
    }

    pub fn start_on(config_dir: &Path, work: &Path, grpc: SocketAddr) -> Controller {
        Self::start_with(config_dir, work, grpc, &["--plaintext"])
    }

    /// Starts with these extra flags (e.g. TLS instead of `--plaintext`); does not wait for
    /// anything but the port.
    pub fn start_with(
        config_dir: &Path,
        work: &Path,
        grpc: SocketAddr,
        extra: &[&str],
    ) -> Controller {
        let source = [std::ffi::OsStr::new("--config-dir"), config_dir.as_os_str()];
        Self::start_source(&source, &[], config_dir, work, grpc, extra)
    }

    /// Starts in Kubernetes mode against the API server `kubeconfig` names.
    pub fn start_kubernetes(kubeconfig: &Path, work: &Path, extra: &[&str]) -> Controller {
        let source = [
            std::ffi::OsStr::new("--kubernetes"),
            std::ffi::OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ];
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut extra = extra.to_vec();
        extra.extend(["--plaintext", "--proxy-auth", "none"]);
        Self::start_source(&source, &[], work, work, grpc, &extra)
    }

    /// Starts in Kubernetes mode with these flags and nothing else: by default TLS from the
    /// controller's own CA and ServiceAccount tokens checked with TokenReviews.
    pub fn start_kubernetes_secure(kubeconfig: &Path, work: &Path, extra: &[&str]) -> Controller {
        let source = [
            std::ffi::OsStr::new("--kubernetes"),
            std::ffi::OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ];
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        Self::start_source(&source, &[], work, work, grpc, extra)
    }

    /// Starts with exactly these arguments (plus `--grpc-listen`) and environment, as a
    /// Deployment would.
    pub fn start_as_deployed(args: &[&str], env: &[(&str, &str)], work: &Path) -> Controller {
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        Self::start_source(&[], env, work, work, grpc, args)
    }

    fn start_source(
        source: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
        config_dir: &Path,
        work: &Path,
        grpc: SocketAddr,
        extra: &[&str],
    ) -> Controller {
        let mut cmd = Command::new(bin("rauta-controller"));
        cmd.args(source)
            .envs(env.iter().copied())
            .arg("--grpc-listen")
            .arg(grpc.to_string())
            .args(extra)
            .stdout(Stdio::null());
        let log = work.join(format!("controller-{}.log", grpc.port()));
        let process = Process::spawn("rauta-controller", cmd, log);
        let controller = Controller {
            process,
            grpc,
            config_dir: config_dir.to_owned(),
        };
        wait_for_port(grpc, Duration::from_secs(20));
        controller
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// An admin client, or why none could be had.
    pub async fn try_admin(&self) -> Result<AdminClient<Channel>, String> {
        AdminClient::connect(self.url())
            .await
            .map_err(|e| format!("admin client: {e}"))
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::connect(self.url())
            .await
            .expect("admin client")
    }

    /// The status of every object, as the admin service lists it.
    pub async fn statuses(&self) -> Vec<rauta_common::api::v1::ObjectStatus> {
        self.admin()
            .await
            .list_statuses(rauta_common::api::v1::ListStatusesRequest::default())
            .await
            .expect("ListStatuses")
            .into_inner()
            .objects
    }

    /// The current snapshot version of a Gateway ("namespace/name"), or "" if it has none.
    pub async fn snapshot_version(&self, gateway: &str) -> String {
        let req = rauta_common::api::v1::ListSnapshotsRequest {};
        let snapshots = self
            .admin()
            .await
            .list_snapshots(req)
            .await
            .expect("ListSnapshots")
            .into_inner()
            .snapshots;
        snapshots
            .iter()
            .find(|s| s.gateway == gateway)
            .map(|s| s.version.clone())
            .unwrap_or_default()
    }

    pub async fn proxies(&self) -> Vec<ProxyStatus> {
        self.admin()
            .await
            .list_proxies(ListProxiesRequest::default())
            .await
            .expect("ListProxies")
            .into_inner()
            .proxies
    }
}

pub struct Proxy {
    pub process: Process,
    /// Where the proxy's stdout (the access log) goes.
    pub stdout: PathBuf,
    pub admin: SocketAddr,
    pub port_offset: u16,
    pub bind: Ipv4Addr,
}

impl Proxy {
    pub fn start(controller_url: &str, gateway: &str, port_offset: u16, work: &Path) -> Proxy {
        Self::start_on(
            controller_url,
            gateway,
            port_offset,
            Ipv4Addr::LOCALHOST,
            work,
        )
    }

    /// Starts a proxy whose Gateway listeners bind `bind` (any 127.0.0.0/8 address works).
    pub fn start_on(
        controller_url: &str,
        gateway: &str,
        port_offset: u16,
        bind: Ipv4Addr,
        work: &Path,
    ) -> Proxy {
        Self::start_with(controller_url, gateway, port_offset, bind, work, &[])
    }

    /// Starts with extra flags (e.g. the discovery channel's TLS settings).
    pub fn start_with(
        controller_url: &str,
        gateway: &str,
        port_offset: u16,
        bind: Ipv4Addr,
        work: &Path,
        extra: &[&str],
    ) -> Proxy {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut cmd = Command::new(bin("rauta-proxy"));
        cmd.args([
            "--controller",
            controller_url,
            "--gateway",
            gateway,
            "--bind-address",
        ])
        .arg(bind.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--listener-port-offset")
        .arg(port_offset.to_string())
        .args(["--max-reconnect-backoff-ms", "500", "--node-id"])
        .arg(format!("test-proxy-{}", admin.port()))
        .args(extra);
        let stdout = work.join(format!("proxy-{}.out", admin.port()));
        cmd.stdout(std::fs::File::create(&stdout).expect("stdout file"));
        let process = Process::spawn(
            "rauta-proxy",
            cmd,
            work.join(format!("proxy-{}.log", admin.port())),
        );
        wait_for_port(admin, Duration::from_secs(20));
        Proxy {
            process,
            stdout,
            admin,
            port_offset,
            bind,
        }
    }

    /// Address of a Gateway listener port on this proxy.
    pub fn listener(&self, gateway_port: u16) -> SocketAddr {
        SocketAddr::from((self.bind, gateway_port + self.port_offset))
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        eventually(Duration::from_secs(20), || async {
            http_get(&url, None).await.is_ok_and(|r| r.status == 200)
        })
        .await;
    }

    /// The admin /config_dump document.
    pub async fn config_dump(&self) -> serde_json::Value {
        let r = http_get(&format!("http://{}/config_dump", self.admin), None)
            .await
            .expect("GET /config_dump");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("config_dump is JSON")
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.admin), None)
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    }
}

/// An echo backend process (see rauta-echo).
pub struct Echo {
    pub process: Process,
    pub http: SocketAddr,
    pub pod: String,
}

impl Echo {
    pub fn start(pod: &str, namespace: &str, work: &Path) -> Echo {
        let mut cmd = Command::new(bin("rauta-echo"));
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--http-port",
            "0",
            "--pod",
            pod,
            "--namespace",
            namespace,
        ])
        .stdout(Stdio::piped());
        let mut process = Process::spawn("rauta-echo", cmd, work.join(format!("echo-{pod}.log")));
        let stdout = process.child.stdout.take().expect("echo stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("echo banner");
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected echo banner {line:?}"));
        // Keep draining stdout (one line per request) so the echo never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Echo {
            process,
            http,
            pod: pod.to_owned(),
        }
    }
}

/// A controller on `ws`'s configuration and one proxy (with `flags`) for Gateway infra/gw,
/// its listener ports offset to a free range; returns once the proxy is ready.
pub async fn start_gateway(ws: &Workspace, flags: &[&str]) -> (Controller, Proxy) {
    start_gateway_at(ws, 80, 1, flags).await
}

/// As [`start_gateway`], for a Gateway whose listeners use `ports` consecutive ports from
/// `first_port`: they are offset to as many consecutive free ports.
pub async fn start_gateway_at(
    ws: &Workspace,
    first_port: u16,
    ports: u16,
    flags: &[&str],
) -> (Controller, Proxy) {
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start_with(
        &controller.url(),
        "infra/gw",
        free_ports(ports) - first_port,
        Ipv4Addr::LOCALHOST,
        ws.path(),
        flags,
    );
    proxy.wait_ready().await;
    (controller, proxy)
}

pub fn wait_for_port(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {addr} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a GET of `url` is answered by the echo pod `pod` (after a route change, say).
pub async fn eventually_served_by(url: &str, pod: &str, limit: Duration) {
    eventually(limit, || async {
        http_get(url, None).await.is_ok_and(|r| r.pod() == pod)
    })
    .await;
}

/// Polls `check` every 50 ms until it returns true; panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    /// The echoed JSON, if the answer came from an echo backend.
    pub fn echo(&self) -> Option<serde_json::Value> {
        let json = self
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json");
        json.then(|| serde_json::from_str(&self.body).ok())
            .flatten()
    }

    /// The values of a request header the echo backend saw (any case of the name).
    pub fn seen_header(&self, name: &str) -> Vec<String> {
        let echo = self.echo().unwrap_or_default();
        let headers = echo["headers"].as_object().cloned().unwrap_or_default();
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// The echo backend's pod name, or "" if the answer did not come from one.
    pub fn pod(&self) -> String {
        self.echo()
            .and_then(|v| v["pod"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 GET on a fresh connection, with an optional Host header.
/// A cleartext HTTP/2 (prior knowledge) client connection to `addr`, so that :authority can
/// name any virtual host while the socket goes to the proxy.
pub async fn h2c_connect<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn http_get(url: &str, host: Option<&str>) -> Result<HttpResponse, String> {
    http_request(url, host, &[], None).await
}

/// One HTTP/1.1 GET on a fresh connection, with extra headers and a chosen local address.
pub async fn http_request(
    url: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    local: Option<std::net::IpAddr>,
) -> Result<HttpResponse, String> {
    http_method_request("GET", url, host, headers, local).await
}

/// [`http_request`] with another method.
pub async fn http_method_request(
    method: &str,
    url: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    local: Option<std::net::IpAddr>,
) -> Result<HttpResponse, String> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(local);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(h) = host {
        req = req.header(http::header::HOST, h);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A gRPC channel over TLS to `addr`, trusting only the PEM certificates `ca_pem` for
/// `server_name` (as a proxy connects to a controller with `--controller-ca`).
pub async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    server_name: &str,
) -> Result<Channel, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = std::sync::Arc::new(config);
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| e.to_string())?;
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, name) = (std::sync::Arc::clone(&config), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(connector)
        .await
        .map_err(|e| e.to_string())
}

/// A scratch directory with a `config/` subdirectory the controller watches.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        Workspace { dir, config }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a config file atomically (write + rename, as editors and kubectl-like tools do).
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write config");
        std::fs::rename(&tmp, self.config.join(name)).expect("rename config");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.config.join(name)).expect("remove config");
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether every type of every listed proxy has ACKed the current version with nothing pending.
pub fn all_in_sync(proxies: &[ProxyStatus]) -> bool {
    !proxies.is_empty()
        && proxies
            .iter()
            .all(|p| p.types.len() == ResourceType::ALL.len() && p.types.iter().all(|t| t.in_sync))
}

/// What an HTTPS request saw.
#[derive(Debug)]
pub struct TlsResponse {
    pub status: u16,
    pub version: http::Version,
    pub body: String,
    pub headers: http::HeaderMap,
    /// The server's leaf certificate (DER).
    pub peer_certificate: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
}

/// One HTTPS GET on a fresh connection to `addr`, sending SNI `server_name`, trusting only the
/// PEM certificates in `trusted`, offering ALPN h2 and http/1.1 when `h2` is set.
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    trusted: &[&str],
    h2: bool,
    path: &str,
) -> Result<TlsResponse, String> {
    https_request(addr, server_name, trusted, h2, path, &[]).await
}

/// As [`https_get`], with extra request headers.
pub async fn https_request(
    addr: SocketAddr,
    server_name: &str,
    trusted: &[&str],
    h2: bool,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsResponse, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (_, session) = tls.get_ref();
    let peer_certificate = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let negotiated_h2 = alpn.as_deref() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    let resp = if negotiated_h2 {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::get(format!("https://{server_name}{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header(http::header::HOST, server_name);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let version = resp.version();
    let response_headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsResponse {
        status,
        version,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers: response_headers,
        peer_certificate,
        alpn,
    })
}

/// The value of the first series in a Prometheus scrape that starts with `series` (a name
/// with its labels, and a space when the name alone must match); 0 when there is none.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
