//! `rauta-proxy` command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rauta_common::api::v1::Node;
use rauta_common::credentials::{self, ReloadingIdentity, ReloadingRoots, ReloadingToken};
use rauta_common::process::{LogFormat, init_logging, shutdown_signal};
use rauta_proxy::admin;
use rauta_proxy::config::applier::Applier;
use rauta_proxy::config::listeners::ListenerManager;
use rauta_proxy::config::persisted::{PersistMetrics, StateDir};
use rauta_proxy::config::xds::{ChannelSecurity, ControllerAddress, XdsClient};
use rauta_proxy::kernel::{KernelPath, XdpMode};
use rauta_proxy::limits::Limits;
use rauta_proxy::observe::access_log::AccessLog;
use rauta_proxy::observe::metrics::ProxyMetrics;
use rauta_proxy::observe::otlp::{SpanCounters, Tracer};
use rauta_proxy::serve::accept::Acceptor;
use rauta_proxy::shared::Shared;
use rauta_proxy::upstream::redis::RedisCounter;
use rauta_proxy::workers::Workers;
use rustls_pki_types::ServerName;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// RAUTA's data plane: serves one Gateway with the configuration streamed by rauta-controller.
#[derive(Debug, Parser)]
#[command(name = "rauta-proxy", version)]
struct Args {
    /// URL of the controller's gRPC server: https://HOST:PORT (TLS, needs --controller-ca) or
    /// http://HOST:PORT (plaintext). Several (comma-separated or repeated, all of one scheme):
    /// controller replicas, tried in turn, the next one on every reconnection.
    #[arg(
        long,
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:18000"
    )]
    controller: Vec<String>,
    /// PEM CA bundle the controller's certificate must chain to. Reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    controller_ca: Option<PathBuf>,
    /// Name the controller's certificate must carry; default: each URL's host.
    #[arg(long, value_name = "NAME")]
    controller_server_name: Option<String>,
    /// PEM client certificate presented to the controller (mTLS). Reloaded when it changes.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// File with the bearer token the controller expects. Reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// The Gateway this proxy serves, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_gateway)]
    gateway: (String, String),
    /// Address of the admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    admin_listen: SocketAddr,
    /// Added to every Gateway listener port when binding (port 80 -> 80+N), so a laptop or a test
    /// can serve privileged ports without root.
    #[arg(long, value_name = "N", default_value_t = 0)]
    listener_port_offset: u16,
    /// Address the Gateway listeners bind to.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Address clients use to reach this proxy, reported in the Gateway's status (repeatable);
    /// defaults to --bind-address unless that is a wildcard address.
    #[arg(long, value_name = "ADDR")]
    advertise_address: Vec<String>,
    /// Identity reported to the controller; defaults to HOSTNAME-PID.
    #[arg(long)]
    node_id: Option<String>,
    /// Longest wait between reconnection attempts to the controller, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    max_reconnect_backoff_ms: u64,
    /// Request-serving worker threads, each with its own event loop and accept socket
    /// (default: one per CPU).
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// On SIGTERM, how long open connections may take to finish before the proxy exits anyway
    /// (keep it below the pod's terminationGracePeriodSeconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 25)]
    drain_timeout: u64,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[arg(long, value_name = "BYTES", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(8192..))]
    max_request_header_bytes: u32,
    /// Most header fields in a request; more gets 431.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_request_headers: u32,
    /// Largest request body in bytes; larger gets 413. 0: unlimited.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    max_request_body_bytes: u64,
    /// Seconds a client connection may stay idle (no request open, no bytes moving) before
    /// it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 75,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    idle_timeout: u64,
    /// Seconds a client may take to send a request head once it started (HTTP/1.1), or to
    /// complete a header block (HTTP/2); then the connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_header_timeout: u64,
    /// Seconds the proxy waits for a request body: in all, extended by each octet received
    /// at --client-body-min-rate (or between two reads when that is 0); then 408.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    client_body_timeout: u64,
    /// Octets per second a request body must average after --client-body-timeout's grace; 0:
    /// the timeout is between two reads (nginx's client_body_timeout).
    #[arg(long, value_name = "BYTES_PER_SECOND", default_value_t = 500)]
    client_body_min_rate: u64,
    /// Seconds a write to a client may wait for it to read (nginx's send_timeout); then the
    /// connection is closed. An HTTP/2 stream waiting this long for window is reset.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    send_timeout: u64,
    /// Client connections each worker serves at once, over all listeners; connections past it
    /// are closed as soon as they are accepted (counted in
    /// rauta_proxy_connections_refused_total). 0: unlimited.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_connections_per_worker: usize,
    /// Milliseconds a UDP client flow (UDPRoute) may go without a datagram either way before
    /// the proxy forgets it and closes its upstream socket.
    #[arg(long, value_name = "MILLISECONDS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    udp_idle_timeout_ms: u64,
    /// Milliseconds a relayed TCP connection (TCPRoute, TLSRoute) may go without a byte either
    /// way before the proxy closes it (Envoy's tcp_proxy idle_timeout; nginx's proxy_timeout).
    #[arg(long, value_name = "MILLISECONDS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..=604_800_000))]
    tcp_idle_timeout_ms: u64,
    /// UDP client flows the proxy keeps at once, over all UDP listeners; datagrams of new
    /// clients past it are dropped (rauta_proxy_udp_flows_refused_total).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    udp_max_flows: u64,
    /// Access log: one JSON line per request on stdout.
    #[arg(long, value_enum, default_value = "off")]
    access_log: AccessLogMode,
    /// The Redis server global rate limits (RateLimitPolicy `global`) are counted in, shared
    /// by every proxy of the fleet: redis://[USER:PASSWORD@]HOST:PORT[/DB]. Without it, global
    /// limits fail open or closed, as their policies say.
    #[arg(long, value_name = "URL")]
    rate_limit_redis: Option<String>,
    /// OpenTelemetry collector to export a span per sampled request to, over OTLP/gRPC, e.g.
    /// http://otel-collector:4317 (docs/operations.md). Without it no span is made.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Share of new traces sampled (exported, and marked sampled in the traceparent sent
    /// upstream), from 0 to 1. A request whose traceparent says whether it is sampled follows
    /// it.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = sample_rate)]
    trace_sampling: f64,
    /// Share of requests written to the access log, from 0 to 1.
    #[arg(long, value_name = "RATE", default_value_t = 1.0, value_parser = sample_rate)]
    access_log_sample: f64,
    /// HTTP/1.1 fast path (docs/architecture.md): plain forwarding without hyper for the
    /// requests it takes. `off` serves every request on the general path.
    #[arg(long, value_enum, default_value = "on")]
    http1_fast_path: Switch,
    /// HTTP/2 server for h2c and ALPN h2 connections: the proxy's own (`rauta`), or hyper's.
    #[arg(long, value_enum, default_value = "rauta")]
    http2_server: Http2Server,
    /// Directory where the proxy keeps the last configuration it applied (written atomically
    /// after each update) and which it serves at start, before a controller answers, marked
    /// stale until one does (docs/operations.md). A file that cannot be read or built is
    /// refused and moved aside.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Answer eligible exact GETs in the kernel (XDP) on this interface, before a socket
    /// exists (docs/xdp.md). Needs CAP_BPF and CAP_NET_ADMIN, and net.ipv4.tcp_syncookies=2;
    /// without them the proxy logs why and serves everything itself.
    #[arg(long, value_name = "IFACE")]
    xdp_interface: Option<String>,
    /// Where the XDP program runs: in the driver (`native`) or the generic path (`generic`,
    /// any interface, slower).
    #[arg(long, value_enum, default_value = "native", requires = "xdp_interface")]
    xdp_mode: XdpModeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum XdpModeArg {
    Native,
    Generic,
}

/// The span exporter, when `--otlp-endpoint` is given.
fn start_tracer(
    args: &Args,
    metrics: &ProxyMetrics,
    node_id: &str,
) -> anyhow::Result<Option<Arc<Tracer>>> {
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(None);
    };
    let counters = SpanCounters {
        exported: metrics.trace_spans.with_label_values(&["exported"]),
        dropped: metrics.trace_spans.with_label_values(&["dropped"]),
        failed: metrics.trace_spans.with_label_values(&["failed"]),
    };
    Ok(Some(Tracer::start(
        endpoint,
        args.trace_sampling,
        node_id,
        counters,
    )?))
}

/// The XDP fast path, when asked for and possible; otherwise one warning and `None`.
fn start_kernel_path(args: &Args, metrics: &ProxyMetrics) -> Option<Arc<KernelPath>> {
    let interface = args.xdp_interface.as_deref()?;
    let mode = match args.xdp_mode {
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
    };
    match KernelPath::attach(interface, mode, args.listener_port_offset)
        .and_then(|k| k.with_metrics(metrics))
    {
        Ok(kernel) => {
            info!(interface, ?mode, "xdp fast path attached");
            Some(Arc::new(kernel))
        }
        Err(e) => {
            warn!(interface, error = %e, "xdp fast path unavailable (needs root or CAP_BPF+CAP_NET_ADMIN and XDP support); serving everything in user space");
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Http2Server {
    Rauta,
    Hyper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AccessLogMode {
    Off,
    Json,
}

fn sample_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a number from 0 to 1, got {s:?}")),
    }
}

/// The controller addresses from the flags, each with its channel's security.
fn controller_addresses(args: &Args) -> anyhow::Result<Vec<ControllerAddress>> {
    let token = args
        .auth_token_file
        .as_deref()
        .map(ReloadingToken::start)
        .transpose()?;
    let uris = args
        .controller
        .iter()
        .map(|url| {
            url.parse::<http::Uri>()
                .with_context(|| format!("--controller {url:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scheme = uris
        .first()
        .and_then(|u| u.scheme_str())
        .unwrap_or_default();
    anyhow::ensure!(
        uris.iter().all(|u| u.scheme_str() == Some(scheme)),
        "--controller URLs must all be http:// or all https://"
    );
    let client_config = match (scheme, &args.controller_ca) {
        ("https", Some(ca)) => {
            let roots = ReloadingRoots::start(ca)?;
            let identity = match (&args.client_cert, &args.client_key) {
                (Some(cert), Some(key)) => Some(ReloadingIdentity::start(cert, key)?),
                _ => None,
            };
            Some(Arc::new(credentials::client_config(roots, identity)?))
        }
        ("https", None) => anyhow::bail!("an https:// --controller needs --controller-ca"),
        ("http", _) if args.controller_ca.is_some() || args.client_cert.is_some() => {
            anyhow::bail!("--controller-ca and --client-cert need an https:// --controller")
        }
        ("http", _) => None,
        _ => anyhow::bail!("--controller must be an http:// or https:// URL"),
    };
    let mut out = Vec::new();
    for (url, uri) in args.controller.iter().zip(&uris) {
        let tls = match &client_config {
            Some(config) => {
                let name = args
                    .controller_server_name
                    .clone()
                    .or_else(|| uri.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
                    .with_context(|| format!("--controller {url:?} has no host"))?;
                let name = ServerName::try_from(name.clone())
                    .with_context(|| format!("controller server name {name:?}"))?;
                Some((Arc::clone(config), name))
            }
            None => None,
        };
        out.push(ControllerAddress {
            url: url.clone(),
            security: ChannelSecurity {
                tls,
                token: token.clone(),
            },
        });
    }
    Ok(out)
}

fn parse_gateway(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

/// jemalloc: per-thread caches make the request path's small allocations cheaper than glibc's
/// (about 1 us per request here), and freed pages go back to the system after a snapshot swap.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at start-up: purge freed pages within a second, so the memory a
/// large snapshot build needed goes back soon after.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    anyhow::ensure!(
        args.worker_threads != Some(0),
        "--worker-threads must be at least 1"
    );
    // The configuration side (discovery, admin, building routing state) runs on this thread;
    // requests are served by the workers.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let controllers = controller_addresses(&args)?;
    let metrics = ProxyMetrics::new().context("registering metrics")?;
    let limits = Limits {
        max_header_bytes: args.max_request_header_bytes as usize,
        max_headers: args.max_request_headers as usize,
        max_body_bytes: (args.max_request_body_bytes > 0).then_some(args.max_request_body_bytes),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        header_timeout: Duration::from_secs(args.request_header_timeout),
        client_body_timeout: Duration::from_secs(args.client_body_timeout),
        client_body_min_rate: args.client_body_min_rate,
        send_timeout: Duration::from_secs(args.send_timeout),
        max_connections_per_worker: args.max_connections_per_worker,
        udp_idle_timeout: Duration::from_millis(args.udp_idle_timeout_ms),
        tcp_idle_timeout: Duration::from_millis(args.tcp_idle_timeout_ms),
        udp_max_flows: usize::try_from(args.udp_max_flows).unwrap_or(usize::MAX),
    };
    let access_log = match args.access_log {
        AccessLogMode::Off => None,
        AccessLogMode::Json => Some(
            AccessLog::start(args.access_log_sample, metrics.access_log_dropped.clone())
                .context("starting the access log writer")?,
        ),
    };
    let node_id = args.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "proxy".into());
        format!("{host}-{}", std::process::id())
    });
    let mut shared = Shared::new(metrics.clone(), limits, access_log);
    shared.tracer = start_tracer(&args, &metrics, &node_id)?;
    shared.http1_fast_path = args.http1_fast_path == Switch::On;
    shared.own_http2 = args.http2_server == Http2Server::Rauta;
    if let Some(url) = &args.rate_limit_redis {
        let counter =
            RedisCounter::start(url, metrics.redis_errors.clone()).context("--rate-limit-redis")?;
        shared.redis = Some(counter);
    }
    let shared = Arc::new(shared);
    let kernel = start_kernel_path(&args, &metrics);
    if let Some(k) = &kernel {
        tokio::spawn(Arc::clone(k).refresh_every_second());
    }
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    info!(addr = %admin_listener.local_addr()?, "admin listening");
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&shared),
        kernel.clone(),
    ));

    let (namespace, name) = args.gateway;
    let gateway = format!("{namespace}/{name}");
    info!(node = %node_id, %gateway, controller = %args.controller.join(","), "starting");
    let mut addresses = args.advertise_address;
    if addresses.is_empty() && !args.bind_address.is_unspecified() {
        addresses.push(args.bind_address.to_string());
    }
    let node = Node {
        id: node_id,
        gateway_namespace: namespace,
        gateway_name: name,
        build_version: env!("CARGO_PKG_VERSION").to_owned(),
        addresses,
    };
    let worker_count = args.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let workers = Workers::start(worker_count).context("starting worker threads")?;
    info!(workers = workers.len(), "request workers started");
    let listeners = ListenerManager::new(
        args.bind_address,
        args.listener_port_offset,
        Arc::new(Acceptor {
            shared: Arc::clone(&shared),
        }),
        workers,
    );
    let mut applier = Applier::new(listeners, Arc::clone(&shared));
    if let Some(k) = kernel {
        applier = applier.with_kernel(k);
    }
    if let Some(dir) = args.state_dir {
        let persist_metrics =
            PersistMetrics::register(&metrics.registry).context("registering metrics")?;
        applier = applier
            .with_state_dir(StateDir::open(dir, gateway, persist_metrics))
            .context("starting the --state-dir writer")?;
        // Before the discovery client starts: the persisted versions are what it presents.
        applier.restore();
    }
    let client = XdsClient::new(
        controllers,
        node,
        Duration::from_millis(args.max_reconnect_backoff_ms.max(1)),
        metrics,
    );
    tokio::select! {
        _ = client.run(applier) => {},
        _ = shutdown_signal() => {},
    }
    // Stop accepting, let what is open finish, then exit: a rolling update drops nothing.
    shared.start_drain();
    let grace = Duration::from_secs(args.drain_timeout);
    info!(
        open = shared.open_connections(),
        ?grace,
        "draining: no new connections, finishing open ones"
    );
    match tokio::time::timeout(grace, shared.drained()).await {
        Ok(()) => info!("drained; exiting"),
        Err(_) => warn!(
            open = shared.open_connections(),
            "grace period over; exiting with connections still open"
        ),
    }
    Ok(())
}
