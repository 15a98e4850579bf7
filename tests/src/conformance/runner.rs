//! Runs cases one at a time on top of the base manifests and reports each as PASS, FAIL (with
//! the first mismatch) or SKIP (with the reason), then `conformance: N passed, M failed, K skipped`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rauta_common::api::v1::ListStatusesRequest;
use serde_json::Value;

use super::case::{Case, Expect, ExpectEntry, NsName, Phase, load_cases};
use super::http::{self, Target};
use super::report;
use super::status::{self, STATUS_KINDS, StatusView};
use super::world::{CLASS_NAME, World};

/// `needs` this runner and RAUTA can serve today. Anything else is reported as a skip.
const SUPPORTED_NEEDS: &[&str] = &[
    "h2c",
    "tls",
    "h2",
    "timeouts",
    "mirror",
    "websocket",
    "mtls",
    "retry-echo",
    "backend-tls",
    "listenerset",
    "static-addresses",
    "grpc",
    "tls-passthrough",
    "tcp",
    "udp",
    "dns",
    "tls-terminate",
    "manifest-backends",
];

#[derive(Debug, Clone)]
pub struct Options {
    pub cases_dir: PathBuf,
    /// Run only these cases (all when empty).
    pub only: Vec<String>,
    /// Longest wait for any eventually-true check (upstream allows 30-180 s).
    pub budget: Duration,
    /// Run the controller in Kubernetes mode against the fake API server.
    pub kubernetes: bool,
    /// Where to write the run's ConformanceReport (upstream's format), if anywhere.
    pub report: Option<PathBuf>,
    /// The report's `implementation`.
    pub implementation: report::Implementation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// Not run for a reason of this runner's (needs a cluster, a capability not implemented).
    Skip(String),
    /// Not run because RAUTA does not claim every feature the case lists: upstream does not
    /// run such a test either, and leaves it out of its report.
    NotSupported(String),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

async fn view(world: &World) -> Result<StatusView, String> {
    if let Some(objects) = world.cluster_objects(&STATUS_KINDS) {
        return Ok(StatusView::from_objects(&objects));
    }
    let mut admin = world.controller.try_admin().await?;
    let objects = admin
        .list_statuses(ListStatusesRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .objects;
    Ok(StatusView { objects })
}

/// Polls `check` against fresh statuses until it holds or the budget runs out.
async fn eventually_status<F>(world: &World, budget: Duration, check: F) -> Result<(), String>
where
    F: Fn(&StatusView, &World) -> Result<(), String>,
{
    let deadline = Instant::now() + budget;
    loop {
        let result = match view(world).await {
            Ok(v) => check(&v, world),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Cases whose `kubernetes` need this runner cannot stand in for: they observe objects that
/// only a cluster creates (pods and Services generated for a Gateway).
const CLUSTER_ONLY: &[(&str, &str)] = &[(
    "GatewayInfrastructure",
    "needs a Kubernetes cluster: checks the Pods/Services/ServiceAccounts an implementation generates per Gateway (RAUTA proxies are deployed by the user, not generated)",
)];

/// Why a case is not run, if it is not.
fn skip_reason(case: &Case, features: &BTreeSet<String>) -> Option<Outcome> {
    // Upstream skips a test unless the implementation claims every feature it lists.
    if let Some(f) = case.features.iter().find(|f| !features.contains(*f)) {
        return Some(Outcome::NotSupported(format!("missing feature {f}")));
    }
    if let Some(f) = case
        .skip_if_supported
        .iter()
        .find(|f| features.contains(*f))
    {
        return Some(Outcome::Skip(format!(
            "claims {f}: upstream passes the case without checking"
        )));
    }
    if let Some((_, reason)) = CLUSTER_ONLY.iter().find(|(n, _)| *n == case.name) {
        return Some(Outcome::Skip((*reason).to_owned()));
    }
    // Other `kubernetes` needs (Deployments in a case's manifests, EndpointSlices to fill) are
    // served by the world's echo pods.
    case.needs
        .iter()
        .find(|n| *n != "kubernetes" && !SUPPORTED_NEEDS.contains(&n.as_str()))
        .map(|n| Outcome::Skip(format!("needs {n}, not implemented yet")))
}

/// Runs every selected case; prints one line each and the summary line.
pub async fn run(opts: &Options) -> Result<Totals, String> {
    let mut cases = load_cases(&opts.cases_dir)?;
    if !opts.only.is_empty() {
        let known: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        if let Some(missing) = opts.only.iter().find(|n| !known.contains(n.as_str())) {
            return Err(format!("no case named {missing:?}"));
        }
        cases.retain(|c| opts.only.contains(&c.name));
    }
    let mut world =
        World::start(&opts.cases_dir.join("base/manifests.yaml"), opts.kubernetes).await?;
    let mut features = BTreeSet::new();
    eventually_status(&world, Duration::from_secs(20), |v, _| {
        match v.get("GatewayClass", "", CLASS_NAME) {
            Some(c)
                if c.conditions
                    .iter()
                    .any(|c| c.r#type == "Accepted" && c.status == "True") =>
            {
                Ok(())
            }
            _ => Err(format!("GatewayClass {CLASS_NAME} is not Accepted")),
        }
    })
    .await?;
    if let Some(class) = view(&world).await?.get("GatewayClass", "", CLASS_NAME) {
        features.extend(class.supported_features.iter().cloned());
    }
    let mut totals = Totals::default();
    let mut outcomes = Vec::new();
    for case in &cases {
        let outcome = match skip_reason(case, &features) {
            Some(skipped) => skipped,
            None => run_case(&mut world, case, opts).await,
        };
        match &outcome {
            Outcome::Pass => {
                totals.passed += 1;
                println!("PASS {}", case.name);
            }
            Outcome::Fail(why) => {
                totals.failed += 1;
                println!("FAIL {}: {why}", case.name);
            }
            Outcome::Skip(why) | Outcome::NotSupported(why) => {
                totals.skipped += 1;
                println!("SKIP {}: {why}", case.name);
            }
        }
        outcomes.push((case, outcome));
    }
    println!(
        "conformance: {} passed, {} failed, {} skipped ({})",
        totals.passed,
        totals.failed,
        totals.skipped,
        match opts.kubernetes {
            true => "Kubernetes mode, objects listed and watched from an API server",
            false => "standalone mode, objects read from a directory",
        }
    );
    if let Some(path) = &opts.report {
        let run = report::Run {
            cases_dir: &opts.cases_dir,
            claimed: &features,
            outcomes: &outcomes,
            kubernetes: opts.kubernetes,
            implementation: &opts.implementation,
            date: &super::world::now_rfc3339(),
        };
        let written = report::write(path, &run).map_err(|e| e.to_string())?;
        for profile in &written.profiles {
            println!("{}: {}", profile.name, profile.summary());
        }
        println!("report written to {}", path.display());
    }
    Ok(totals)
}

async fn run_case(world: &mut World, case: &Case, opts: &Options) -> Outcome {
    if let Err(e) = world.apply_case(&opts.cases_dir, &case.manifests).await {
        return Outcome::Fail(format!("applying manifests: {e}"));
    }
    let result = run_steps(world, case, opts).await;
    let cleared = world.clear_case();
    // Let the controller drop the case's objects before the next case looks at statuses.
    let gone = eventually_status(world, Duration::from_secs(10), |v, _| {
        let leftover = case_routes(case)
            .into_iter()
            .find(|(kind, ns, name)| v.get(kind, ns, name).is_some());
        leftover.map_or(Ok(()), |(kind, ns, name)| {
            Err(format!("{kind} {ns}/{name} still has status"))
        })
    })
    .await;
    match (result, cleared, gone) {
        (Err(e), _, _) => Outcome::Fail(e),
        (Ok(()), Err(e), _) | (Ok(()), Ok(()), Err(e)) => {
            Outcome::Fail(format!("cleaning up: {e}"))
        }
        (Ok(()), Ok(()), Ok(())) => Outcome::Pass,
    }
}

/// (kind, namespace, name) of the routes the case waits for.
fn case_routes(case: &Case) -> Vec<(String, String, String)> {
    case.routes_must_be_accepted
        .iter()
        .map(|r| (r.kind().to_owned(), r.namespace.clone(), r.name.clone()))
        .collect()
}

async fn run_steps(world: &mut World, case: &Case, opts: &Options) -> Result<(), String> {
    // Proxies first: a Gateway has an address once a proxy serves it.
    let mut gateways: Vec<NsName> = case.gateway.iter().cloned().collect();
    gateways.extend(case.expect.iter().filter_map(ExpectEntry::gateway));
    gateways.extend(
        case.routes_must_be_accepted
            .iter()
            .filter(|r| r.parent.kind.as_deref().unwrap_or("Gateway") == "Gateway")
            .map(|r| NsName {
                namespace: r.parent.namespace.clone(),
                name: r.parent.name.clone(),
            }),
    );
    for gw in &gateways {
        if world.object("Gateway", &gw.namespace, &gw.name).is_some() {
            world.gateway_ip(gw);
        }
    }
    for route in &case.routes_must_be_accepted {
        eventually_status(world, opts.budget, |v, w| {
            status::route_accepted(route, v, w)
        })
        .await
        .map_err(|e| format!("route {}/{} not accepted: {e}", route.namespace, route.name))?;
    }
    check_statuses(world, &case.status_expectations, opts).await?;
    for entry in &case.expect {
        run_entry(world, case, entry, opts).await?;
    }
    for extra in &case.extra_assertions {
        run_extra(world, case, extra).await?;
    }
    for phase in &case.phases {
        let steps: Vec<&Phase> = if phase.steps.is_empty() {
            vec![phase]
        } else {
            phase.steps.iter().collect()
        };
        for step in steps {
            if let Some(delay) = step.delay_before_s.or(phase.delay_before_s) {
                tokio::time::sleep(Duration::from_secs_f64(delay)).await;
            }
            if let Some(action) = &step.action {
                world.act(action).await.map_err(|e| {
                    format!("phase {:?}: {e}", step.description.as_deref().unwrap_or(""))
                })?;
            }
            check_statuses(world, &step.status_expectations, opts).await?;
            for entry in &step.expect {
                run_entry(world, case, entry, opts).await?;
            }
        }
    }
    Ok(())
}

async fn check_statuses(world: &World, checks: &[Value], opts: &Options) -> Result<(), String> {
    for c in checks {
        eventually_status(world, opts.budget, |v, w| status::check(c, v, w)).await?;
    }
    Ok(())
}

async fn run_entry(
    world: &mut World,
    case: &Case,
    entry: &ExpectEntry,
    opts: &Options,
) -> Result<(), String> {
    match entry {
        ExpectEntry::Http(expect) => run_expect(world, case, expect, opts).await,
        ExpectEntry::Other { kind, spec } => {
            super::kinds::run(world, case, kind, spec, opts.budget).await
        }
    }
}

fn target(world: &mut World, case: &Case, expect: &Expect) -> Result<(Target, String), String> {
    let gw = expect
        .gateway
        .clone()
        .or_else(|| case.gateway.clone())
        .ok_or("expect entry without a gateway")?;
    let port = match expect.port {
        Some(p) => p,
        None => world
            .first_listener_port(&gw)
            .ok_or_else(|| format!("Gateway {}/{} has no listener", gw.namespace, gw.name))?,
    };
    let scheme = expect.scheme.clone().unwrap_or_else(|| "http".into());
    let tls = match scheme.as_str() {
        "http" => None,
        "https" => {
            let t = expect.tls.clone().unwrap_or_default();
            let client_cert = match t["client_cert_from_secret"].as_str() {
                Some(r) => Some((
                    world.secret_text(r, "tls.crt")?,
                    world.secret_text(r, "tls.key")?,
                )),
                None => None,
            };
            let server_name = t["server_name"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| expect.request.host.clone())
                .unwrap_or_default();
            let trusted_pem = match t["ca_from_secret"].as_str() {
                Some(r) => vec![world.secret_text(r, "tls.crt")?],
                None => Vec::new(),
            };
            Some(http::ClientTls {
                server_name,
                trusted_pem,
                client_cert,
            })
        }
        other => return Err(format!("scheme {other} is not supported")),
    };
    let socket = world.listener_addr(&gw, port);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = if port == default_port {
        socket.ip().to_string()
    } else {
        format!("{}:{port}", socket.ip())
    };
    Ok((
        Target {
            socket,
            authority,
            tls,
        },
        scheme,
    ))
}

async fn run_expect(
    world: &mut World,
    case: &Case,
    expect: &Expect,
    opts: &Options,
) -> Result<(), String> {
    let (target, scheme) = target(world, case, expect)?;
    let label = expect.name.clone().unwrap_or_else(|| {
        format!(
            "{} {}",
            expect.request.method.as_deref().unwrap_or("GET"),
            expect.request.path
        )
    });
    let path = if expect.mirrored_to.is_empty() {
        expect.request.path.clone()
    } else {
        http::path_with_request_id(
            &expect.request.path,
            &format!("{:032x}", rand::random::<u128>()),
        )
    };
    // The TLS details a backend must have seen may quote generated certificates.
    let mut expanded = expect.clone();
    if let Some(c) = &expanded.request.client_cert {
        expanded.request.client_cert = Some(world.expand(c)?);
    }
    if let Some(c) = expanded
        .expected_request
        .as_mut()
        .and_then(|e| e.client_cert.as_mut())
    {
        *c = world.expand(c)?;
    }
    http::run(
        &expanded,
        &target,
        &path,
        &scheme,
        opts.budget.min(Duration::from_secs(30)),
    )
    .await
    .map_err(|e| {
        format!(
            "{label} (host {:?}): {e}",
            expect.request.host.as_deref().unwrap_or(&target.authority)
        )
    })?;
    for mirror in &expect.mirrored_to {
        if let Some(percent) = mirror.percent.filter(|p| *p < 100.0) {
            mirror_distribution(world, expect, &target, &scheme, mirror, percent)
                .await
                .map_err(|e| format!("{label}: {e}"))?;
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !world
            .received_by(&mirror.namespace, &mirror.name)
            .contains(&path)
        {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{label}: mirror {}/{} never received {path}",
                    mirror.namespace, mirror.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Upstream's percentage-mirror check: 500 requests sharing one request id; the mirror's count
/// must lie within 3 standard deviations of Binomial(500, percent). Up to 5 attempts.
async fn mirror_distribution(
    world: &World,
    expect: &Expect,
    target: &Target,
    scheme: &str,
    mirror: &super::case::Mirror,
    percent: f64,
) -> Result<(), String> {
    const N: usize = 500;
    let p = percent / 100.0;
    let (mean, sd) = (N as f64 * p, (N as f64 * p * (1.0 - p)).sqrt());
    let mut last = String::new();
    for _ in 0..5 {
        let path = http::path_with_request_id(
            &expect.request.path,
            &format!("{:032x}", rand::random::<u128>()),
        );
        let mut sent = 0;
        while sent < N {
            let batch: Vec<_> = (0..10.min(N - sent))
                .map(|_| {
                    let (e, t, p, s) = (
                        expect.clone(),
                        target.clone(),
                        path.clone(),
                        scheme.to_owned(),
                    );
                    tokio::spawn(async move {
                        let o = http::send(&e, &t, &p).await?;
                        http::compare(&e, &o, &p, &s)
                    })
                })
                .collect();
            for task in batch {
                task.await.map_err(|e| e.to_string())??;
            }
            sent += 10;
        }
        // Copies are sent in the background; give the last ones a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let count = world
            .received_by(&mirror.namespace, &mirror.name)
            .iter()
            .filter(|t| **t == path)
            .count() as f64;
        if (count - mean).abs() <= 3.0 * sd {
            return Ok(());
        }
        last = format!(
            "mirror {} got {count} of {N} copies, want {mean:.0} +/- {:.0}",
            mirror.name,
            3.0 * sd
        );
    }
    Err(last)
}

/// Dials ws://<gateway>/ws, sends a text and a binary message and expects both back.
async fn websocket_echo(target: &Target, origin: &str) -> Result<(), String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::Message;
    let mut request = format!("ws://{}/ws", target.authority)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "origin",
        origin.parse().map_err(|_| "bad origin".to_owned())?,
    );
    let tcp = tokio::net::TcpStream::connect(target.socket)
        .await
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        for message in [
            Message::text("Websocket Support!"),
            Message::binary(vec![1u8, 2, 3, 4, 5, 6, 7]),
        ] {
            ws.send(message.clone()).await.map_err(|e| e.to_string())?;
            match ws.next().await {
                Some(Ok(echoed)) if echoed == message => {}
                other => return Err(format!("sent {message:?}, got {other:?}")),
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// The request an extra assertion sends: its `request`, answered 200 by the case's namespace.
fn extra_request(
    world: &mut World,
    case: &Case,
    extra: &Value,
) -> Result<(Expect, Target), String> {
    let expect: Expect = serde_json::from_value(serde_json::json!({
        "request": extra["request"], "response": {"status": [200]},
        "namespace": case.expect.first().and_then(ExpectEntry::http).and_then(|e| e.namespace.clone()),
    }))
    .map_err(|e| e.to_string())?;
    let (target, _) = target(world, case, &expect)?;
    Ok((expect, target))
}

async fn run_extra(world: &mut World, case: &Case, extra: &Value) -> Result<(), String> {
    match extra["type"].as_str() {
        Some("weighted_distribution") => {
            let (expect, target) = extra_request(world, case, extra)?;
            let total = extra["total_requests"].as_u64().unwrap_or(500) as usize;
            let concurrency = extra["concurrency"].as_u64().unwrap_or(10) as usize;
            let tolerance = extra["tolerance"].as_f64().unwrap_or(0.05);
            let attempts = extra["max_attempts"].as_u64().unwrap_or(10);
            let weights = extra["expected_weights"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut last = String::new();
            for _ in 0..attempts {
                // A failed sample fails the attempt, not the case: upstream tries again (the
                // route may still be on its way to the proxy when the check starts).
                let seen = match http::distribution(&expect, &target, total, concurrency).await {
                    Ok(seen) => seen,
                    Err(e) => {
                        last = e;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let mut ok = true;
                for (backend, w) in &weights {
                    let w = w.as_f64().unwrap_or(0.0);
                    let got = seen.get(backend).copied().unwrap_or(0.0);
                    if (w == 0.0 && got > 0.0) || (got - w).abs() > tolerance {
                        ok = false;
                    }
                }
                if seen.keys().any(|b| !weights.contains_key(b)) {
                    ok = false;
                }
                if ok {
                    return Ok(());
                }
                last = format!("observed shares {seen:?}, want {weights:?} +/- {tolerance}");
            }
            Err(last)
        }
        Some("backend_header_names_pod") => {
            let (expect, target) = extra_request(world, case, extra)?;
            let header = extra["header"].as_str().unwrap_or("Backend");
            for _ in 0..extra["count"].as_u64().unwrap_or(100) {
                let o = http::send(&expect, &target, &expect.request.path).await?;
                let echo = o
                    .echo
                    .ok_or_else(|| format!("status {} without an echo answer", o.status))?;
                let values: Vec<&str> = echo["headers"]
                    .as_object()
                    .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(header)))
                    .and_then(|(_, v)| v.as_array())
                    .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                let pod = echo["pod"].as_str().unwrap_or("");
                match values.as_slice() {
                    [one] if pod.starts_with(one) => {}
                    _ => return Err(format!("pod {pod} saw {header} = {values:?}")),
                }
            }
            Ok(())
        }
        Some("websocket_echo") => {
            let (_, target) = extra_request(
                world,
                case,
                &serde_json::json!({"request": {"path": "/ws"}}),
            )?;
            let origin = extra["origin"]
                .as_str()
                .unwrap_or("ws://gateway")
                .to_owned();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut streak = 0;
            loop {
                match websocket_echo(&target, &origin).await {
                    Ok(()) => {
                        streak += 1;
                        if streak == 3 {
                            return Ok(());
                        }
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("WebSocket echo: {e}"));
                    }
                    Err(_) => {
                        streak = 0;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        other => Err(format!(
            "extra assertion {other:?} is not supported by this runner"
        )),
    }
}
