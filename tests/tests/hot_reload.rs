//! Editing the watched YAML changes routing without restarting anything, and the admin
//! service shows the proxy ACKing each new version.

use std::time::Duration;

use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, eventually_served_by, free_port,
    http_get,
};
use rauta_tests::manifests::{infra, prefix_route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_edits_change_routing_live() {
    let ws = Workspace::new();
    let blue = Echo::start("blue-1-a", "apps", ws.path());
    let green = Echo::start("green-1-a", "apps", ws.path());
    ws.write(
        "infra.yaml",
        &infra(&[("blue", &[blue.http]), ("green", &[green.http])]),
    );
    ws.write("route.yaml", &prefix_route("web", "/", "blue"));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/app", proxy.listener(80));
    assert_eq!(http_get(&url, None).await.unwrap().pod(), blue.pod);
    let v1 = controller.snapshot_version("infra/gw").await;

    // Point the route at green: traffic moves, with no restart.
    ws.write("route.yaml", &prefix_route("web", "/", "green"));
    eventually_served_by(&url, &green.pod, Duration::from_secs(10)).await;
    let v2 = controller.snapshot_version("infra/gw").await;
    assert!(
        v2.parse::<u64>().unwrap() > v1.parse::<u64>().unwrap(),
        "{v1} -> {v2}"
    );
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let proxies = controller.proxies().await;
    assert_eq!(proxies.len(), 1);
    let route_table = proxies[0]
        .types
        .iter()
        .find(|t| t.type_url.ends_with("RouteTable"))
        .unwrap();
    assert_eq!(route_table.acked_version, v2);
    assert!(route_table.last_nack.is_none());

    // Rewriting a file with the same content does not make a new version.
    ws.write("route.yaml", &prefix_route("web", "/", "green"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(controller.snapshot_version("infra/gw").await, v2);

    // Deleting the route: 404, and the proxy ACKs the version without it.
    ws.remove("route.yaml");
    eventually(Duration::from_secs(10), || async {
        http_get(&url, None).await.is_ok_and(|r| r.status == 404)
    })
    .await;
    let v3 = controller.snapshot_version("infra/gw").await;
    assert_ne!(v3, v2);
    eventually(Duration::from_secs(10), || async {
        let proxies = controller.proxies().await;
        all_in_sync(&proxies)
            && proxies[0].types.iter().all(|t| {
                t.acked_version == v3 || t.acked_resources == 0 || t.type_url.ends_with("Listener")
            })
    })
    .await;
    assert!(
        proxy
            .metrics()
            .await
            .contains("rauta_proxy_snapshot_version{type=\"route_table\"} ")
    );
}

/// A file is read once its writer has closed it: a slow writer's half-written file never
/// reaches the proxies (here the first half names the other backend, and is valid YAML), not
/// even when another file's change completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_read_when_its_writer_closes_it_not_half_way() {
    use std::io::Write;
    let ws = Workspace::new();
    let blue = Echo::start("blue-1-a", "apps", ws.path());
    let green = Echo::start("green-1-a", "apps", ws.path());
    ws.write(
        "infra.yaml",
        &infra(&[("blue", &[blue.http]), ("green", &[green.http])]),
    );
    ws.write("route.yaml", &prefix_route("web", "/", "blue"));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/app", proxy.listener(80));
    eventually_served_by(&url, &blue.pod, Duration::from_secs(10)).await;
    let before = controller.snapshot_version("infra/gw").await;

    // Rewritten in two writes 600 ms apart: the first alone would send /app to green.
    let text = format!(
        "{}---\n{}",
        prefix_route("web", "/", "green"),
        prefix_route("web-app", "/app", "blue")
    );
    let (first, second) = text.split_at(text.find("---\n").expect("two documents"));
    let mut file = std::fs::File::create(ws.config.join("route.yaml")).unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    // Another file completed meanwhile waits for this one too: the directory is read whole.
    ws.write("route-b.yaml", &prefix_route("web-b", "/b", "green"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        controller.snapshot_version("infra/gw").await,
        before,
        "a half-written file was read"
    );
    file.write_all(second.as_bytes()).unwrap();
    drop(file);
    eventually(Duration::from_secs(10), || async {
        controller.snapshot_version("infra/gw").await != before
    })
    .await;
    // Whole: /app stays with blue (the more specific route), the rest goes to green.
    assert_eq!(http_get(&url, None).await.unwrap().pod(), blue.pod);
    let other = format!("http://{}/other", proxy.listener(80));
    eventually_served_by(&other, &green.pod, Duration::from_secs(10)).await;
}
