//! Status at scale, in Kubernetes mode against the in-process API server: with thousands of
//! routes attached, a change to one route writes that route's status and nothing else.

use std::time::{Duration, Instant};

use rauta_tests::fake_kube::FakeApiServer;
use rauta_tests::harness::{Controller, Workspace, eventually};
use rauta_tests::manifests::{CONTROLLER_NAME, infra, prefix_route};
use serde_json::Value;

const V1: &str = "gateway.networking.k8s.io/v1";
const ROUTES: usize = 10_000;

/// The status writes so far, as "PATCH <path>" lines.
fn status_writes(fake: &FakeApiServer) -> Vec<String> {
    fake.writes()
        .into_iter()
        .filter(|w| w.starts_with("PATCH") && w.ends_with("/status"))
        .collect()
}

/// Our entry's ResolvedRefs reason in a route's status.
fn resolved_refs(route: &Value) -> Option<String> {
    let parents = route["status"]["parents"].as_array()?;
    let ours = parents
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME)?;
    ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .and_then(|c| c["reason"].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_route_changed_among_ten_thousand_writes_one_status() {
    let ws = Workspace::new();
    let fake = FakeApiServer::start().await;
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
    fake.apply_yaml(&infra(&[("blue", &[backend])]));
    for i in 0..ROUTES {
        fake.apply_yaml(&prefix_route(&format!("r{i}"), &format!("/r{i}"), "blue"));
    }
    let _controller = Controller::start_kubernetes(&fake.kubeconfig(ws.path()), ws.path(), &[]);

    // Every route gets its status, and the listener counts them all.
    let started = Instant::now();
    eventually(Duration::from_secs(240), || async {
        let gateway = fake.object(V1, "Gateway", "infra", "gw");
        let attached = gateway
            .as_ref()
            .and_then(|g| g["status"]["listeners"][0]["attachedRoutes"].as_u64());
        attached == Some(ROUTES as u64) && status_writes(&fake).len() > ROUTES
    })
    .await;
    eventually(Duration::from_secs(60), || async {
        let last = fake.object(V1, "HTTPRoute", "apps", &format!("r{}", ROUTES - 1));
        last.as_ref().and_then(resolved_refs).as_deref() == Some("ResolvedRefs")
    })
    .await;
    eprintln!(
        "{ROUTES} routes attached and written in {:?}",
        started.elapsed()
    );
    // Settled: nothing more is written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = status_writes(&fake);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_writes(&fake).len(),
        before.len(),
        "status rewritten while idle"
    );

    // One route now names a Service that does not exist: its status changes, and only its.
    fake.apply_yaml(&prefix_route("r42", "/r42", "missing"));
    eventually(Duration::from_secs(30), || async {
        let route = fake.object(V1, "HTTPRoute", "apps", "r42");
        route.as_ref().and_then(resolved_refs).as_deref() == Some("BackendNotFound")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_writes(&fake);
    let new: Vec<&String> = after[before.len()..].iter().collect();
    assert_eq!(new.len(), 1, "writes after one route changed: {new:?}");
    assert!(
        new[0].contains("/httproutes/r42/status"),
        "the write went elsewhere: {new:?}"
    );
}
