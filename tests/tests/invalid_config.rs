//! Malformed files and invalid objects are reported with the file name and the problem, and
//! do not take down the rest: other objects keep working, last good versions stay served.

use std::time::Duration;

use rauta_tests::harness::{Controller, Echo, Proxy, Workspace, eventually, free_port, http_get};
use rauta_tests::manifests::{infra, prefix_route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_yaml_is_reported_and_ignored() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("good.yaml", &prefix_route("good", "/good", "echo"));
    ws.write("broken.yaml", "apiVersion: v1\nkind: [this is not closed\n");
    // Second document invalid (rules must be a list); the first stays usable.
    ws.write("mixed.yaml", &format!("{}---\n{}", prefix_route("mixed-ok", "/mixed", "echo"), "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: mixed-bad, namespace: apps}\nspec:\n  rules: 42\n"));

    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let base = format!("http://{}", proxy.listener(80));
    assert_eq!(
        http_get(&format!("{base}/good"), None)
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http_get(&format!("{base}/mixed"), None)
            .await
            .unwrap()
            .status,
        200
    );

    let log = controller.process.log_text();
    assert!(
        log.contains("broken.yaml") && log.contains("invalid YAML"),
        "{log}"
    );
    assert!(
        log.contains("mixed.yaml (document 2)") && log.contains("invalid HTTPRoute apps/mixed-bad"),
        "{log}"
    );

    // Breaking a file that was good keeps its last good objects: the route keeps working.
    ws.write("good.yaml", "kind: HTTPRoute\n  bad indentation: [\n");
    eventually(Duration::from_secs(10), || async {
        let log = controller.process.log_text();
        log.matches("good.yaml").count() >= 1 && log.contains("good.yaml: invalid YAML")
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            http_get(&format!("{base}/good"), None)
                .await
                .unwrap()
                .status,
            200
        );
    }

    // Fixing it brings the new content in.
    ws.write("good.yaml", &prefix_route("good", "/fixed", "echo"));
    eventually(Duration::from_secs(10), || async {
        http_get(&format!("{base}/fixed"), None)
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(
        http_get(&format!("{base}/good"), None)
            .await
            .unwrap()
            .status,
        404
    );
    assert!(
        controller
            .process
            .log_text()
            .contains("configuration problem")
    );
}
