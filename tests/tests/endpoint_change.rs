//! An EndpointSlice change takes the fast path: the controller refreshes endpoints without
//! re-translating routes, only the cluster's endpoints reach the proxy, and traffic moves.

use std::time::Duration;

use rauta_tests::grpc_dynamic::DynamicClient;
use rauta_tests::harness::{Controller, Echo, Proxy, Workspace, eventually, free_port, http_get};
use rauta_tests::manifests::{documents, gateway, gateway_class, prefix_route, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_only_changes_send_only_endpoints() {
    let ws = Workspace::new();
    let first = Echo::start("web-1-a", "apps", ws.path());
    let second = Echo::start("web-1-b", "apps", ws.path());
    ws.write(
        "infra.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
        ]),
    );
    ws.write("route.yaml", &prefix_route("web", "/", "web"));
    ws.write("service.yaml", &service("apps", "web", &[first.http]));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/", proxy.listener(80));
    assert_eq!(http_get(&url, None).await.unwrap().pod(), "web-1-a");
    let before = controller.snapshot_version("infra/gw").await;

    // Same Service, other endpoints.
    ws.write("service.yaml", &service("apps", "web", &[second.http]));
    eventually(Duration::from_secs(10), || async {
        http_get(&url, None)
            .await
            .is_ok_and(|r| r.pod() == "web-1-b")
    })
    .await;
    assert!(
        controller
            .process
            .log_text()
            .contains("only EndpointSlices changed"),
        "the fast path was taken"
    );
    let after = controller.snapshot_version("infra/gw").await;
    let grpc = DynamicClient::connect(&controller.url()).await.unwrap();
    let diff = grpc
        .call(
            "rauta.v1.Admin/DiffSnapshots",
            &format!(r#"{{"gateway":"infra/gw","fromVersion":{before},"toVersion":{after}}}"#),
        )
        .await
        .unwrap();
    let changes = diff["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{diff}");
    assert!(
        changes[0]["typeUrl"]
            .as_str()
            .unwrap()
            .ends_with("ClusterEndpoints"),
        "{diff}"
    );
}
