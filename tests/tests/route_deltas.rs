//! Each route's rules are a discovery resource of their own: editing one route among many
//! sends the proxies that route's rules and nothing else, and the proxy assembles the rules of
//! separate routes in Gateway API precedence from the keys the controller sends.

use std::time::Duration;

use rauta_common::types::ResourceType;
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, free_port, http_get,
};
use rauta_tests::manifests::{http_route, infra, prefix_route};

/// Resources of `ty` the controller has sent the (only) proxy so far.
async fn sent(controller: &Controller, ty: ResourceType) -> u64 {
    let proxies = controller.proxies().await;
    proxies[0]
        .types
        .iter()
        .find(|t| t.type_url == ty.type_url())
        .map_or(0, |t| t.resources_sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_route_edit_sends_that_routes_rules_only() {
    const ROUTES: usize = 40;
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    for i in 0..ROUTES {
        ws.write(
            &format!("route-{i}.yaml"),
            &prefix_route(&format!("r{i}"), &format!("/r{i}"), "echo"),
        );
    }
    // Routes whose rules interleave: "/deep" (route "a-short") and "/deep/er" (route
    // "z-long"): the longer prefix wins whatever the routes' names.
    ws.write("short.yaml", &prefix_route("a-short", "/deep", "missing"));
    ws.write("long.yaml", &prefix_route("z-long", "/deep/er", "echo"));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = |path: &str| format!("http://{}{path}", proxy.listener(80));
    eventually(Duration::from_secs(10), || async {
        http_get(&url("/r39"), None)
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    assert_eq!(
        http_get(&url("/deep/er/x"), None).await.unwrap().status,
        200
    );
    assert_eq!(http_get(&url("/deep/x"), None).await.unwrap().status, 500);
    let dump = proxy.config_dump().await;
    let order: Vec<&str> = dump["routing"]["http-80"]["*"]
        .as_array()
        .expect("the assembled rules of http-80 in /config_dump")
        .iter()
        .filter_map(|r| r.as_str())
        .filter(|r| r.contains("-short/") || r.contains("-long/"))
        .collect();
    assert_eq!(order, ["apps/z-long/rule/0", "apps/a-short/rule/0"]);
    assert_eq!(
        dump["resources"]["route_rules"].as_array().map(Vec::len),
        Some(ROUTES + 2)
    );

    let tables_before = sent(&controller, ResourceType::RouteTable).await;
    let rules_before = sent(&controller, ResourceType::RouteRules).await;
    ws.write("route-17.yaml", &prefix_route("r17", "/moved", "echo"));
    eventually(Duration::from_secs(10), || async {
        http_get(&url("/moved"), None)
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(http_get(&url("/r17"), None).await.unwrap().status, 404);
    assert_eq!(http_get(&url("/r16"), None).await.unwrap().status, 200);
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    assert_eq!(
        sent(&controller, ResourceType::RouteRules).await - rules_before,
        1,
        "one route's rules, not the table's {} routes",
        ROUTES + 2
    );
    assert_eq!(
        sent(&controller, ResourceType::RouteTable).await,
        tables_before
    );

    // A route removed: its rules are removed, the others stay.
    ws.remove("route-3.yaml");
    eventually(Duration::from_secs(10), || async {
        http_get(&url("/r3"), None)
            .await
            .is_ok_and(|r| r.status == 404)
    })
    .await;
    assert_eq!(http_get(&url("/r4"), None).await.unwrap().status, 200);
    assert_eq!(
        sent(&controller, ResourceType::RouteTable).await,
        tables_before
    );
}

/// Sticky rules travel as route rules, after the table: the table keeps its session keys when
/// the last sticky route goes, or the proxy would refuse it while still holding that route
/// (and every later update would wait behind the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_sticky_route_is_accepted_and_later_edits_arrive() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("plain.yaml", &prefix_route("plain", "/plain", "echo"));
    ws.write(
        "sticky.yaml",
        &http_route(
            "apps",
            "sticky",
            ("infra", "gw"),
            &["sticky.example"],
            "  - sessionPersistence: {sessionName: s, absoluteTimeout: 1h}\n    backendRefs: [{name: echo, port: 8080}]\n",
        ),
    );
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;

    ws.remove("sticky.yaml");
    ws.write("plain.yaml", &prefix_route("plain", "/edited", "echo"));
    let url = format!("http://{}/edited", proxy.listener(80));
    eventually(Duration::from_secs(10), || async {
        http_get(&url, None).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let proxies = controller.proxies().await;
    for t in &proxies[0].types {
        assert!(t.last_nack.is_none(), "{t:?}");
    }
}
