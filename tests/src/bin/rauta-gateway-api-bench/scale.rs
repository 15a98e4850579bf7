//! Route scale and ListenerSet scale (the suite's tests/route-load.sh and
//! tests/listenerset-load.sh, pilot-load "cluster" configurations): namespaces are created one
//! after the other, half a second apart, each with its apps: a Service, an EndpointSlice with
//! one pod, and either one HTTPRoute on the Gateway (route scale) or a ListenerSet with an
//! HTTPS listener of its own and 16 HTTPRoutes on it (ListenerSet scale). Once everything is
//! there, the steady state of a live cluster: about every second a random route is changed
//! (its weight, or its path), about every two seconds a random pod is replaced (its
//! EndpointSlice's address). Measured on the controller and the proxy: CPU and memory, and
//! the bytes the controller sent the proxy, during the ramp and in the steady state.

use std::time::{Duration, Instant};

use rauta_tests::harness::https_get;

use crate::env::{Env, EnvOptions, PhaseCost, Usage, get, http_client, jittered, usage};
use crate::manifests as m;
use crate::propagation::{Probe, probe};

#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// NAMESPACES x ROUTES: one route per app.
    Routes { namespaces: usize, apps: usize },
    /// NAMESPACES x SETS x ROUTES: one ListenerSet per app, ROUTES routes on it.
    ListenerSets {
        namespaces: usize,
        apps: usize,
        routes: usize,
    },
}

impl Shape {
    pub fn namespaces(&self) -> usize {
        match *self {
            Shape::Routes { namespaces, .. } | Shape::ListenerSets { namespaces, .. } => namespaces,
        }
    }

    pub fn apps(&self) -> usize {
        match *self {
            Shape::Routes { apps, .. } | Shape::ListenerSets { apps, .. } => apps,
        }
    }

    pub fn routes_per_app(&self) -> usize {
        match *self {
            Shape::Routes { .. } => 1,
            Shape::ListenerSets { routes, .. } => routes,
        }
    }

    pub fn total_routes(&self) -> usize {
        self.namespaces() * self.apps() * self.routes_per_app()
    }

    pub fn label(&self) -> String {
        match *self {
            Shape::Routes { namespaces, apps } => format!("{namespaces}x{apps}"),
            Shape::ListenerSets {
                namespaces,
                apps,
                routes,
            } => format!("{namespaces}x{apps}x{routes}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Scale {
    pub label: String,
    pub routes: usize,
    pub listener_sets: usize,
    /// Controller and proxy before the first namespace.
    pub idle_controller: Usage,
    pub idle_proxy: Usage,
    /// From the first namespace until the last route is served and every route's status is
    /// written.
    pub ramp: PhaseCost,
    /// Creating the namespaces (half a second apart).
    pub create_s: f64,
    /// After the last namespace was created: until its last route was served, until every
    /// route's status was written.
    pub served_after_s: f64,
    pub status_after_s: f64,
    pub steady: PhaseCost,
    pub route_changes: usize,
    pub pod_changes: usize,
    /// Routes probed (created and polled until 200) while the ramp and steady state run.
    pub load_probes: Vec<Probe>,
    pub translations: f64,
    pub endpoint_refreshes: f64,
    /// Every route served and its status written within the limit; if not, the "steady
    /// state" is the controller still catching up.
    pub converged: bool,
    /// Routes carrying our Accepted status when the wait ended.
    pub routes_with_status: usize,
}

impl Scale {
    /// The peak resident memory over the whole run (MiB): controller, proxy.
    pub fn peaks(&self) -> (f64, f64) {
        (
            self.ramp
                .controller
                .peak_mib
                .max(self.steady.controller.peak_mib),
            self.ramp.proxy.peak_mib.max(self.steady.proxy.peak_mib),
        )
    }
}

struct App {
    ns: usize,
    j: usize,
    /// Fake pod number (its address); None: the echo backend, which is never replaced.
    pod: Option<u64>,
    weight: u64,
    /// ListenerSet routes' path parts.
    randoms: Vec<u64>,
}

impl App {
    fn namespace(&self) -> String {
        format!("mesh-{}", self.ns)
    }

    fn name(&self) -> String {
        format!("app-{}", self.j)
    }

    fn hostname(&self, shape: Shape) -> String {
        match shape {
            Shape::Routes { .. } => format!("app-{}.mesh-{}.example.com", self.j, self.ns),
            Shape::ListenerSets { .. } => format!("mesh-{}-app-{}.example.com", self.ns, self.j),
        }
    }

    fn endpoint_slice(&self, env: &Env) -> serde_json::Value {
        let (port, address) = match self.pod {
            Some(n) => (8080, m::pod_ip(n)),
            None => (env.echoes[0].http.port(), "127.0.0.1".to_owned()),
        };
        m::endpoint_slice(
            &self.namespace(),
            &self.name(),
            &format!("{}-0", self.name()),
            &[("http", port)],
            &address,
        )
    }

    fn routes(&self, shape: Shape) -> Vec<serde_json::Value> {
        let (ns, name, host) = (self.namespace(), self.name(), self.hostname(shape));
        match shape {
            Shape::Routes { .. } => vec![m::app_route(
                &ns,
                &name,
                &host,
                &[m::gateway_ref("bench", "gw")],
                self.weight,
            )],
            Shape::ListenerSets { .. } => self
                .randoms
                .iter()
                .enumerate()
                .map(|(k, r)| m::listener_set_route(&ns, &name, k, &host, *r))
                .collect(),
        }
    }
}

fn wildcard_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["*.example.com".to_owned()]).expect("cert params");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Whether the app's first route answers other than 404 (it exists on the proxy; its pod is
/// a loopback address nothing listens on, so 502/503 is the expected answer), or 200 for
/// the echo-backed app.
async fn served(env: &Env, shape: Shape, app: &App, cert: &str, want_ok: bool) -> bool {
    let host = app.hostname(shape);
    let status = match shape {
        Shape::Routes { .. } => get(&http_client(), env.http, &host, "/")
            .await
            .map(|a| a.status),
        Shape::ListenerSets { .. } => {
            let path = format!("/0/{}", app.randoms[0]);
            https_get(env.https, &host, &[cert], false, &path)
                .await
                .map(|r| r.status)
        }
    };
    match status {
        Ok(200) => true,
        Ok(404) | Err(_) => false,
        Ok(_) => !want_ok,
    }
}

pub struct Settings {
    pub grace: Duration,
    /// How long to wait, after the last namespace, for every route to be served and have
    /// its status.
    pub converge_limit: Duration,
    pub steady: Duration,
    pub load_probes: usize,
    pub probe_pause: Duration,
}

pub async fn run(shape: Shape, settings: &Settings) -> (Scale, Vec<String>) {
    let env = Env::start(EnvOptions {
        name: match shape {
            Shape::Routes { .. } => "scale",
            Shape::ListenerSets { .. } => "listenerset",
        },
        echoes: 1,
        listener_sets: matches!(shape, Shape::ListenerSets { .. }),
    })
    .await;
    let mut problems = Vec::new();
    let (cert, key) = wildcard_certificate();
    let mut out = Scale {
        label: shape.label(),
        routes: shape.total_routes(),
        listener_sets: match shape {
            Shape::Routes { .. } => 0,
            Shape::ListenerSets { .. } => shape.namespaces() * shape.apps(),
        },
        idle_controller: usage(env.controller_pid()),
        idle_proxy: usage(env.proxy_pid()),
        ..Default::default()
    };
    let mut pods = 0u64;
    let mut apps: Vec<App> = Vec::new();
    for ns in 0..shape.namespaces() {
        for j in 0..shape.apps() {
            let echo = ns == 0 && j == 0;
            apps.push(App {
                ns,
                j,
                pod: (!echo).then(|| {
                    pods += 1;
                    pods
                }),
                weight: 1,
                randoms: (0..shape.routes_per_app())
                    .map(|_| rand::random::<u32>().into())
                    .collect(),
            });
        }
    }

    let client = http_client();
    let probing = async {
        let mut probes = Vec::new();
        for p in 0..settings.load_probes {
            probes.push(probe(&env.fake, &client, env.http, 100_000 + p).await);
            tokio::time::sleep(settings.probe_pause).await;
        }
        probes
    };

    let load = async {
        let phase = env.phase();
        let started = Instant::now();
        for ns in 0..shape.namespaces() {
            let namespace = format!("mesh-{ns}");
            env.fake.apply(m::namespace(&namespace));
            if matches!(shape, Shape::ListenerSets { .. }) {
                env.fake
                    .apply(m::tls_secret(&namespace, "ns-cert", &cert, &key));
            }
            for app in apps.iter().filter(|a| a.ns == ns) {
                env.fake
                    .apply(m::service(&namespace, &app.name(), &[("http", 80, 8080)]));
                env.fake.apply(app.endpoint_slice(&env));
                if matches!(shape, Shape::ListenerSets { .. }) {
                    env.fake.apply(m::listener_set(
                        &namespace,
                        &app.name(),
                        &app.hostname(shape),
                    ));
                }
                for route in app.routes(shape) {
                    env.fake.apply(route);
                }
            }
            if ns + 1 < shape.namespaces() {
                tokio::time::sleep(settings.grace).await;
            }
        }
        let created = Instant::now();
        let last = apps.last().expect("at least one app");
        let deadline = created + settings.converge_limit;
        let mut converged = true;
        while !(served(&env, shape, last, &cert, false).await
            && served(&env, shape, &apps[0], &cert, true).await)
        {
            if Instant::now() > deadline {
                // A finding about the controller, not a failure of the bench: the table
                // says NOT CONVERGED.
                eprintln!(
                    "  {}: the last route was not served within {:?} of the last namespace",
                    shape.label(),
                    settings.converge_limit
                );
                converged = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let served_after = created.elapsed();
        let mut with_status;
        loop {
            let routes = env.fake.objects(m::V1, "HTTPRoute");
            let done = routes
                .iter()
                .filter(|r| r["metadata"]["namespace"] != "default")
                .filter(|r| m::our_parents(r) == [true])
                .count();
            with_status = done;
            if done == shape.total_routes() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "  {}: {done} of {} routes with our Accepted status {:?} after the last namespace",
                    shape.label(),
                    shape.total_routes(),
                    settings.converge_limit
                );
                converged = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let status_after = created.elapsed();
        let ramp = env.end(&phase);
        eprintln!(
            "  {}: created in {:.1} s; last route served {:.1} s later, every status {:.1} s later; controller CPU {:.1} s, proxy CPU {:.1} s, {:.1} MiB to the proxy",
            shape.label(),
            (created - started).as_secs_f64(),
            served_after.as_secs_f64(),
            status_after.as_secs_f64(),
            ramp.controller.cpu_ms / 1e3,
            ramp.proxy.cpu_ms / 1e3,
            ramp.bytes_to_proxy as f64 / 1048576.0
        );

        // Steady state: routes and pods change under a jittered clock.
        let phase = env.phase();
        let until = Instant::now() + settings.steady;
        let mut next_route = Instant::now() + jittered(Duration::from_secs(1));
        let mut next_pod = Instant::now() + jittered(Duration::from_secs(2));
        let (mut route_changes, mut pod_changes) = (0usize, 0usize);
        let churned: Vec<usize> = (0..apps.len()).filter(|&i| apps[i].pod.is_some()).collect();
        let mut apps = apps;
        while !churned.is_empty() {
            let at = next_route.min(next_pod);
            if at > until {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let app = &mut apps[churned[rand::random_range(0..churned.len())]];
            if at == next_route {
                // One route of the app changes (a ListenerSet app has 16).
                let k = rand::random_range(0..app.randoms.len().max(1));
                match shape {
                    Shape::Routes { .. } => app.weight += 1,
                    Shape::ListenerSets { .. } => app.randoms[k] = rand::random::<u32>().into(),
                }
                env.fake.apply(app.routes(shape).swap_remove(k));
                route_changes += 1;
                next_route += jittered(Duration::from_secs(1));
            } else {
                pods += 1;
                app.pod = Some(pods);
                env.fake.apply(app.endpoint_slice(&env));
                pod_changes += 1;
                next_pod += jittered(Duration::from_secs(2));
            }
        }
        tokio::time::sleep_until(until.into()).await;
        let steady = env.end(&phase);
        (
            ramp,
            (created - started).as_secs_f64(),
            served_after.as_secs_f64(),
            status_after.as_secs_f64(),
            steady,
            route_changes,
            pod_changes,
            converged,
            with_status,
        )
    };
    let (
        (
            ramp,
            create_s,
            served_after_s,
            status_after_s,
            steady,
            route_changes,
            pod_changes,
            converged,
            with_status,
        ),
        load_probes,
    ) = tokio::join!(load, probing);
    let text = env.controller_metrics().await;
    out.ramp = ramp;
    out.create_s = create_s;
    out.served_after_s = served_after_s;
    out.status_after_s = status_after_s;
    out.steady = steady;
    out.route_changes = route_changes;
    out.pod_changes = pod_changes;
    out.load_probes = load_probes;
    out.converged = converged;
    out.routes_with_status = with_status;
    out.translations = metric_sum(&text, "rauta_controller_translations_total");
    out.endpoint_refreshes = metric_sum(&text, "rauta_controller_endpoint_refreshes_total");
    let (cp, pp) = out.peaks();
    eprintln!(
        "  {} steady {:.0} s: controller {:.0} m CPU, proxy {:.0} m CPU, {:.0} B/s to the proxy ({} route and {} pod changes); RSS controller {:.1} MiB (peak {:.1}), proxy {:.1} MiB (peak {:.1}); {} translations",
        out.label,
        steady.seconds,
        steady.controller.millicores(),
        steady.proxy.millicores(),
        steady.bytes_per_second(),
        route_changes,
        pod_changes,
        steady.controller.rss_mib,
        cp,
        steady.proxy.rss_mib,
        pp,
        out.translations
    );
    if !out.load_probes.is_empty() {
        let ms: Vec<f64> = out
            .load_probes
            .iter()
            .filter(|p| !p.timed_out)
            .map(|p| p.ms)
            .collect();
        eprintln!(
            "  {} routes probed under load: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, {} errors",
            out.load_probes.len(),
            crate::env::percentile(&ms, 50.0),
            crate::env::percentile(&ms, 90.0),
            crate::env::percentile(&ms, 100.0),
            out.load_probes.iter().map(|p| p.errors).sum::<usize>()
        );
    }
    if let Err(e) = env.check_alive() {
        problems.push(e);
    }
    (out, problems)
}
