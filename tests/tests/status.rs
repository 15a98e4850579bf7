//! Status in standalone mode: the admin service and the status files show the same thing, the
//! Gateway's address comes from its connected proxies, and broken references show up as
//! conditions with the spec's reasons.

use std::time::Duration;

use rauta_common::api::v1::ListStatusesRequest;
use rauta_tests::harness::{Controller, Echo, Proxy, Workspace, eventually, free_port};
use rauta_tests::manifests::{infra, prefix_route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_served_and_written_to_files() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("good.yaml", &prefix_route("good", "/", "echo"));
    ws.write("bad.yaml", &prefix_route("bad", "/bad", "no-such-service"));
    let controller = Controller::start(&ws.config, ws.path());
    let _proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());

    let statuses = || async {
        let req = ListStatusesRequest::default();
        controller
            .admin()
            .await
            .list_statuses(req)
            .await
            .unwrap()
            .into_inner()
            .objects
    };
    eventually(Duration::from_secs(10), || async {
        statuses()
            .await
            .iter()
            .any(|o| o.kind == "Gateway" && o.addresses.iter().any(|a| a.value == "127.0.0.1"))
    })
    .await;
    let objects = statuses().await;
    let kinds: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("GatewayClass", "rauta"),
            ("Gateway", "gw"),
            ("HTTPRoute", "bad"),
            ("HTTPRoute", "good")
        ]
    );
    let gateway = &objects[1];
    assert_eq!(gateway.addresses[0].r#type, "IPAddress");
    assert_eq!(gateway.listeners[0].attached_routes, 2);
    let bad = &objects[2].parents[0];
    let resolved = bad
        .conditions
        .iter()
        .find(|c| c.r#type == "ResolvedRefs")
        .unwrap();
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("False", "BackendNotFound")
    );
    assert!(resolved.last_transition_time.is_some());
    assert!(
        objects[0]
            .supported_features
            .iter()
            .any(|f| f == "HTTPRoute")
    );

    // The same status, as files next to the config.
    let file = ws.config.join("status").join("HTTPRoute.apps.bad.yaml");
    eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("BackendNotFound"))
    })
    .await;
    let gateway_file = ws.config.join("status").join("Gateway.infra.gw.yaml");
    eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&gateway_file).is_ok_and(|t| t.contains("127.0.0.1"))
    })
    .await;

    // Fixing the route updates both.
    ws.write("bad.yaml", &prefix_route("bad", "/bad", "echo"));
    eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&file).is_ok_and(|t| !t.contains("BackendNotFound"))
    })
    .await;
    let objects = statuses().await;
    assert!(
        objects[2].parents[0]
            .conditions
            .iter()
            .all(|c| c.status == "True"),
        "{:?}",
        objects[2]
    );
}

/// Status files are written inside the watched directory; writing them (or rewriting a manifest
/// with the same content) must not make the controller reload and re-translate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_files_and_unchanged_rewrites_do_not_reload() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let infra_yaml = infra(&[("echo", &[echo.http])]);
    ws.write("infra.yaml", &infra_yaml);
    ws.write("good.yaml", &prefix_route("good", "/", "echo"));
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let grpc = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let controller = Controller::start_with(
        &ws.config,
        ws.path(),
        grpc,
        &["--plaintext", "--metrics-listen", &metrics_addr],
    );
    let counters = || async {
        let text = rauta_tests::harness::http_get(&format!("http://{metrics_addr}/metrics"), None)
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        (
            value("rauta_controller_translations_total"),
            value("rauta_controller_endpoint_refreshes_total"),
            // Each translation is timed.
            value(r#"rauta_controller_publish_seconds_count{path="translate"}"#),
        )
    };
    let status_file = ws.config.join("status").join("HTTPRoute.apps.good.yaml");
    eventually(Duration::from_secs(10), || async { status_file.exists() }).await;
    eventually(Duration::from_secs(10), || async {
        counters().await.0 == Some(1)
    })
    .await;
    let before = counters().await;
    assert_eq!(
        before,
        (Some(1), Some(0), Some(1)),
        "one translation at start"
    );

    // Status files keep being written (a proxy connecting changes the Gateway's addresses), a
    // stray file appears in the status directory, a manifest is rewritten unchanged.
    let _proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    let gateway_file = ws.config.join("status").join("Gateway.infra.gw.yaml");
    eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&gateway_file).is_ok_and(|t| t.contains("127.0.0.1"))
    })
    .await;
    std::fs::write(ws.config.join("status").join("note.yaml"), "x: 1\n").unwrap();
    ws.write("infra.yaml", &infra_yaml);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        counters().await,
        before,
        "nothing changed, nothing re-translated"
    );

    // A real change still goes through.
    ws.write("good.yaml", &prefix_route("good", "/other", "echo"));
    eventually(Duration::from_secs(10), || async {
        counters().await.0 == Some(2)
    })
    .await;
    assert_eq!(counters().await.2, Some(2));
}
