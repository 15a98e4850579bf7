//! The grpcurl experience, tested with a reflection-driven dynamic client (no generated stubs):
//! the commands of docs/inspect.md list the services, show proxies with their ACKed versions,
//! a Gateway's snapshot and one route table as JSON, a live feed of version changes, and the
//! diff between two versions.

use std::time::Duration;

use rauta_tests::grpc_dynamic::DynamicClient;
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, free_port,
};
use rauta_tests::manifests::{infra, prefix_route};
use serde_json::Value;
use tokio_stream::StreamExt;

fn as_u64(v: &Value) -> u64 {
    // proto3 JSON writes 64-bit integers as strings.
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_commands_from_the_docs_work_through_reflection() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("a.yaml", &prefix_route("a", "/a", "echo"));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;

    // grpcurl -plaintext ADDR list
    let grpc = DynamicClient::connect(&controller.url()).await.unwrap();
    for service in [
        "rauta.v1.Admin",
        "rauta.v1.Discovery",
        "grpc.health.v1.Health",
    ] {
        assert!(
            grpc.services().iter().any(|s| s == service),
            "{:?}",
            grpc.services()
        );
    }

    // grpcurl ... rauta.v1.Admin/ListProxies
    let proxies = grpc.call("rauta.v1.Admin/ListProxies", "{}").await.unwrap();
    let types = &proxies["proxies"][0]["types"];
    assert_eq!(types.as_array().map(Vec::len), Some(4), "{proxies}");
    assert!(
        types
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["ackedVersion"] != ""),
        "{proxies}"
    );

    // grpcurl -d '{"gateway":"infra/gw"}' ... rauta.v1.Admin/GetSnapshot
    let snapshot = grpc
        .call("rauta.v1.Admin/GetSnapshot", r#"{"gateway":"infra/gw"}"#)
        .await
        .unwrap();
    let version = as_u64(&snapshot["version"]);
    assert!(version >= 1, "{snapshot}");
    let names: Vec<&str> = snapshot["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"http-80") && names.contains(&"apps/echo:8080"),
        "{names:?}"
    );

    // One route table.
    let table = grpc
        .call(
            "rauta.v1.Admin/GetSnapshot",
            r#"{"gateway":"infra/gw","typeUrl":"route_table","name":"http-80"}"#,
        )
        .await
        .unwrap();
    let resources = table["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1);
    let rules = &resources[0]["routeTable"]["virtualHosts"][0]["rules"];
    assert_eq!(rules[0]["name"], "apps/a/rule/0", "{table}");

    // A bad argument is a clear error, as grpcurl would print it.
    let err = grpc
        .call("rauta.v1.Admin/GetSnapshot", r#"{"gateway":"nope"}"#)
        .await
        .unwrap_err();
    assert!(err.starts_with("InvalidArgument"), "{err}");

    // grpcurl -d '{"gateway":"infra/gw"}' ... rauta.v1.Admin/WatchVersions, then a change.
    let mut feed = grpc
        .stream("rauta.v1.Admin/WatchVersions", r#"{"gateway":"infra/gw"}"#)
        .await
        .unwrap();
    let first = feed.next().await.unwrap().unwrap();
    assert_eq!(as_u64(&first["snapshotVersion"]), version, "{first}");
    ws.write("b.yaml", &prefix_route("b", "/b", "echo"));
    let next = version + 1;
    let mut saw_snapshot = false;
    let mut saw_ack = false;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = feed.next().await {
            let event = event.unwrap();
            assert_eq!(event["gateway"], "infra/gw");
            saw_snapshot |= as_u64(&event["snapshotVersion"]) == next;
            let p = &event["proxy"];
            saw_ack |= p["typeUrl"]
                .as_str()
                .is_some_and(|t| t.ends_with("RouteTable"))
                && p["version"].as_str() == Some(next.to_string().as_str())
                && p["accepted"] == true;
            if saw_snapshot && saw_ack {
                break;
            }
        }
    })
    .await
    .expect("the new version and the proxy's ACK arrive on the feed");

    // grpcurl -d '{"gateway":"infra/gw","fromVersion":N,"toVersion":N+1}' ... DiffSnapshots
    let diff = grpc
        .call(
            "rauta.v1.Admin/DiffSnapshots",
            &format!(r#"{{"gateway":"infra/gw","fromVersion":{version},"toVersion":{next}}}"#),
        )
        .await
        .unwrap();
    let changes = diff["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "only the route table changed: {diff}");
    assert_eq!(changes[0]["name"], "http-80");
    assert_eq!(changes[0]["change"], "changed");
    let before = changes[0]["before"]["routeTable"]["virtualHosts"][0]["rules"]
        .as_array()
        .unwrap()
        .len();
    let after = changes[0]["after"]["routeTable"]["virtualHosts"][0]["rules"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!((before, after), (1, 2));
    let err = grpc
        .call(
            "rauta.v1.Admin/DiffSnapshots",
            r#"{"gateway":"infra/gw","fromVersion":99}"#,
        )
        .await
        .unwrap_err();
    assert!(err.starts_with("InvalidArgument"), "{err}");
}
