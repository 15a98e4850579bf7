//! One test's world: the fake API server (in this process), the real `rauta-controller` in
//! Kubernetes mode, a byte-counting relay between it and one real `rauta-proxy`, and echo
//! backends. Plus what the tests measure: processes' CPU and memory from /proc, and HTTP probes.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rauta_tests::fake_kube::FakeApiServer;
use rauta_tests::harness::{Controller, Echo, Proxy, Workspace, free_port, http_get};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::manifests as m;

/// A TCP relay that counts the bytes going each way: the proxy's discovery connection goes
/// through it, so what the controller sent the proxy is counted on the wire (HTTP/2 frames,
/// headers and all), whatever the controller's own metrics say.
pub struct Relay {
    pub addr: SocketAddr,
    /// Controller to proxy.
    pub down: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("relay bind");
        let addr = listener.local_addr().expect("relay addr");
        let down = Arc::new(AtomicU64::new(0));
        let up = Arc::new(AtomicU64::new(0));
        let d = Arc::clone(&down);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pipe(ir, ow, Arc::clone(&up)));
                tokio::spawn(pipe(or, iw, Arc::clone(&d)));
            }
        });
        Relay { addr, down, task }
    }

    pub fn down_bytes(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

pub use rauta_tests::proc_stats::{Usage, reset_peak, usage};

/// What a phase cost a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub cpu_ms: f64,
    pub seconds: f64,
    /// Resident at the end, and the peak during the phase (MiB).
    pub rss_mib: f64,
    pub peak_mib: f64,
    /// Of `rss_mib`, anonymous (not mapped from files).
    pub anon_mib: f64,
}

impl Cost {
    /// Mean CPU use over the phase, in millicores.
    pub fn millicores(&self) -> f64 {
        if self.seconds > 0.0 {
            self.cpu_ms / self.seconds
        } else {
            0.0
        }
    }
}

/// A phase being measured on the controller and the proxy.
pub struct Phase {
    started: Instant,
    controller: Usage,
    proxy: Usage,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseCost {
    pub controller: Cost,
    pub proxy: Cost,
    /// Bytes the controller sent the proxy (on the wire).
    pub bytes_to_proxy: u64,
    pub seconds: f64,
}

impl PhaseCost {
    pub fn bytes_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes_to_proxy as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The HTTP client the probes and the traffic use: HTTP/1.1 with keep-alive, as Go's default
/// client the public suite uses.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// One answer: status, the echo pod that served it ("" if none), whether the response header
/// the route-change test's filter adds was there.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub pod: String,
    pub added_header: bool,
}

pub async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Answer, String> {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let added_header = resp.headers().contains_key("my-added-header");
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| "body timed out".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    let pod = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["pod"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(Answer {
        status,
        pod,
        added_header,
    })
}

/// Where each Env leaves its processes' logs when it ends (--logs), if anywhere.
pub static LOGS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

#[derive(Debug, Clone, Copy, Default)]
pub struct EnvOptions {
    /// The test's name, for its log directory.
    pub name: &'static str,
    /// Echo backends to start (the Service "backend" in namespace default uses the first).
    pub echoes: usize,
    /// The Gateway admits ListenerSets from every namespace.
    pub listener_sets: bool,
}

pub struct Env {
    pub fake: FakeApiServer,
    pub echoes: Vec<Echo>,
    pub controller: Controller,
    pub metrics: SocketAddr,
    pub relay: Relay,
    pub proxy: Proxy,
    /// The proxy's sockets for the Gateway's port 80 and port 443.
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// Logs and the kubeconfig; removed with the Env, after the processes (fields drop in
    /// order).
    ws: Workspace,
    name: &'static str,
}

impl Drop for Env {
    fn drop(&mut self) {
        let Some(root) = LOGS.get() else { return };
        let dir = root.join(self.name);
        let _ = std::fs::create_dir_all(&dir);
        for entry in std::fs::read_dir(self.ws.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log" || e == "out") {
                let _ = std::fs::copy(&path, dir.join(entry.file_name()));
            }
        }
    }
}

/// A port offset at which both 80 and 443 map to free ports.
fn free_offset() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        let Some(offset) = p.checked_sub(80) else {
            continue;
        };
        let Some(tls) = offset.checked_add(443) else {
            continue;
        };
        if StdListener::bind((Ipv4Addr::LOCALHOST, tls)).is_ok() {
            return offset;
        }
    }
    panic!("no port offset with 80 and 443 free");
}

impl Env {
    pub async fn start(options: EnvOptions) -> Env {
        let ws = Workspace::new();
        let echoes: Vec<Echo> = (0..options.echoes.max(1))
            .map(|i| Echo::start(&format!("backend-{i}"), "default", ws.path()))
            .collect();
        let fake = FakeApiServer::start().await;
        fake.apply(m::namespace("bench"));
        fake.apply(m::namespace("default"));
        fake.apply(m::gateway_class("rauta", m::CONTROLLER));
        fake.apply(m::gateway("bench", "gw", "rauta", options.listener_sets));
        fake.apply(m::service("default", "backend", &[("http", 80, 8080)]));
        fake.apply(m::endpoint_slice(
            "default",
            "backend",
            "backend-0",
            &[("http", echoes[0].http.port())],
            &echoes[0].http.ip().to_string(),
        ));
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let metrics_flag = metrics.to_string();
        let kubeconfig = fake.kubeconfig(ws.path());
        let controller = Controller::start_kubernetes(
            &kubeconfig,
            ws.path(),
            &[
                "--leader-election-namespace",
                "rauta-system",
                "--namespace",
                "rauta-system",
                "--metrics-listen",
                &metrics_flag,
            ],
        );
        let relay = Relay::start(controller.grpc).await;
        let offset = free_offset();
        let proxy = Proxy::start(
            &format!("http://{}", relay.addr),
            "bench/gw",
            offset,
            ws.path(),
        );
        proxy.wait_ready().await;
        let http = proxy.listener(80);
        let https = proxy.listener(443);
        Env {
            fake,
            echoes,
            controller,
            metrics,
            relay,
            proxy,
            http,
            https,
            ws,
            name: options.name,
        }
    }

    pub fn controller_pid(&self) -> u32 {
        self.controller.process.pid()
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.process.pid()
    }

    /// Starts measuring a phase (peaks restart from now).
    pub fn phase(&self) -> Phase {
        reset_peak(self.controller_pid());
        reset_peak(self.proxy_pid());
        Phase {
            started: Instant::now(),
            controller: usage(self.controller_pid()),
            proxy: usage(self.proxy_pid()),
            bytes: self.relay.down_bytes(),
        }
    }

    pub fn end(&self, phase: &Phase) -> PhaseCost {
        let seconds = phase.started.elapsed().as_secs_f64();
        let cost = |before: Usage, now: Usage| Cost {
            cpu_ms: now.cpu_ms - before.cpu_ms,
            seconds,
            rss_mib: now.rss_mib,
            peak_mib: now.hwm_mib,
            anon_mib: now.anon_mib,
        };
        PhaseCost {
            controller: cost(phase.controller, usage(self.controller_pid())),
            proxy: cost(phase.proxy, usage(self.proxy_pid())),
            bytes_to_proxy: self.relay.down_bytes() - phase.bytes,
            seconds,
        }
    }

    /// The controller's Prometheus text.
    pub async fn controller_metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.metrics), None)
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// Mutating requests the controller made of the API server whose path contains `part`
    /// and ends with "/status".
    pub fn status_writes(&self, part: &str) -> usize {
        self.fake
            .writes()
            .iter()
            .filter(|w| w.contains(part) && w.ends_with("/status"))
            .count()
    }

    /// The first listener's attachedRoutes on Gateway bench/gw (None before there is status).
    pub fn attached_routes(&self) -> Option<i64> {
        let gw = self.fake.object(m::V1, "Gateway", "bench", "gw")?;
        gw["status"]["listeners"][0]["attachedRoutes"].as_i64()
    }

    /// Whether the controller and the proxy still run (a crash would skew every figure).
    pub fn check_alive(&self) -> Result<(), String> {
        for (name, process) in [
            ("rauta-controller", &self.controller.process),
            ("rauta-proxy", &self.proxy.process),
        ] {
            if !alive(process.pid()) {
                return Err(format!("{name} exited; log {}", process.log.display()));
            }
        }
        Ok(())
    }
}

/// True while the process runs (a zombie, exited but not reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A draw from a normal distribution around `mean` (standard deviation mean/5, as the
/// public suite's jittered tickers), never below a tenth of it.
pub fn jittered(mean: Duration) -> Duration {
    let (u1, u2): (f64, f64) = (rand::random::<f64>().max(1e-12), rand::random());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let secs = mean.as_secs_f64() * (1.0 + z / 5.0);
    Duration::from_secs_f64(secs.max(mean.as_secs_f64() / 10.0))
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
