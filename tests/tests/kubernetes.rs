//! Kubernetes mode against an in-process API server that speaks the real protocol over TLS
//! (tests/src/fake_kube.rs): the controller lists and watches the cluster, proxies route by
//! it, status is written back without trampling other controllers' entries, and a second
//! replica takes over status writing when the leader dies.

use std::time::Duration;

use rauta_tests::fake_kube::{FakeApiServer, Grant};
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, eventually, eventually_served_by, free_port, http_get,
};
use rauta_tests::manifests::{CONTROLLER_NAME, http_route, infra, prefix_route};
use serde_json::{Value, json};

const V1: &str = "gateway.networking.k8s.io/v1";

fn condition(status: &Value, type_: &str) -> Option<(String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// Our entry in a route's status.parents, if any.
fn our_parent(route: &Value) -> Option<Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME)
        .cloned()
}

fn status_writes(fake: &FakeApiServer) -> usize {
    fake.writes()
        .iter()
        .filter(|w| w.starts_with("PATCH") && w.ends_with("/status"))
        .count()
}

/// The value of a metric line with no labels, from Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn controller_metrics(addr: std::net::SocketAddr) -> String {
    http_get(&format!("http://{addr}/metrics"), None)
        .await
        .map(|r| r.body)
        .unwrap_or_default()
}

/// An API server holding Gateway infra/gw, Service apps/blue (one echo pod) and the route
/// apps/web sending everything to it.
async fn blue_cluster(ws: &Workspace) -> (Echo, FakeApiServer) {
    let blue = Echo::start("blue-1-a", "apps", ws.path());
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("blue", &[blue.http])]));
    fake.apply_yaml(&prefix_route("web", "/", "blue"));
    (blue, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_objects_route_traffic_and_status_is_written_back() {
    let ws = Workspace::new();
    let blue = Echo::start("blue-1-a", "apps", ws.path());
    let green = Echo::start("green-1-a", "apps", ws.path());
    let fake = FakeApiServer::start().await;
    // An experimental CRD that is not installed must not hold the Gateways back.
    fake.set_served("tlsroutes", false);
    fake.apply_yaml(&infra(&[("blue", &[blue.http]), ("green", &[green.http])]));
    fake.apply_yaml(&prefix_route("web", "/", "blue"));
    // Another implementation's entry in the route's status, which RAUTA must keep.
    let mut route = fake.object(V1, "HTTPRoute", "apps", "web").unwrap();
    let theirs = json!({
        "parentRef": {"name": "their-gateway", "namespace": "apps"},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    });
    route["status"] = json!({"parents": [theirs.clone()]});
    fake.apply(route);

    let kubeconfig = fake.kubeconfig(ws.path());
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_flag = metrics.to_string();
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--identity",
            "replica-a",
            "--leader-election-namespace",
            "rauta-system",
        ];
        args.extend_from_slice(extra);
        Controller::start_kubernetes(&kubeconfig, ws.path(), &args)
    };
    let controller = start(&["--metrics-listen", &metrics_flag]);
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/app", proxy.listener(80));
    eventually_served_by(&url, &blue.pod, Duration::from_secs(20)).await;

    // Status is written back: GatewayClass accepted, Gateway programmed with the proxy's
    // address, our parent entry on the route next to the other controller's.
    eventually(Duration::from_secs(20), || async {
        let class = fake.object(V1, "GatewayClass", "", "rauta").unwrap();
        let gateway = fake.object(V1, "Gateway", "infra", "gw").unwrap();
        let route = fake.object(V1, "HTTPRoute", "apps", "web").unwrap();
        condition(&class["status"], "Accepted").is_some_and(|c| c.0 == "True")
            && condition(&gateway["status"], "Programmed").is_some_and(|c| c.0 == "True")
            && gateway["status"]["addresses"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            && gateway["status"]["listeners"][0]["attachedRoutes"] == 1
            && our_parent(&route).is_some_and(|p| {
                condition(&p, "Accepted").is_some_and(|c| c.0 == "True")
                    && condition(&p, "ResolvedRefs").is_some_and(|c| c.0 == "True")
            })
    })
    .await;
    let route = fake.object(V1, "HTTPRoute", "apps", "web").unwrap();
    assert!(
        route["status"]["parents"]
            .as_array()
            .unwrap()
            .contains(&theirs),
        "the other controller's entry was lost: {}",
        route["status"]
    );
    let lease = fake
        .object(
            "coordination.k8s.io/v1",
            "Lease",
            "rauta-system",
            "rauta-controller",
        )
        .expect("leader lease created");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    assert_eq!(
        metric(
            &controller_metrics(metrics).await,
            "rauta_controller_leader"
        ),
        Some(1.0)
    );

    // Once the Gateway's LoadBalancer Service has an address, status shows it instead of
    // the proxies' own.
    fake.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: gw-proxies\n  namespace: infra\n  labels: {gateway.networking.k8s.io/gateway-name: gw}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}\n",
    );
    eventually(Duration::from_secs(10), || async {
        let gateway = fake.object(V1, "Gateway", "infra", "gw").unwrap();
        gateway["status"]["addresses"] == json!([{"type": "IPAddress", "value": "203.0.113.7"}])
    })
    .await;

    // Nothing changes, nothing is written: the lease is renewed, status is left alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = status_writes(&fake);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_writes(&fake),
        writes,
        "status rewritten with nothing changed"
    );
    // Our own status writes came back as watch events; they must not have re-translated
    // (the first translation, and the one for the Service).
    let text = controller_metrics(metrics).await;
    assert_eq!(
        metric(&text, "rauta_controller_translations_total"),
        Some(2.0),
        "{text}"
    );

    // A watch event moves traffic, even after the API server ended every watch stream.
    fake.end_watches();
    fake.apply_yaml(&prefix_route("web", "/", "green"));
    eventually_served_by(&url, &green.pod, Duration::from_secs(10)).await;

    // An invalid route becomes a condition on the route, not a crash; the rest keeps serving.
    let rule = "  - matches:\n    - path: {type: PathPrefix, value: /broken}\n    backendRefs:\n    - {name: missing, port: 8080}\n";
    fake.apply_yaml(&http_route("apps", "broken", ("infra", "gw"), &[], rule));
    eventually(Duration::from_secs(10), || async {
        fake.object(V1, "HTTPRoute", "apps", "broken")
            .as_ref()
            .and_then(our_parent)
            .is_some_and(|p| {
                condition(&p, "ResolvedRefs")
                    .is_some_and(|c| c == ("False".into(), "BackendNotFound".into()))
            })
    })
    .await;
    assert_eq!(http_get(&url, None).await.unwrap().pod(), green.pod);

    // Changes made while the controller cannot watch, with the history compacted meanwhile:
    // its watches resume from a version that is gone (410), so it lists again, and what was
    // deleted in between disappears.
    fake.compact();
    fake.end_watches();
    fake.delete(V1, "HTTPRoute", "apps", "broken");
    fake.apply_yaml(&prefix_route("other", "/other", "blue"));
    let other = format!("http://{}/other", proxy.listener(80));
    eventually_served_by(&other, &blue.pod, Duration::from_secs(10)).await;
    // /broken answered 500 (its backend is missing); without that route, "/" takes it.
    let broken = format!("http://{}/broken", proxy.listener(80));
    eventually_served_by(&broken, &green.pod, Duration::from_secs(10)).await;
    fake.apply_yaml(&http_route("apps", "broken", ("infra", "gw"), &[], rule));

    // A route deleted and created again at once (kubectl replace --force) is another
    // object: its status is written again although nothing in it changed.
    eventually(Duration::from_secs(10), || async {
        fake.object(V1, "HTTPRoute", "apps", "web")
            .is_some_and(|r| our_parent(&r).is_some())
    })
    .await;
    let mut web = fake.object(V1, "HTTPRoute", "apps", "web").unwrap();
    fake.delete(V1, "HTTPRoute", "apps", "web");
    web.as_object_mut().unwrap().remove("status");
    web["metadata"].as_object_mut().unwrap().remove("uid");
    fake.apply(web);
    eventually(Duration::from_secs(10), || async {
        fake.object(V1, "HTTPRoute", "apps", "web")
            .is_some_and(|r| our_parent(&r).is_some())
    })
    .await;

    // Deleting the route: 404.
    fake.delete(V1, "HTTPRoute", "apps", "web");
    eventually(Duration::from_secs(10), || async {
        http_get(&url, None).await.is_ok_and(|r| r.status == 404)
    })
    .await;
    // A route that stops reaching us while no controller runs loses our entry once one
    // is back (found in the cluster, since the new process wrote nothing yet), and only ours.
    eventually(Duration::from_secs(10), || async {
        fake.object(V1, "HTTPRoute", "apps", "broken")
            .is_some_and(|r| our_parent(&r).is_some())
    })
    .await;
    drop(controller);
    let mut broken = fake.object(V1, "HTTPRoute", "apps", "broken").unwrap();
    broken["spec"]["parentRefs"] = json!([{"name": "elsewhere", "namespace": "infra"}]);
    broken["status"]["parents"]
        .as_array_mut()
        .unwrap()
        .push(theirs.clone());
    fake.apply(broken);
    let _controller = start(&[]);
    eventually(Duration::from_secs(10), || async {
        fake.object(V1, "HTTPRoute", "apps", "broken")
            .is_some_and(|r| {
                our_parent(&r).is_none() && r["status"]["parents"] == json!([theirs.clone()])
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_writes_status_once_the_leader_is_gone() {
    let ws = Workspace::new();
    let (blue, fake) = blue_cluster(&ws).await;
    let kubeconfig = fake.kubeconfig(ws.path());
    let start = |identity: &str, metrics: &str| {
        Controller::start_kubernetes(
            &kubeconfig,
            ws.path(),
            &[
                "--identity",
                identity,
                "--leader-election-namespace",
                "rauta-system",
                "--leader-lease-seconds",
                "2",
                "--metrics-listen",
                metrics,
            ],
        )
    };
    let metrics_a = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_b = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut a = start("replica-a", &metrics_a.to_string());
    // Apart by more than a second, so each replica's transition times differ from the other's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = start("replica-b", &metrics_b.to_string());
    // Both serve proxies: each replica translates the cluster on its own.
    for controller in [&a, &b] {
        let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
        proxy.wait_ready().await;
        let url = format!("http://{}/app", proxy.listener(80));
        eventually_served_by(&url, &blue.pod, Duration::from_secs(20)).await;
    }
    let holder = || {
        fake.object(
            "coordination.k8s.io/v1",
            "Lease",
            "rauta-system",
            "rauta-controller",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    eventually(Duration::from_secs(10), || async { holder().is_some() }).await;
    // Make replica-a the leader for the rest of the test, whoever won.
    let (mut leader, follower, follower_metrics, follower_id) =
        if holder().as_deref() == Some("replica-a") {
            (a, b, metrics_b, "replica-b")
        } else {
            a.process.kill();
            a = start("replica-a", &metrics_a.to_string());
            (b, a, metrics_a, "replica-a")
        };
    eventually(Duration::from_secs(10), || async {
        metric(
            &controller_metrics(follower_metrics).await,
            "rauta_controller_leader",
        ) == Some(0.0)
    })
    .await;

    // The leader dies without releasing the lease: the follower takes it once it expires,
    // and writes the status of a change the leader never saw.
    let class_status = || {
        fake.object(V1, "GatewayClass", "", "rauta")
            .map(|c| c["status"]["conditions"].clone())
            .unwrap_or_default()
    };
    let class_patches = || {
        fake.writes()
            .iter()
            .filter(|w| w.starts_with("PATCH") && w.ends_with("/gatewayclasses/rauta/status"))
            .count()
    };
    eventually(Duration::from_secs(10), || async {
        class_status().is_array()
    })
    .await;
    let (before, patches) = (class_status(), class_patches());
    leader.process.kill();
    let rule = "  - matches:\n    - path: {type: PathPrefix, value: /broken}\n    backendRefs:\n    - {name: missing, port: 8080}\n";
    fake.apply_yaml(&http_route("apps", "broken", ("infra", "gw"), &[], rule));
    eventually(Duration::from_secs(15), || async {
        holder().as_deref() == Some(follower_id)
            && fake
                .object(V1, "HTTPRoute", "apps", "broken")
                .as_ref()
                .and_then(our_parent)
                .is_some_and(|p| condition(&p, "ResolvedRefs").is_some_and(|c| c.0 == "False"))
    })
    .await;
    assert_eq!(
        metric(
            &controller_metrics(follower_metrics).await,
            "rauta_controller_leader"
        ),
        Some(1.0)
    );
    let lease = fake
        .object(
            "coordination.k8s.io/v1",
            "Lease",
            "rauta-system",
            "rauta-controller",
        )
        .unwrap();
    assert!(
        lease["spec"]["leaseTransitions"].as_i64() >= Some(1),
        "{lease}"
    );
    // What the old leader wrote and is still right was left alone: not rewritten, and its
    // transition times (the cluster's history) kept.
    assert_eq!(
        class_patches(),
        patches,
        "the new leader rewrote an unchanged status"
    );
    assert_eq!(class_status(), before);

    // A graceful stop hands the lease back at once.
    follower.process.terminate();
    eventually(Duration::from_secs(10), || async {
        fake.object(
            "coordination.k8s.io/v1",
            "Lease",
            "rauta-system",
            "rauta-controller",
        )
        .is_some_and(|l| l["spec"]["holderIdentity"].is_null())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_kind_that_cannot_be_listed_holds_publishing_back() {
    let ws = Workspace::new();
    let (blue, fake) = blue_cluster(&ws).await;
    let everything = |resources: &[&str]| Grant {
        namespace: None,
        api_groups: vec!["*".into()],
        resources: resources.iter().map(|r| (*r).to_owned()).collect(),
        verbs: vec!["*".into()],
        resource_names: vec![],
    };
    // RBAC refuses Secrets: publishing without them would drop every HTTPS listener.
    let all_but_secrets = [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tlsroutes",
        "referencegrants",
        "backendtlspolicies",
        "listenersets",
        "services",
        "endpointslices",
        "configmaps",
        "namespaces",
        "leases",
        "gatewayclasses/status",
        "gateways/status",
        "httproutes/status",
    ];
    fake.enforce(vec![everything(&all_but_secrets)]);
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_flag = metrics.to_string();
    let controller = Controller::start_kubernetes(
        &fake.kubeconfig(ws.path()),
        ws.path(),
        &[
            "--leader-election-namespace",
            "rauta-system",
            "--metrics-listen",
            &metrics_flag,
        ],
    );
    let readyz = format!("http://{metrics}/readyz");
    eventually(Duration::from_secs(10), || async {
        fake.denied().iter().any(|d| d.contains("secrets"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(http_get(&readyz, None).await.unwrap().status, 503);
    assert_eq!(controller.snapshot_version("infra/gw").await, "");

    // Granted: the controller lists Secrets on its next try and publishes.
    fake.enforce(vec![everything(&["*"])]);
    eventually(Duration::from_secs(30), || async {
        http_get(&readyz, None).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/app", proxy.listener(80));
    eventually_served_by(&url, &blue.pod, Duration::from_secs(10)).await;
}

/// Regression: with `--no-leader-election` the replica leads from the start and for good, so
/// it writes status (it used to write none: its leadership signal closed at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leader_election_status_is_written() {
    let ws = Workspace::new();
    let (_blue, fake) = blue_cluster(&ws).await;
    let _controller = Controller::start_kubernetes(
        &fake.kubeconfig(ws.path()),
        ws.path(),
        &["--no-leader-election"],
    );
    eventually(Duration::from_secs(20), || async {
        fake.object(V1, "HTTPRoute", "apps", "web")
            .as_ref()
            .and_then(our_parent)
            .is_some_and(|p| condition(&p, "Accepted") == Some(("True".into(), "Accepted".into())))
    })
    .await;
    // And it goes on writing: a later change shows too.
    fake.apply_yaml(&prefix_route("broken", "/broken", "missing"));
    eventually(Duration::from_secs(20), || async {
        fake.object(V1, "HTTPRoute", "apps", "broken")
            .as_ref()
            .and_then(our_parent)
            .is_some_and(|p| {
                condition(&p, "ResolvedRefs") == Some(("False".into(), "BackendNotFound".into()))
            })
    })
    .await;
}
