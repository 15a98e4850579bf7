//! A snapshot the proxy cannot apply (here: a new listener port that is already taken) is
//! NACKed; the reason shows in the admin service and traffic keeps flowing on the old state.
//! The next snapshot that the proxy can apply is accepted again.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use rauta_common::api::v1::{Condition, ListStatusesRequest};
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, free_port, http_get,
};
use rauta_tests::manifests::{documents, gateway, gateway_class, http_route, service};

/// GatewayClass, Gateway infra/gw with `listeners`, and a route to the `echo` Service.
fn config(echo: SocketAddr, listeners: &[(&str, u16, Option<&str>)]) -> String {
    let route = http_route(
        "apps",
        "web",
        ("infra", "gw"),
        &[],
        "  - backendRefs:\n    - {name: echo, port: 8080}\n",
    );
    documents(&[
        gateway_class("rauta"),
        gateway("infra", "gw", "rauta", listeners),
        service("apps", "echo", &[echo]),
        route,
    ])
}

/// A listener port, free now once `offset` is added, other than 80 and `taken`.
fn spare_port(offset: u16, taken: &[u16]) -> u16 {
    loop {
        let p = free_port();
        if p > offset && p - offset != 80 && !taken.contains(&(p - offset)) {
            return p - offset;
        }
    }
}

/// The Programmed condition of Gateway infra/gw, as the admin service reports it.
async fn programmed(controller: &Controller) -> Condition {
    let statuses = controller
        .admin()
        .await
        .list_statuses(ListStatusesRequest {
            kind: "Gateway".into(),
            namespace: "infra".into(),
            name: "gw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .objects;
    statuses[0]
        .conditions
        .iter()
        .find(|c| c.r#type == "Programmed")
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_snapshot_is_visible_and_old_state_keeps_serving() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let base = |listeners: &[(&str, u16, Option<&str>)]| config(echo.http, listeners);
    ws.write("all.yaml", &base(&[("http", 80, None)]));
    let controller = Controller::start(&ws.config, ws.path());
    let offset = free_port() - 80;
    let proxy = Proxy::start(&controller.url(), "infra/gw", offset, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/", proxy.listener(80));
    assert_eq!(http_get(&url, None).await.unwrap().status, 200);

    // Something else holds the port the new listener needs.
    let extra_port = spare_port(offset, &[]);
    let squatter = TcpListener::bind(("127.0.0.1", extra_port + offset)).unwrap();
    ws.write(
        "all.yaml",
        &base(&[("http", 80, None), ("extra", extra_port, None)]),
    );

    eventually(Duration::from_secs(10), || async {
        let proxies = controller.proxies().await;
        proxies.iter().any(|p| {
            p.types.iter().any(|t| {
                t.last_nack
                    .as_ref()
                    .is_some_and(|n| n.message.contains("cannot bind"))
            })
        })
    })
    .await;
    let proxies = controller.proxies().await;
    let listener = proxies[0]
        .types
        .iter()
        .find(|t| t.type_url.ends_with("Listener"))
        .unwrap();
    let nack = listener.last_nack.as_ref().unwrap();
    assert!(nack.message.contains("listener http-"), "{nack:?}");
    assert!(
        !listener.in_sync,
        "a NACKed type is not in sync: {listener:?}"
    );
    assert!(listener.rejecting, "{listener:?}");
    assert!(proxy.process.log_text().contains("rejected update (NACK)"));
    // The rejection reaches the Gateway's status, over gRPC and in the status file.
    let c = programmed(&controller).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "Invalid"),
        "{c:?}"
    );
    assert!(
        c.message.contains("rejected listener") && c.message.contains("cannot bind"),
        "{c:?}"
    );
    let file = ws.config.join("status").join("Gateway.infra.gw.yaml");
    eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("cannot bind"))
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            http_get(&url, None).await.unwrap().status,
            200,
            "old state keeps serving"
        );
    }
    assert!(
        proxy
            .metrics()
            .await
            .contains("rauta_proxy_config_updates_total{result=\"nack\",type=\"listener\"} 1")
    );

    // The configuration moves on (the extra listener to a free port): the next version is
    // accepted and the new port serves.
    let free_extra = spare_port(offset, &[extra_port]);
    ws.write(
        "all.yaml",
        &base(&[("http", 80, None), ("extra", free_extra, None)]),
    );
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let extra_url = format!("http://{}/", proxy.listener(free_extra));
    eventually(Duration::from_secs(10), || async {
        http_get(&extra_url, None)
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(http_get(&url, None).await.unwrap().status, 200);
    assert_eq!(
        programmed(&controller).await.status,
        "True",
        "accepted again: programmed"
    );
    drop(squatter);
}

/// After a NACK, a configuration that goes back to what the proxy already holds sends the
/// proxy nothing (there is nothing new for it): the rejection is over all the same, and the
/// Gateway is Programmed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_back_to_what_the_proxy_holds_ends_the_rejection() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let base = |listeners: &[(&str, u16, Option<&str>)]| config(echo.http, listeners);
    ws.write("all.yaml", &base(&[("http", 80, None)]));
    let controller = Controller::start(&ws.config, ws.path());
    let offset = free_port() - 80;
    let proxy = Proxy::start(&controller.url(), "infra/gw", offset, ws.path());
    proxy.wait_ready().await;
    let extra_port = spare_port(offset, &[]);
    let _squatter = TcpListener::bind(("127.0.0.1", extra_port + offset)).unwrap();
    ws.write(
        "all.yaml",
        &base(&[("http", 80, None), ("extra", extra_port, None)]),
    );
    let rejecting = || async {
        let proxies = controller.proxies().await;
        proxies[0].types.iter().any(|t| t.rejecting)
    };
    eventually(Duration::from_secs(10), || async { rejecting().await }).await;

    // Back to the configuration the proxy holds.
    ws.write("all.yaml", &base(&[("http", 80, None)]));
    eventually(Duration::from_secs(10), || async { !rejecting().await }).await;
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let c = programmed(&controller).await;
    assert_eq!(c.status, "True", "{c:?}");
}
