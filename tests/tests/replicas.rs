//! Several controller replicas, one truth: three replicas in Kubernetes mode against one
//! API server, a proxy on each. A NACK of a proxy on a replica that does not lead reaches the
//! Gateway's status the leader writes and the leader's WatchVersions, and every replica's
//! ListProxies shows every proxy with the replica it is on. Killing the leader, then stopping
//! another replica, while requests flow through every proxy loses none: proxies move to the
//! replicas left, another replica takes the Lease, and status writing goes on.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rauta_common::api::v1::{WatchVersionsRequest, version_event};
use rauta_tests::fake_kube::FakeApiServer;
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, eventually, eventually_served_by, free_port, http_get,
};
use rauta_tests::manifests::{CONTROLLER_NAME, gateway, infra, prefix_route};
use serde_json::Value;

const V1: &str = "gateway.networking.k8s.io/v1";
const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];

struct Fleet {
    _echo: Echo,
    pod: String,
    fake: FakeApiServer,
    controllers: Vec<Controller>,
    proxies: Vec<Proxy>,
}

/// Three replicas and three proxies; proxy i starts on replica i and knows every replica
/// (the next ones in turn), as a proxy behind a Service would reach any of them.
async fn fleet(ws: &Workspace) -> Fleet {
    let echo = Echo::start("blue-1-a", "apps", ws.path());
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("blue", &[echo.http])]));
    fake.apply_yaml(&prefix_route("web", "/", "blue"));
    let kubeconfig = fake.kubeconfig(ws.path());
    let controllers: Vec<Controller> = REPLICAS
        .iter()
        .map(|identity| {
            Controller::start_kubernetes(
                &kubeconfig,
                ws.path(),
                &[
                    "--identity",
                    identity,
                    "--namespace",
                    "rauta-system",
                    "--leader-lease-seconds",
                    "2",
                ],
            )
        })
        .collect();
    let mut proxies = Vec::new();
    for i in 0..controllers.len() {
        let urls: Vec<String> = (0..controllers.len())
            .map(|k| controllers[(i + k) % controllers.len()].url())
            .collect();
        let proxy = Proxy::start(&urls.join(","), "infra/gw", free_port() - 80, ws.path());
        proxy.wait_ready().await;
        let url = format!("http://{}/app", proxy.listener(80));
        eventually_served_by(&url, &echo.pod, Duration::from_secs(20)).await;
        proxies.push(proxy);
    }
    Fleet {
        pod: echo.pod.clone(),
        _echo: echo,
        fake,
        controllers,
        proxies,
    }
}

fn proxy_id(proxy: &Proxy) -> String {
    format!("test-proxy-{}", proxy.admin.port())
}

fn holder(fake: &FakeApiServer) -> Option<String> {
    fake.object(
        "coordination.k8s.io/v1",
        "Lease",
        "rauta-system",
        "rauta-controller",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// (proxy id, replica) as a replica's ListProxies shows them, sorted.
async fn listing(controller: &Controller) -> Vec<(String, String)> {
    let mut out: Vec<_> = controller
        .proxies()
        .await
        .into_iter()
        .map(|p| (p.id, p.controller))
        .collect();
    out.sort();
    out
}

/// The Gateway's Programmed condition in the API server: (status, reason, message).
fn programmed(fake: &FakeApiServer) -> Option<(String, String, String)> {
    let gateway = fake.object(V1, "Gateway", "infra", "gw")?;
    gateway["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Programmed")
        .map(|c| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&c["status"]), text(&c["reason"]), text(&c["message"]))
        })
}

/// Whether RAUTA's entry in the route's status is Accepted.
fn route_accepted(fake: &FakeApiServer, name: &str) -> bool {
    fake.object(V1, "HTTPRoute", "apps", name).is_some_and(|r| {
        r["status"]["parents"].as_array().is_some_and(|parents| {
            parents.iter().any(|p| {
                p["controllerName"] == CONTROLLER_NAME
                    && p["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                    })
            })
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_on_a_replica_that_does_not_lead_reaches_the_gateway_status() {
    let ws = Workspace::new();
    let f = fleet(&ws).await;
    let expected: Vec<(String, String)> = f
        .proxies
        .iter()
        .zip(REPLICAS)
        .map(|(p, r)| (proxy_id(p), r.to_owned()))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    // Every replica lists every proxy, each with the replica it is on.
    for controller in &f.controllers {
        eventually(Duration::from_secs(15), || async {
            listing(controller).await == expected_sorted
        })
        .await;
    }
    eventually(Duration::from_secs(10), || async {
        holder(&f.fake).is_some()
    })
    .await;
    let leader = holder(&f.fake).unwrap();
    let n = REPLICAS.iter().position(|r| *r != leader).unwrap();
    let (victim, others): (Vec<_>, Vec<_>) =
        f.proxies.iter().enumerate().partition(|(i, _)| *i == n);
    let victim = victim[0].1;
    // WatchVersions on the leader, which the victim is not connected to: its NACK arrives
    // through the victim's replica's proxy report.
    let leader_index = REPLICAS.iter().position(|r| *r == leader).unwrap();
    let mut versions = f.controllers[leader_index]
        .admin()
        .await
        .watch_versions(WatchVersionsRequest {
            gateway: "infra/gw".into(),
        })
        .await
        .unwrap()
        .into_inner();

    // A new listener whose port is taken on that proxy only: it NACKs, the others ACK.
    let (squatter, extra) = loop {
        let taken = free_port();
        let Some(port) = taken.checked_sub(victim.port_offset) else {
            continue;
        };
        if port > 0 && port != 80 && others.iter().all(|(_, p)| bindable(port, p)) {
            break (TcpListener::bind(("127.0.0.1", taken)).unwrap(), port);
        }
    };
    f.fake.apply_yaml(&gateway(
        "infra",
        "gw",
        "rauta",
        &[("http", 80, None), ("extra", extra, None)],
    ));
    eventually(Duration::from_secs(20), || async {
        programmed(&f.fake).is_some_and(|(status, reason, message)| {
            status == "False"
                && reason == "Invalid"
                && message.contains(&proxy_id(victim))
                && message.contains("cannot bind")
        })
    })
    .await;
    // The leader's WatchVersions shows the NACK, naming the replica the proxy is on.
    let nack = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = versions.message().await.unwrap() {
            if let Some(version_event::Event::Proxy(p)) = event.event
                && p.proxy == proxy_id(victim)
                && !p.accepted
            {
                return p;
            }
        }
        panic!("WatchVersions ended");
    })
    .await
    .expect("the leader's WatchVersions shows the NACK of a proxy on another replica");
    assert_eq!(nack.controller, REPLICAS[n]);
    assert!(nack.message.contains("cannot bind"), "{}", nack.message);
    drop(versions);
    // Any replica shows the rejection, on the replica the proxy is on.
    for controller in &f.controllers {
        eventually(Duration::from_secs(10), || async {
            controller.proxies().await.iter().any(|p| {
                p.id == proxy_id(victim)
                    && p.controller == REPLICAS[n]
                    && p.types.iter().any(|t| {
                        t.rejecting
                            && t.last_nack
                                .as_ref()
                                .is_some_and(|nack| nack.message.contains("cannot bind"))
                    })
            })
        })
        .await;
        assert_eq!(listing(controller).await, expected_sorted);
    }

    // The listener moves to a port free everywhere: the proxy accepts the next version, and
    // the Gateway is programmed again.
    let free_extra = loop {
        let Some(port) = free_port().checked_sub(f.proxies[0].port_offset) else {
            continue;
        };
        let fits = |p: &Proxy| bindable(port, p);
        if port > 0 && port != 80 && port != extra && f.proxies.iter().all(fits) {
            break port;
        }
    };
    f.fake.apply_yaml(&gateway(
        "infra",
        "gw",
        "rauta",
        &[("http", 80, None), ("extra", free_extra, None)],
    ));
    eventually(Duration::from_secs(20), || async {
        programmed(&f.fake).is_some_and(|(status, _, _)| status == "True")
    })
    .await;
    for p in &f.proxies {
        let url = format!("http://{}/app", p.listener(80));
        assert_eq!(http_get(&url, None).await.unwrap().pod(), f.pod);
    }
    drop(squatter);
}

/// Whether `proxy` could bind listener port `port` now: each proxy binds the port plus its
/// own offset, and that may be in use (a controller's gRPC port once failed this test).
fn bindable(port: u16, proxy: &Proxy) -> bool {
    u16::try_from(u32::from(port) + u32::from(proxy.port_offset))
        .is_ok_and(|bound| bound >= 1024 && TcpListener::bind(("127.0.0.1", bound)).is_ok())
}

/// Sends GETs through every proxy in turn until told to stop; returns (sent, failures).
fn traffic(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut sent, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for url in &urls {
                sent += 1;
                match http_get(url, None).await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("{url}: {} {}", r.status, r.body)),
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (sent, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_replicas_loses_no_request_and_status_writing_goes_on() {
    let ws = Workspace::new();
    let mut f = fleet(&ws).await;
    eventually(Duration::from_secs(10), || async {
        holder(&f.fake).is_some()
    })
    .await;
    let urls = f
        .proxies
        .iter()
        .map(|p| format!("http://{}/app", p.listener(80)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(urls, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The leader dies without a word: its Lease expires, another replica takes it and
    // writes the status of a route added after.
    let old = holder(&f.fake).unwrap();
    let l = REPLICAS.iter().position(|r| *r == old).unwrap();
    f.controllers[l].process.kill();
    f.fake.apply_yaml(&prefix_route("later", "/later", "blue"));
    eventually(Duration::from_secs(20), || async {
        holder(&f.fake).is_some_and(|h| h != old) && route_accepted(&f.fake, "later")
    })
    .await;
    let new_leader = holder(&f.fake).unwrap();
    // The dead replica's proxy moved: the others list all three, none on the dead one.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    for i in &survivors {
        eventually(Duration::from_secs(15), || async {
            let listed = listing(&f.controllers[*i]).await;
            listed.len() == 3 && listed.iter().all(|(_, r)| *r != old)
        })
        .await;
    }

    // The replica that does not lead stops gracefully: it withdraws its report, its proxies
    // move to the last one, which leads and writes on.
    let m = *survivors
        .iter()
        .find(|i| REPLICAS[**i] != new_leader)
        .unwrap();
    let s = *survivors.iter().find(|i| **i != m).unwrap();
    f.controllers[m].process.terminate();
    assert!(
        f.controllers[m]
            .process
            .wait_exit(Duration::from_secs(10))
            .is_some()
    );
    let report = format!("rauta-proxies-{}", REPLICAS[m]);
    assert!(
        f.fake
            .object("v1", "ConfigMap", "rauta-system", &report)
            .is_none(),
        "the stopped replica's report is withdrawn"
    );
    eventually(Duration::from_secs(15), || async {
        let listed = listing(&f.controllers[s]).await;
        listed.len() == 3 && listed.iter().all(|(_, r)| r == REPLICAS[s])
    })
    .await;
    f.fake
        .apply_yaml(&prefix_route("latest", "/latest", "blue"));
    eventually(Duration::from_secs(15), || async {
        route_accepted(&f.fake, "latest")
    })
    .await;
    for p in &f.proxies {
        let url = format!("http://{}/latest", p.listener(80));
        eventually_served_by(&url, &f.pod, Duration::from_secs(10)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = load.await.unwrap();
    assert!(sent > 30, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
}
