//! Attached routes (the suite's tests/attachedroutes): N routes, each with its Service, are
//! created at once, then deleted at once, a few times over. Each route also names a Gateway of
//! another implementation and carries that implementation's status entry. Measured: from the
//! last route created until the Gateway's listener says attachedRoutes=N (setup), from the last
//! deleted until it says 0 (teardown), the Gateway status writes, the controller's CPU; checked:
//! attachedRoutes never above N nor stuck, and every route ends with exactly one status entry
//! of ours (Accepted) next to the other implementation's, untouched.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::env::{Env, EnvOptions, PhaseCost};
use crate::manifests as m;

#[derive(Debug, Clone, Default)]
pub struct Cycle {
    pub setup: Duration,
    /// Until every route carried our Accepted entry.
    pub route_status: Duration,
    pub teardown: Duration,
    pub gateway_writes: usize,
    pub route_writes: usize,
    pub cost: PhaseCost,
    /// The largest attachedRoutes seen (must not exceed the route count).
    pub max_seen: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Attached {
    pub routes: usize,
    pub cycles: Vec<Cycle>,
    /// Problems found (wrong counts, duplicate or missing entries): empty when all is right.
    pub problems: Vec<String>,
}

/// Polls attachedRoutes every 2 ms until it equals `want`; returns the largest value seen.
async fn wait_attached(env: &Env, want: i64, limit: Duration) -> Result<i64, String> {
    let deadline = Instant::now() + limit;
    let mut max_seen = i64::MIN;
    loop {
        let now = env.attached_routes();
        if let Some(n) = now {
            max_seen = max_seen.max(n);
            if n == want {
                return Ok(max_seen);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "attachedRoutes is {now:?}, not {want}, after {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Checks every route's status: exactly one entry of ours, Accepted, and the other
/// controller's entry as it was. Returns the routes that are not so yet, with an example.
fn route_status_problems(routes: &[Value]) -> (usize, Option<String>) {
    let foreign = m::foreign_parent_status();
    let mut bad = 0;
    let mut example = None;
    for r in routes {
        let ours = m::our_parents(r);
        let kept = r["status"]["parents"]
            .as_array()
            .is_some_and(|p| p.contains(&foreign));
        if ours != [true] || !kept {
            bad += 1;
            example.get_or_insert_with(|| {
                format!(
                    "{}: {} entries of ours, other controller's entry {}",
                    r["metadata"]["name"],
                    ours.len(),
                    if kept { "kept" } else { "lost" }
                )
            });
        }
    }
    (bad, example)
}

pub async fn run(routes: usize, cycles: usize) -> Attached {
    let env = Env::start(EnvOptions {
        name: "attached",
        ..Default::default()
    })
    .await;
    env.fake.apply(m::namespace("mesh"));
    env.fake.apply(m::namespace("other"));
    env.fake
        .apply(m::gateway_class("other", m::OTHER_CONTROLLER));
    env.fake.apply(m::gateway("other", "gw", "other", false));
    let mut out = Attached {
        routes,
        ..Default::default()
    };
    if let Err(e) = wait_attached(&env, 0, Duration::from_secs(30)).await {
        out.problems.push(format!("before the first route: {e}"));
        return out;
    }
    let want = i64::try_from(routes).unwrap_or(i64::MAX);
    let parents = [m::gateway_ref("bench", "gw"), m::gateway_ref("other", "gw")];
    for cycle in 0..cycles {
        let gw_writes = env.status_writes("/namespaces/bench/gateways/gw");
        let route_writes = env.status_writes("/httproutes/");
        let phase = env.phase();
        for i in 0..routes {
            let name = format!("app-{i}");
            env.fake
                .apply(m::service("mesh", &name, &[("http", 80, 8080)]));
            let mut route =
                m::app_route("mesh", &name, &format!("{name}.example.com"), &parents, 1);
            route["status"] = json!({"parents": [m::foreign_parent_status()]});
            env.fake.apply(route);
        }
        let created = Instant::now();
        let mut c = Cycle::default();
        match wait_attached(&env, want, Duration::from_secs(300)).await {
            Ok(max_seen) => c.max_seen = max_seen,
            Err(e) => {
                out.problems.push(format!("cycle {cycle} setup: {e}"));
                return out;
            }
        }
        c.setup = created.elapsed();
        // Every route's entry, then a last look that nothing is duplicated.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let all = env.fake.objects(m::V1, "HTTPRoute");
            let (bad, example) = route_status_problems(&all);
            if bad == 0 && all.len() == routes {
                break;
            }
            if Instant::now() > deadline {
                out.problems.push(format!(
                    "cycle {cycle}: {bad} of {} routes without exactly one Accepted entry of ours and the other's kept, e.g. {}",
                    all.len(),
                    example.unwrap_or_default()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.route_status = created.elapsed();
        if let Some(n) = env.attached_routes()
            && n != want
        {
            out.problems.push(format!(
                "cycle {cycle}: attachedRoutes {n} once every route's status was written, not {want}"
            ));
        }
        if c.max_seen > want {
            out.problems.push(format!(
                "cycle {cycle}: attachedRoutes went up to {}, above the {want} routes",
                c.max_seen
            ));
        }
        for i in 0..routes {
            let name = format!("app-{i}");
            env.fake.delete(m::V1, "HTTPRoute", "mesh", &name);
            env.fake.delete("v1", "Service", "mesh", &name);
        }
        let deleted = Instant::now();
        match wait_attached(&env, 0, Duration::from_secs(300)).await {
            Ok(_) => {}
            Err(e) => {
                out.problems.push(format!("cycle {cycle} teardown: {e}"));
                return out;
            }
        }
        c.teardown = deleted.elapsed();
        // Settled: the count stays at 0 (no late write puts stale routes back).
        tokio::time::sleep(Duration::from_millis(500)).await;
        if env.attached_routes() != Some(0) {
            out.problems.push(format!(
                "cycle {cycle}: attachedRoutes {:?} half a second after reaching 0",
                env.attached_routes()
            ));
        }
        c.cost = env.end(&phase);
        c.gateway_writes = env.status_writes("/namespaces/bench/gateways/gw") - gw_writes;
        c.route_writes = env.status_writes("/httproutes/") - route_writes;
        eprintln!(
            "  attached cycle {cycle}: setup {:.0} ms, route status {:.0} ms, teardown {:.0} ms, {} Gateway status writes, controller CPU {:.0} ms",
            c.setup.as_secs_f64() * 1e3,
            c.route_status.as_secs_f64() * 1e3,
            c.teardown.as_secs_f64() * 1e3,
            c.gateway_writes,
            c.cost.controller.cpu_ms
        );
        out.cycles.push(c);
    }
    if let Err(e) = env.check_alive() {
        out.problems.push(e);
    }
    out
}
