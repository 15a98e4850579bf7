//! Propagation benchmark (run by benches/propagation.sh): starts the real `rauta-controller`,
//! connects N simulated proxies that speak the real discovery protocol (each its own HTTP/2
//! connection, ACKing every response at once), then changes the configuration and measures,
//! per change, the time from the file write until each proxy has the new version, the bytes
//! each proxy received, and the controller's CPU time and memory.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use prost::Message;
use rauta_common::api::v1::admin_client::AdminClient;
use rauta_common::api::v1::discovery_client::DiscoveryClient;
use rauta_common::api::v1::{
    DeltaDiscoveryRequest, ListSnapshotsRequest, Node, WatchVersionsRequest, version_event,
};
use rauta_common::types::{ResourceType, WILDCARD};
use rauta_tests::harness::{Controller, Proxy, free_port, metric_value};
use rauta_tests::proc_stats::{reset_peak, usage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Parser)]
#[command(name = "rauta-propagation")]
struct Args {
    /// Simulated proxy counts to measure with the default route count.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    proxies: Vec<usize>,
    /// Route counts to measure with --routes-proxies proxies.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    routes: Vec<usize>,
    /// Routes in the proxy-count runs.
    #[arg(long, default_value_t = 100)]
    default_routes: usize,
    /// Proxies in the route-count runs.
    #[arg(long, default_value_t = 100)]
    routes_proxies: usize,
    /// Changes of each kind per run.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Fleet-scale runs, as PROXIESxROUTES; the 1000x10000 one prints
    /// `propagation_p99_ms_1000x10000` and `route_edit_bytes_per_proxy_10000` last.
    #[arg(long, value_delimiter = ',', default_value = "1000x10000")]
    scale: Vec<String>,
    /// Scale-ups, as PROXIESxROUTES: that many proxies connect at once to a controller
    /// already serving that many routes. `--burst ''` skips them.
    #[arg(long, value_delimiter = ',', default_value = "100x10000")]
    burst: Vec<String>,
    /// Route counts at which one real rauta-proxy's apply time per route edit is measured;
    /// `--proxy-apply ''` skips it.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    proxy_apply: Vec<String>,
}

/// "PROXIESxROUTES", or a usage error.
fn fleet(pair: &str, flag: &str) -> (usize, usize) {
    pair.split_once('x')
        .and_then(|(p, r)| Some((p.parse().ok()?, r.parse().ok()?)))
        .unwrap_or_else(|| {
            eprintln!("--{flag} takes PROXIESxROUTES, e.g. 1000x10000; not {pair:?}");
            std::process::exit(2);
        })
}

/// One response a simulated proxy got: when, of which type and version, how big.
#[derive(Debug, Clone)]
struct Received {
    proxy: usize,
    ty: ResourceType,
    version: u64,
    bytes: usize,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Received>>>;

async fn sim_proxy(url: String, index: usize, log: Log) -> Result<(), String> {
    let mut client = DiscoveryClient::connect(url)
        .await
        .map_err(|e| e.to_string())?
        .max_decoding_message_size(256 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(16);
    for (i, ty) in ResourceType::ALL.into_iter().enumerate() {
        let node = Node {
            id: format!("sim-{index}"),
            gateway_namespace: "bench".into(),
            gateway_name: "gw".into(),
            ..Default::default()
        };
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then_some(node),
            type_url: ty.type_url().into(),
            resource_names_subscribe: vec![WILDCARD.into()],
            ..Default::default()
        };
        tx.send(req).await.map_err(|e| e.to_string())?;
    }
    let mut inbound = client
        .delta_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(response) = inbound.message().await.map_err(|e| e.to_string())? {
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
        if let Some(ty) = ResourceType::parse(&response.type_url) {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Received {
                    proxy: index,
                    ty,
                    version: response.system_version_info.parse().unwrap_or(0),
                    bytes: response.encoded_len(),
                    at: Instant::now(),
                });
        }
    }
    Ok(())
}

fn gateway_yaml() -> String {
    "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: rauta}\nspec: {controllerName: rauta.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: bench}\nspec:\n  gatewayClassName: rauta\n  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: bench}\nspec:\n  ports: [{name: http, port: 8080, targetPort: 3000}]\n".into()
}

fn endpoints_yaml(count: usize) -> String {
    let endpoints: Vec<String> = (0..count)
        .map(|i| format!("- addresses: [10.1.{}.{}]", i / 250, i % 250 + 1))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-1, namespace: bench, labels: {{kubernetes.io/service-name: svc}}}}\naddressType: IPv4\nports: [{{name: http, port: 3000}}]\nendpoints:\n{}\n",
        endpoints.join("\n")
    )
}

/// Routes `from..to`, each its own path prefix; `tag` changes one route's path.
fn routes_yaml(from: usize, to: usize, edited: Option<(usize, usize)>) -> String {
    (from..to)
        .map(|i| {
            let suffix = match edited {
                Some((which, tag)) if which == i => format!("-v{tag}"),
                _ => String::new(),
            };
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: bench}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /r{i}{suffix}}}}}]\n    backendRefs: [{{name: svc, port: 8080}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

const ROUTES_PER_FILE: usize = 500;

fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.parent().unwrap_or(dir).join(format!(".{name}"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Default)]
struct Row {
    proxies: usize,
    routes: usize,
    route_ms: Vec<f64>,
    endpoint_ms: Vec<f64>,
    /// From the controller publishing the version (seen on WatchVersions) to each proxy.
    route_publish_ms: Vec<f64>,
    endpoint_publish_ms: Vec<f64>,
    route_bytes: Vec<f64>,
    endpoint_bytes: Vec<f64>,
    /// Controller CPU per route edit and per endpoint change.
    route_cpu_ms: f64,
    endpoint_cpu_ms: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

/// When each snapshot version was published, as WatchVersions reported it.
type Published = Arc<Mutex<BTreeMap<u64, Instant>>>;

struct Bench {
    /// Holds the configuration directory for as long as the controller runs.
    _work: tempfile::TempDir,
    published: Published,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    controller: Controller,
    admin: AdminClient<tonic::transport::Channel>,
    log: Log,
    proxies: usize,
    config: std::path::PathBuf,
}

impl Bench {
    async fn version(&mut self) -> u64 {
        let snapshots = self
            .admin
            .list_snapshots(ListSnapshotsRequest {})
            .await
            .map(|r| r.into_inner().snapshots)
            .unwrap_or_default();
        snapshots
            .iter()
            .find(|s| s.gateway == "bench/gw")
            .and_then(|s| s.version.parse().ok())
            .unwrap_or(0)
    }

    /// Each proxy's delay (ms) from the publication of the first version above `before`.
    fn delays_since_publish(&self, ty: ResourceType, before: u64, t0: Instant) -> Vec<f64> {
        let published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((&version, &at)) = published.range(before + 1..).next() else {
            return Vec::new();
        };
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let mut first: BTreeMap<usize, Instant> = BTreeMap::new();
        for r in log
            .iter()
            .filter(|r| r.at >= t0 && r.ty == ty && r.version >= version)
        {
            first.entry(r.proxy).or_insert(r.at);
        }
        first
            .values()
            .map(|t| t.saturating_duration_since(at).as_secs_f64() * 1000.0)
            .collect()
    }

    /// Waits until every proxy got type `ty` at a version above `before`; returns each proxy's
    /// delay from `t0` (ms) and bytes received (all types) since `t0`.
    async fn settle(&self, ty: ResourceType, before: u64, t0: Instant) -> (Vec<f64>, Vec<f64>) {
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let (done, delays, bytes) = {
                let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                let mut first: BTreeMap<usize, Instant> = BTreeMap::new();
                let mut bytes: BTreeMap<usize, usize> = BTreeMap::new();
                for r in log.iter().filter(|r| r.at >= t0) {
                    *bytes.entry(r.proxy).or_default() += r.bytes;
                    if r.ty == ty && r.version > before {
                        first.entry(r.proxy).or_insert(r.at);
                    }
                }
                let delays: Vec<f64> = first
                    .values()
                    .map(|at| at.duration_since(t0).as_secs_f64() * 1000.0)
                    .collect();
                let bytes: Vec<f64> = (0..self.proxies)
                    .map(|p| bytes.get(&p).copied().unwrap_or(0) as f64)
                    .collect();
                (first.len() == self.proxies, delays, bytes)
            };
            if done || Instant::now() > deadline {
                if !done {
                    let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                    let have: std::collections::BTreeSet<usize> = log
                        .iter()
                        .filter(|r| r.at >= t0 && r.ty == ty && r.version > before)
                        .map(|r| r.proxy)
                        .collect();
                    let missing: Vec<usize> =
                        (0..self.proxies).filter(|p| !have.contains(p)).collect();
                    eprintln!(
                        "warning: only {} of {} proxies got {} after version {before}; missing {:?}",
                        delays.len(),
                        self.proxies,
                        ty.short_name(),
                        &missing[..missing.len().min(10)]
                    );
                    if let Some(p) = missing.first() {
                        let last: Vec<String> = log
                            .iter()
                            .filter(|r| r.proxy == *p)
                            .map(|r| format!("{}@{}", r.ty.short_name(), r.version))
                            .collect();
                        eprintln!("  proxy {p} received: {last:?}");
                    }
                }
                return (delays, bytes);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Simulated proxies `which`, each on a task of its own.
fn spawn_proxies(
    url: &str,
    log: &Log,
    which: std::ops::Range<usize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in which {
        let (url, log) = (url.to_owned(), Arc::clone(log));
        tasks.push(tokio::spawn(async move {
            // As a real proxy does: a stream that fails (a thousand connecting at once can
            // overflow the listen backlog) is opened again after a jittered backoff.
            for attempt in 1u64..=8 {
                match sim_proxy(url.clone(), i, Arc::clone(&log)).await {
                    Ok(()) => return,
                    Err(e) if attempt == 8 => eprintln!("sim proxy {i}: {e}"),
                    Err(_) => {
                        let backoff = 50 * attempt + (i as u64 * 7919) % 50;
                        tokio::time::sleep(Duration::from_millis(backoff)).await;
                    }
                }
            }
        }));
    }
    tasks
}

/// Starts the controller with `routes` routes and `proxies` simulated proxies connected, and
/// waits until every proxy has the whole configuration.
async fn start(proxies: usize, routes: usize) -> Bench {
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    write_atomic(&config, "gateway.yaml", &gateway_yaml());
    write_atomic(&config, "endpoints.yaml", &endpoints_yaml(3));
    for start in (0..routes).step_by(ROUTES_PER_FILE) {
        let end = (start + ROUTES_PER_FILE).min(routes);
        write_atomic(
            &config,
            &format!("routes-{start}.yaml"),
            &routes_yaml(start, end, None),
        );
    }
    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let controller = Controller::start_with(
        &config,
        work.path(),
        grpc,
        &["--plaintext", "--no-status-files"],
    );
    let admin = AdminClient::connect(controller.url())
        .await
        .expect("admin")
        .max_decoding_message_size(256 * 1024 * 1024);
    let log: Log = Arc::default();
    let start = Instant::now();
    let mut tasks = spawn_proxies(&controller.url(), &log, 0..proxies);
    let published: Published = Arc::default();
    let mut watch = admin
        .clone()
        .watch_versions(WatchVersionsRequest {
            gateway: "bench/gw".into(),
        })
        .await
        .expect("WatchVersions")
        .into_inner();
    let feed = Arc::clone(&published);
    tasks.push(tokio::spawn(async move {
        while let Ok(Some(event)) = watch.message().await {
            if let Some(version_event::Event::SnapshotVersion(v)) = event.event {
                feed.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(v)
                    .or_insert_with(Instant::now);
            }
        }
    }));
    let bench = Bench {
        _work: work,
        published,
        tasks,
        controller,
        admin,
        log,
        proxies,
        config,
    };
    // Everyone has the initial snapshot (the routes' rules come after the tables).
    let _ = bench.settle(ResourceType::RouteRules, 0, start).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bench
}

/// A scale-up: `proxies` proxies connect at once to a controller already serving `routes`
/// routes. Returns the time until all have the whole configuration (ms), the controller's CPU
/// meanwhile (ms) and its peak RSS meanwhile (MiB).
async fn burst(proxies: usize, routes: usize) -> (f64, f64, f64) {
    let mut bench = start(0, routes).await;
    while bench.version().await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The initial translation is done; let its garbage go, then measure from here on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = bench.controller.process.pid();
    reset_peak(pid);
    let cpu_before = usage(pid).cpu_ms;
    let t0 = Instant::now();
    let url = bench.controller.url();
    bench
        .tasks
        .extend(spawn_proxies(&url, &bench.log, 0..proxies));
    bench.proxies = proxies;
    let (delays, _) = bench.settle(ResourceType::RouteRules, 0, t0).await;
    let all_in_sync = if delays.len() == proxies {
        delays.iter().copied().fold(0.0, f64::max)
    } else {
        f64::NAN
    };
    let cpu = usage(pid).cpu_ms - cpu_before;
    let peak = usage(pid).hwm_mib;
    for task in &bench.tasks {
        task.abort();
    }
    (all_in_sync, cpu, peak)
}

/// One real `rauta-proxy` on a controller serving `routes` routes: its apply time per route
/// edit (`rauta_proxy_config_apply_seconds`: validating the response, building the routing
/// state and swapping it in), mean and largest in ms, and its RSS (MiB).
async fn proxy_apply(routes: usize, repeats: usize) -> (f64, f64, f64) {
    let bench = start(0, routes).await;
    let work = tempfile::tempdir().expect("tempdir");
    let offset = free_port().saturating_sub(80).max(1);
    let proxy = Proxy::start(&bench.controller.url(), "bench/gw", offset, work.path());
    proxy.wait_ready().await;
    let applies = |metrics: &str| {
        (
            metric_value(metrics, "rauta_proxy_config_apply_seconds_sum"),
            metric_value(metrics, "rauta_proxy_config_apply_seconds_count"),
        )
    };
    let mut times = Vec::new();
    for n in 0..repeats {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (sum, count) = applies(&proxy.metrics().await);
        let which = (n * 7919) % routes;
        let first = which / ROUTES_PER_FILE * ROUTES_PER_FILE;
        let last = (first + ROUTES_PER_FILE).min(routes);
        write_atomic(
            &bench.config,
            &format!("routes-{first}.yaml"),
            &routes_yaml(first, last, Some((which, n))),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (sum_now, count_now) = applies(&proxy.metrics().await);
            if count_now > count {
                times.push((sum_now - sum) / (count_now - count) * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                eprintln!("warning: the proxy applied nothing after route edit {n}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let rss = usage(proxy.process.pid()).rss_mib;
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let max = times.iter().copied().fold(0.0, f64::max);
    (mean, max, rss)
}

async fn run(proxies: usize, routes: usize, repeats: usize) -> Row {
    let mut bench = start(proxies, routes).await;
    let pid = bench.controller.process.pid();
    let cpu_now = || usage(pid).cpu_ms;
    let mut row = Row {
        proxies,
        routes,
        ..Default::default()
    };
    for n in 0..repeats {
        // A route edit: one route's path changes in its file.
        let before = bench.version().await;
        let which = (n * 7919) % routes;
        let start = which / ROUTES_PER_FILE * ROUTES_PER_FILE;
        let end = (start + ROUTES_PER_FILE).min(routes);
        let cpu_before = cpu_now();
        let t0 = Instant::now();
        write_atomic(
            &bench.config,
            &format!("routes-{start}.yaml"),
            &routes_yaml(start, end, Some((which, n))),
        );
        let (delays, bytes) = bench.settle(ResourceType::RouteRules, before, t0).await;
        row.route_publish_ms.extend(bench.delays_since_publish(
            ResourceType::RouteRules,
            before,
            t0,
        ));
        row.route_ms.extend(delays);
        row.route_bytes.extend(bytes);
        tokio::time::sleep(Duration::from_millis(100)).await;
        row.route_cpu_ms += (cpu_now() - cpu_before) / repeats as f64;

        // An endpoint change: one more address in the Service's EndpointSlice.
        let before = bench.version().await;
        let cpu_before = cpu_now();
        let t0 = Instant::now();
        write_atomic(&bench.config, "endpoints.yaml", &endpoints_yaml(4 + n));
        let (delays, bytes) = bench.settle(ResourceType::Endpoints, before, t0).await;
        row.endpoint_publish_ms.extend(bench.delays_since_publish(
            ResourceType::Endpoints,
            before,
            t0,
        ));
        row.endpoint_ms.extend(delays);
        row.endpoint_bytes.extend(bytes);
        tokio::time::sleep(Duration::from_millis(100)).await;
        row.endpoint_cpu_ms += (cpu_now() - cpu_before) / repeats as f64;
    }
    row.peak_rss_mib = usage(pid).hwm_mib;
    // Resident memory once the last change has settled (the allocator returns freed pages
    // within a second or two).
    tokio::time::sleep(Duration::from_secs(3)).await;
    row.rss_mib = usage(pid).rss_mib;
    for task in &bench.tasks {
        task.abort();
    }
    row
}

fn summary(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (percentile(&v, 50.0), percentile(&v, 99.0))
}

fn print_row(r: &Row) {
    let (rp50, rp99) = summary(&r.route_ms);
    let (ep50, ep99) = summary(&r.endpoint_ms);
    let (_, rpub99) = summary(&r.route_publish_ms);
    let (_, epub99) = summary(&r.endpoint_publish_ms);
    let (rb, _) = summary(&r.route_bytes);
    let (eb, _) = summary(&r.endpoint_bytes);
    println!(
        "| {:>5} | {:>6} | {:>6.1} / {:>6.1} ({:>6.1}) | {:>6.1} / {:>6.1} ({:>6.1}) | {:>8.0} | {:>6.0} | {:>6.1} / {:>6.1} | {:>6.1} / {:>6.1} |",
        r.proxies,
        r.routes,
        rp50,
        rp99,
        rpub99,
        ep50,
        ep99,
        epub99,
        rb,
        eb,
        r.route_cpu_ms,
        r.endpoint_cpu_ms,
        r.rss_mib,
        r.peak_rss_mib
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // Checked before anything runs, so a typo does not cost a long run its summary lines.
    let scale: Vec<(usize, usize)> = args.scale.iter().map(|p| fleet(p, "scale")).collect();
    let bursts: Vec<(usize, usize)> = args
        .burst
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| fleet(p, "burst"))
        .collect();
    let apply_routes: Vec<usize> = args
        .proxy_apply
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                eprintln!("--proxy-apply takes route counts, e.g. 10000; not {r:?}");
                std::process::exit(2);
            })
        })
        .collect();
    println!(
        "| proxies | routes | route edit p50 / p99 ms (p99 from publish) | endpoint change p50 / p99 ms (p99 from publish) | B/proxy route edit | B/proxy endpoint | controller CPU ms route edit / endpoint change | controller RSS MiB settled / peak |"
    );
    println!(
        "|------:|-------:|------------------------:|------------------------:|---------:|-------:|--------:|---------------:|"
    );
    let mut p99_at_1000 = None;
    for &n in &args.proxies {
        let row = run(n, args.default_routes, args.repeats).await;
        print_row(&row);
        if n == 1000 {
            p99_at_1000 = Some(summary(&row.route_ms).1.max(summary(&row.endpoint_ms).1));
        }
    }
    for &routes in &args.routes {
        let row = run(args.routes_proxies, routes, args.repeats).await;
        print_row(&row);
    }
    let mut at_scale = None;
    for &(proxies, routes) in &scale {
        let row = run(proxies, routes, args.repeats).await;
        print_row(&row);
        if (proxies, routes) == (1000, 10000) {
            at_scale = Some((summary(&row.route_ms).1, summary(&row.route_bytes).0));
        }
    }
    if !bursts.is_empty() {
        println!();
        println!(
            "| proxies connecting at once | routes | all in sync ms | controller CPU ms | controller peak RSS MiB |"
        );
        println!("|------:|-------:|------:|------:|------:|");
    }
    for &(proxies, routes) in &bursts {
        let (in_sync, cpu, peak) = burst(proxies, routes).await;
        println!("| {proxies:>5} | {routes:>6} | {in_sync:>7.0} | {cpu:>7.0} | {peak:>7.1} |");
    }
    if !apply_routes.is_empty() {
        println!();
        println!("| routes | real proxy apply per route edit ms, mean / max | proxy RSS MiB |");
        println!("|-------:|------:|------:|");
    }
    for &routes in &apply_routes {
        let (mean, max, rss) = proxy_apply(routes, args.repeats).await;
        println!("| {routes:>6} | {mean:>6.1} / {max:>6.1} | {rss:>6.1} |");
    }
    if let Some(p99) = p99_at_1000 {
        println!("propagation_p99_ms_1000_proxies={p99:.1}");
    }
    if let Some((p99, bytes)) = at_scale {
        println!("propagation_p99_ms_1000x10000={p99:.1}");
        println!("route_edit_bytes_per_proxy_10000={bytes:.0}");
    }
}
