//! The table: what was measured here, next to what the public suite published for other
//! implementations (README.md, "part 1", and README-v2.md, "part 2", of
//! howardjohn/gateway-api-bench; a 16-core kind cluster, every implementation's controller and
//! proxies in pods: other machines, and real Kubernetes around them).

use crate::Results;
use crate::env::percentile;

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1e3)
    } else {
        format!("{v:.0} ms")
    }
}

fn mib(v: f64) -> String {
    format!("{v:.1} MiB")
}

fn rate(bytes_per_s: f64) -> String {
    if bytes_per_s >= 1048576.0 {
        format!("{:.1} MiB/s", bytes_per_s / 1048576.0)
    } else {
        format!("{:.1} KiB/s", bytes_per_s / 1024.0)
    }
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

struct Table(Vec<[String; 4]>);

impl Table {
    fn row(&mut self, test: &str, measure: &str, ours: String, published: &str) {
        self.0.push([
            test.to_owned(),
            measure.to_owned(),
            ours,
            published.to_owned(),
        ]);
    }
}

pub fn print(r: &Results) {
    let mut t = Table(Vec::new());
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut key = |k: &str, v: String| keys.push((k.to_owned(), v));

    if let Some(a) = &r.attached {
        let test = format!(
            "Attached routes ({} routes, {} cycles)",
            a.routes,
            a.cycles.len()
        );
        let each = |f: &dyn Fn(&crate::attached::Cycle) -> f64| -> Vec<f64> {
            a.cycles.iter().map(f).collect()
        };
        let setup = each(&|c| c.setup.as_secs_f64() * 1e3);
        let teardown = each(&|c| c.teardown.as_secs_f64() * 1e3);
        let status = each(&|c| c.route_status.as_secs_f64() * 1e3);
        let writes = each(&|c| c.gateway_writes as f64);
        let route_writes = each(&|c| c.route_writes as f64);
        let cpu = each(&|c| c.cost.controller.cpu_ms);
        let cores = each(&|c| c.cost.controller.millicores());
        let range = |v: &[f64], f: fn(f64) -> String| {
            format!("{} (max {})", f(median(v)), f(percentile(v, 100.0)))
        };
        t.row(
            &test,
            "Setup: last route created to attachedRoutes = N",
            range(&setup, ms),
            "1000 routes (README.md): Cilium 1 s, Kong 1 s, Istio 2 s, Kgateway 12 s, Envoy Gateway 23 s, Nginx 29 s, Traefik 180 s",
        );
        t.row(
            &test,
            "Teardown: last route deleted to attachedRoutes = 0",
            range(&teardown, ms),
            "Nginx 15 s, Kgateway 16 s, Traefik 16 s, Cilium 18 s, Istio 20 s, Kong 22 s, Envoy Gateway 45 s",
        );
        t.row(
            &test,
            "Gateway status writes per cycle (setup + teardown)",
            range(&writes, |v| format!("{v:.0}")),
            "Traefik 73, Nginx 82, Cilium 193, Istio 311, Kgateway 323, Envoy Gateway 1383, Kong 1403",
        );
        t.row(
            &test,
            "Every route's status written (from last created); route status writes per cycle",
            format!("{}; {:.0}", range(&status, ms), median(&route_writes)),
            "not published",
        );
        t.row(
            &test,
            "Controller CPU per cycle (mean over the cycle)",
            format!(
                "{:.2} s ({:.0} millicores)",
                median(&cpu) / 1e3,
                median(&cores)
            ),
            "graph only (README-v2.md): Envoy Gateway 10x the CPU of the others",
        );
        let max_seen = a.cycles.iter().map(|c| c.max_seen).max().unwrap_or(0);
        let wrong = a.problems.len();
        t.row(
            &test,
            "Status right: one entry of ours per route, the other controller's kept; attachedRoutes never above N",
            if wrong == 0 && !a.cycles.is_empty() {
                format!("yes (max attachedRoutes seen {max_seen})")
            } else {
                format!("NO: {wrong} problems (see above)")
            },
            "Kong, Traefik: wrong counts, stuck above 0 (README.md); Nginx: duplicate entries (README-v2.md); Traefik: entries for others' parents",
        );
        key("bench_attached_setup_ms", format!("{:.0}", median(&setup)));
        key(
            "bench_attached_teardown_ms",
            format!("{:.0}", median(&teardown)),
        );
        key(
            "bench_attached_gateway_writes",
            format!("{:.0}", median(&writes)),
        );
        key(
            "bench_attached_controller_cpu_ms",
            format!("{:.0}", median(&cpu)),
        );
    }

    let mut propagation_all: Vec<f64> = Vec::new();
    if let Some(levels) = &r.propagation {
        let test = "Route propagation (route created to first 200)";
        let mut errors = 0;
        let mut timeouts = 0;
        for level in levels {
            let v = level.ms();
            propagation_all.extend(&v);
            errors += level.errors();
            timeouts += level.timeouts();
            t.row(
                test,
                &format!(
                    "{} routes after {} existing: p50 / p90 / max",
                    level.probes.len(),
                    level.existing
                ),
                format!(
                    "{} / {} / {}",
                    ms(percentile(&v, 50.0)),
                    ms(percentile(&v, 90.0)),
                    ms(percentile(&v, 100.0))
                ),
                if level.existing == 0 {
                    "README-v2.md, 0 to 3000 routes: Agentgateway 10-30 ms (30 ms typical), Istio 120-300 ms, Envoy Gateway ~600 ms and Nginx ~800 ms at 3000"
                } else {
                    "(same graph)"
                },
            );
            key(
                &format!("bench_route_propagation_p50_ms_at_{}", level.existing),
                format!("{:.1}", percentile(&v, 50.0)),
            );
        }
        t.row(
            test,
            "Errors (answers other than 404 and 200, failed requests); routes never served",
            format!("{errors}; {timeouts}"),
            "Envoy Gateway 14,808 errors (README-v2.md); Agentgateway, Istio, Nginx 0",
        );
        key("bench_route_propagation_errors", errors.to_string());
    }
    if let Some(first) = r.scale.first()
        && !first.load_probes.is_empty()
    {
        let v: Vec<f64> = first
            .load_probes
            .iter()
            .filter(|p| !p.timed_out)
            .map(|p| p.ms)
            .collect();
        let errors: usize = first.load_probes.iter().map(|p| p.errors).sum();
        t.row(
            "Route propagation under load",
            &format!(
                "{} routes created during the {}-route scale test (ramp and churn): p50 / p90 / max; errors",
                first.load_probes.len(),
                first.routes
            ),
            format!(
                "{} / {} / {}; {errors}",
                ms(percentile(&v, 50.0)),
                ms(percentile(&v, 90.0)),
                ms(percentile(&v, 100.0))
            ),
            "README-v2.md (100 routes, with / without load): Agentgateway 30 / 30 ms, Istio 375 / 300 ms, Envoy Gateway 2000 / 600 ms, Nginx never (over 5 min)",
        );
        key(
            "bench_route_propagation_under_load_p50_ms",
            format!("{:.1}", percentile(&v, 50.0)),
        );
    }

    if let Some(c) = &r.change {
        t.row(
            "Route changes",
            &format!(
                "{} changes 200 ms apart, {} clients back to back: non-200 answers and failed requests",
                c.iterations, c.clients
            ),
            format!(
                "{} errors in {} requests ({:.0}/s); {} / {} answers from each backend, {} with a half-applied change",
                c.errors,
                c.requests,
                c.requests as f64 / c.seconds.max(1e-9),
                c.from_alternate,
                c.from_default,
                c.mismatched
            ),
            "0 errors: Agentgateway, Istio, Kgateway, Kong, Traefik; errors: Envoy Gateway (503, 500), Cilium (503), Nginx (crash loop in README.md, 500 in README-v2.md)",
        );
        key("bench_route_change_requests", c.requests.to_string());
    }

    let scale_rows = |t: &mut Table, s: &crate::scale::Scale, test: &str, published: [&str; 5]| {
        let (cp, pp) = s.peaks();
        t.row(
            test,
            "Proxy memory, RSS (of it anonymous, not mapped from files): idle; end of steady state; peak",
            format!(
                "{} ({}); {} ({}); {}",
                mib(s.idle_proxy.rss_mib),
                mib(s.idle_proxy.anon_mib),
                mib(s.steady.proxy.rss_mib),
                mib(s.steady.proxy.anon_mib),
                mib(pp)
            ),
            published[0],
        );
        let steady_note = if s.converged {
            ""
        } else {
            " [NOT CONVERGED: still catching up]"
        };
        t.row(
            test,
            "Proxy CPU: steady state (ramp total)",
            format!(
                "{:.1} millicores ({:.1} s){steady_note}",
                s.steady.proxy.millicores(),
                s.ramp.proxy.cpu_ms / 1e3
            ),
            published[1],
        );
        t.row(
            test,
            "Controller CPU: steady state (ramp total); memory at end (peak)",
            format!(
                "{:.1} millicores ({:.1} s); {} ({}){steady_note}",
                s.steady.controller.millicores(),
                s.ramp.controller.cpu_ms / 1e3,
                mib(s.steady.controller.rss_mib),
                mib(cp)
            ),
            published[2],
        );
        t.row(
            test,
            "Controller to proxy, on the wire: ramp total; steady state",
            format!(
                "{}; {}",
                mib(s.ramp.bytes_to_proxy as f64 / 1048576.0),
                rate(s.steady.bytes_per_second())
            ),
            published[3],
        );
        t.row(
            test,
            "Namespaces created in; then last route served, every status written",
            if s.converged {
                format!(
                    "{:.1} s; +{:.1} s, +{:.1} s ({} route and {} pod changes in the steady state, {:.0} translations)",
                    s.create_s,
                    s.served_after_s,
                    s.status_after_s,
                    s.route_changes,
                    s.pod_changes,
                    s.translations
                )
            } else {
                format!(
                    "{:.1} s; NOT CONVERGED after +{:.0} s: {} of {} routes with status ({:.0} translations)",
                    s.create_s,
                    s.status_after_s,
                    s.routes_with_status,
                    s.routes,
                    s.translations
                )
            },
            published[4],
        );
    };
    for s in &r.scale {
        let test = format!(
            "Route scale ({} namespaces x apps: {} routes)",
            s.label, s.routes
        );
        let published = if s.routes == 5000 {
            [
                "README-v2.md, 5000 routes: Agentgateway 4 MB start, 40 MB end; other data planes 60-90 MB start, 1-2 GB end (README.md: 1-1.8 GB)",
                "Agentgateway under 1% (10 millicores); others 20-240% (README.md: 200-450 millicores)",
                "relative only (README-v2.md, steady state): Istio 4x, Nginx 9x, Envoy Gateway 82x Agentgateway's CPU; README.md: Istio 1.0x CPU, Cilium 1.0x memory best",
                "graph only (README-v2.md route-scale-v2-network)",
                "not published",
            ]
        } else {
            ["not published (the suite ran 5000)"; 5]
        };
        scale_rows(&mut t, s, &test, published);
        let l = s.label.replace('x', "_");
        key(
            &format!("bench_scale_{l}_proxy_rss_mib"),
            format!("{:.1}", s.steady.proxy.rss_mib),
        );
        key(
            &format!("bench_scale_{l}_proxy_millicores"),
            format!("{:.1}", s.steady.proxy.millicores()),
        );
        key(
            &format!("bench_scale_{l}_controller_millicores"),
            format!("{:.1}", s.steady.controller.millicores()),
        );
        key(
            &format!("bench_scale_{l}_controller_rss_mib"),
            format!("{:.1}", s.steady.controller.rss_mib),
        );
        key(
            &format!("bench_scale_{l}_steady_bytes_per_s"),
            format!("{:.0}", s.steady.bytes_per_second()),
        );
    }
    if let Some(s) = &r.listenerset {
        let test = format!(
            "ListenerSet scale ({}: {} ListenerSets, {} routes)",
            s.label, s.listener_sets, s.routes
        );
        scale_rows(
            &mut t,
            s,
            &test,
            [
                "graph only (README-v2.md, 50x50x16): Istio's data plane 15x Agentgateway's memory",
                "Istio's data plane 50x Agentgateway's CPU",
                "Istio's control plane 2.8x Agentgateway's CPU, 1.3x its memory",
                "Istio's control plane 30x Agentgateway's bandwidth",
                "not published",
            ],
        );
        key(
            "bench_listenerset_proxy_rss_mib",
            format!("{:.1}", s.steady.proxy.rss_mib),
        );
        key(
            "bench_listenerset_controller_millicores",
            format!("{:.1}", s.steady.controller.millicores()),
        );
        key(
            "bench_listenerset_controller_rss_mib",
            format!("{:.1}", s.steady.controller.rss_mib),
        );
    }

    println!(
        "| Test | Measure | RAUTA (this machine) | Published for others (howardjohn/gateway-api-bench) |"
    );
    println!("|---|---|---|---|");
    for [a, b, c, d] in &t.0 {
        println!("| {a} | {b} | {c} | {d} |");
    }
    println!();
    if !r.problems.is_empty() {
        println!("Problems:");
        for p in &r.problems {
            println!("- {p}");
        }
        println!();
    }
    for (k, v) in &keys {
        println!("{k}={v}");
    }
    let na = || "NA".to_owned();
    let p50 = if propagation_all.is_empty() {
        na()
    } else {
        format!("{:.1}", percentile(&propagation_all, 50.0))
    };
    println!("bench_route_propagation_p50_ms={p50}");
    println!(
        "bench_route_change_errors={}",
        r.change.as_ref().map_or_else(na, |c| c.errors.to_string())
    );
    println!(
        "bench_proxy_rss_mib_5000_routes={}",
        r.scale
            .iter()
            .find(|s| s.routes == 5000)
            .map_or_else(na, |s| format!("{:.1}", s.steady.proxy.rss_mib))
    );
}
