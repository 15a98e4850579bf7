//! Gateway API bench replay (run by benches/gateway-api-bench.sh): the tests of the public
//! howardjohn/gateway-api-bench suite, without a cluster. The real `rauta-controller` runs in
//! Kubernetes mode against the in-process fake API server (tests/src/fake_kube.rs), with a
//! real `rauta-proxy` and echo backends, all on 127.0.0.1; probes and traffic are real HTTP.
//! Each test starts its own API server, controller and proxy. Prints a markdown table next to
//! the figures the suite published for other implementations, then key=value lines, the last
//! three being bench_route_propagation_p50_ms, bench_route_change_errors and
//! bench_proxy_rss_mib_5000_routes.

mod attached;
mod change;
mod env;
mod manifests;
mod propagation;
mod report;
mod scale;

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Test {
    Attached,
    Propagation,
    Change,
    Scale,
    Listenerset,
}

#[derive(Debug, Parser)]
#[command(name = "rauta-gateway-api-bench")]
struct Args {
    /// A smoke run (under two minutes): fewer routes, cycles, probes and changes, a shorter
    /// ramp and steady state, the ListenerSet test at 5x10x16; the route-scale test still at
    /// 5000 routes. Any flag below overrides it.
    #[arg(long)]
    quick: bool,
    /// Tests to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "attached,propagation,change,scale,listenerset"
    )]
    tests: Vec<Test>,
    /// Attached routes: routes created and deleted per cycle [1000; quick 200].
    #[arg(long)]
    attached_routes: Option<usize>,
    /// Attached routes: cycles [3; quick 1].
    #[arg(long)]
    attach_cycles: Option<usize>,
    /// Route propagation: counts of existing routes to probe at [0,1000,3000; quick 0,500].
    #[arg(long, value_delimiter = ',')]
    probe_levels: Option<Vec<usize>>,
    /// Route propagation: routes probed at each level [50; quick 10].
    #[arg(long)]
    probes: Option<usize>,
    /// Routes probed during the first route-scale run [100; quick 20].
    #[arg(long)]
    load_probes: Option<usize>,
    /// Route changes: changes made [50; quick 20].
    #[arg(long)]
    change_iterations: Option<usize>,
    /// Route changes: concurrent clients.
    #[arg(long, default_value_t = 4)]
    change_clients: usize,
    /// Route changes: time between changes, ms (the suite's gracePeriod).
    #[arg(long, default_value_t = 200)]
    change_grace_ms: u64,
    /// Route scale runs, NAMESPACESxROUTES [50x100,50x200; quick 50x100].
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<String>>,
    /// ListenerSet scale, NAMESPACESxSETSxROUTES [50x50x16; quick 5x10x16].
    #[arg(long)]
    listenerset: Option<String>,
    /// Steady-state seconds of the scale tests [60; quick 10].
    #[arg(long)]
    steady_seconds: Option<u64>,
    /// Time between namespaces while a scale test creates them, ms [500; quick 100].
    #[arg(long)]
    grace_ms: Option<u64>,
    /// How long a scale test waits, after its last namespace, for every route to be served
    /// and to carry status, before it measures the steady state anyway, seconds [300; quick
    /// 120].
    #[arg(long)]
    converge_seconds: Option<u64>,
    /// Keep every process's log under this directory, one subdirectory per test.
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
}

/// What was measured, for the report.
#[derive(Debug, Default)]
pub struct Results {
    pub attached: Option<attached::Attached>,
    pub propagation: Option<Vec<propagation::Level>>,
    pub change: Option<change::Change>,
    pub scale: Vec<scale::Scale>,
    pub listenerset: Option<scale::Scale>,
    pub problems: Vec<String>,
}

fn parse_dims(text: &str, n: usize) -> Result<Vec<usize>, String> {
    let dims: Vec<usize> = text
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    if dims.len() != n || dims.contains(&0) {
        return Err(format!("{text:?}: want {n} positive numbers joined by x"));
    }
    Ok(dims)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let q = args.quick;
    let pick = |given: Option<usize>, full: usize, quick: usize| {
        given.unwrap_or(if q { quick } else { full })
    };
    let attached_routes = pick(args.attached_routes, 1000, 200);
    let attach_cycles = pick(args.attach_cycles, 3, 1);
    let probe_levels =
        args.probe_levels
            .clone()
            .unwrap_or(if q { vec![0, 500] } else { vec![0, 1000, 3000] });
    let probes = pick(args.probes, 50, 10);
    let load_probes = pick(args.load_probes, 100, 20);
    let change_iterations = pick(args.change_iterations, 50, 20);
    let scale_runs = args.scale.clone().unwrap_or(if q {
        vec!["50x100".into()]
    } else {
        vec!["50x100".into(), "50x200".into()]
    });
    let listenerset = args.listenerset.clone().unwrap_or(if q {
        "5x10x16".into()
    } else {
        "50x50x16".into()
    });
    let steady = Duration::from_secs(args.steady_seconds.unwrap_or(if q { 10 } else { 60 }));
    let grace = Duration::from_millis(args.grace_ms.unwrap_or(if q { 100 } else { 500 }));
    let converge_limit =
        Duration::from_secs(args.converge_seconds.unwrap_or(if q { 120 } else { 300 }));

    let mut shapes = Vec::new();
    for s in &scale_runs {
        match parse_dims(s, 2) {
            Ok(d) => shapes.push(scale::Shape::Routes {
                namespaces: d[0],
                apps: d[1],
            }),
            Err(e) => {
                eprintln!("--scale: {e}");
                std::process::exit(2);
            }
        }
    }
    let ls_shape = match parse_dims(&listenerset, 3) {
        Ok(d) => scale::Shape::ListenerSets {
            namespaces: d[0],
            apps: d[1],
            routes: d[2],
        },
        Err(e) => {
            eprintln!("--listenerset: {e}");
            std::process::exit(2);
        }
    };

    if let Some(dir) = &args.logs {
        let _ = env::LOGS.set(dir.clone());
    }
    let started = Instant::now();
    let mut results = Results::default();
    let runs = |t: Test| args.tests.contains(&t);
    if runs(Test::Attached) {
        eprintln!("attached routes: {attached_routes} routes, {attach_cycles} cycles");
        let a = attached::run(attached_routes, attach_cycles).await;
        results
            .problems
            .extend(a.problems.iter().map(|p| format!("attached routes: {p}")));
        results.attached = Some(a);
    }
    if runs(Test::Propagation) {
        eprintln!("route propagation: {probes} routes at each of {probe_levels:?} existing routes");
        let (levels, problems) = propagation::run(&probe_levels, probes).await;
        results
            .problems
            .extend(problems.iter().map(|p| format!("route propagation: {p}")));
        results.propagation = Some(levels);
    }
    if runs(Test::Change) {
        eprintln!(
            "route changes: {change_iterations} changes, {} clients",
            args.change_clients
        );
        let (c, problems) = change::run(
            change_iterations,
            args.change_clients.max(1),
            Duration::from_millis(args.change_grace_ms),
        )
        .await;
        results
            .problems
            .extend(problems.iter().map(|p| format!("route changes: {p}")));
        results.change = Some(c);
    }
    if runs(Test::Scale) {
        for (i, shape) in shapes.iter().enumerate() {
            let settings = scale::Settings {
                grace,
                converge_limit,
                steady,
                load_probes: if i == 0 { load_probes } else { 0 },
                probe_pause: Duration::from_millis(250),
            };
            eprintln!(
                "route scale {}: {} routes{}",
                shape.label(),
                shape.total_routes(),
                if settings.load_probes > 0 {
                    format!(", {} routes probed meanwhile", settings.load_probes)
                } else {
                    String::new()
                }
            );
            let (s, problems) = scale::run(*shape, &settings).await;
            results
                .problems
                .extend(problems.iter().map(|p| format!("route scale: {p}")));
            results.scale.push(s);
        }
    }
    if runs(Test::Listenerset) {
        let settings = scale::Settings {
            grace,
            converge_limit,
            steady,
            load_probes: 0,
            probe_pause: Duration::ZERO,
        };
        eprintln!(
            "ListenerSet scale {}: {} ListenerSets, {} routes",
            ls_shape.label(),
            ls_shape.namespaces() * ls_shape.apps(),
            ls_shape.total_routes()
        );
        let (s, problems) = scale::run(ls_shape, &settings).await;
        results
            .problems
            .extend(problems.iter().map(|p| format!("ListenerSet scale: {p}")));
        results.listenerset = Some(s);
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    report::print(&results);
    if !results.problems.is_empty() {
        std::process::exit(1);
    }
}
