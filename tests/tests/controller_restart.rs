//! The proxy keeps serving while the controller is away, reconnects when it is back, and
//! resumes: it presents the versions it holds and receives only what changed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, free_port, http_get,
};
use rauta_tests::manifests::{infra, prefix_route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_survives_controller_restart_and_resumes() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("route.yaml", &prefix_route("web", "/old", "echo"));
    // The session key outlives the process, as the managed Secret's does in Kubernetes: every
    // route table carries keys derived from it, so a new random key would change them all.
    let key_file = ws.path().join("session.key");
    std::fs::write(&key_file, format!("{}\n", "restart-key-".repeat(4))).unwrap();
    let key = key_file.to_string_lossy().into_owned();
    let flags = ["--plaintext", "--session-key-file", key.as_str()];
    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut controller = Controller::start_with(&ws.config, ws.path(), grpc, &flags);
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let old = format!("http://{}/old", proxy.listener(80));
    let new = format!("http://{}/new", proxy.listener(80));
    assert_eq!(http_get(&old, None).await.unwrap().status, 200);

    // Controller gone: the proxy keeps serving its last configuration.
    controller.process.kill();
    for _ in 0..20 {
        assert_eq!(http_get(&old, None).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics_url = format!("http://{}/metrics", proxy.admin);
    eventually(Duration::from_secs(5), || async {
        http_get(&metrics_url, None)
            .await
            .is_ok_and(|r| r.body.contains("rauta_proxy_controller_connected 0"))
    })
    .await;

    // Change the route while the controller is down, then bring it back on the same address.
    ws.write("route.yaml", &prefix_route("web", "/new", "echo"));
    let controller = Controller::start_with(&ws.config, ws.path(), grpc, &flags);
    eventually(Duration::from_secs(15), || async {
        http_get(&new, None).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(http_get(&old, None).await.unwrap().status, 404);
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;

    // Resumed: the proxy presented what it had; only the changed route's rules were sent
    // (the route table, which lists no routes, did not change).
    let proxies = controller.proxies().await;
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    for t in &proxies[0].types {
        // An HTTP-only Gateway has no L4 route tables: nothing to resume or send.
        let l4 = t.type_url.ends_with("L4RouteTable");
        assert_eq!(t.resumed_resources, u32::from(!l4), "{t:?}");
        let expected_sent = u64::from(t.type_url.ends_with(".RouteRules"));
        assert_eq!(t.resources_sent, expected_sent, "{t:?}");
    }
}
