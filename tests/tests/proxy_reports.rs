//! What a proxy says about itself is outside input: a client posing as a proxy with a huge
//! node id is refused, and one reporting a thousand addresses (some not addresses at all) and
//! a megabyte of NACK text full of newlines leaves the admin listing, the Gateway's status and
//! the controller's log bounded and clean.

use std::time::Duration;

use rauta_common::api::v1::discovery_client::DiscoveryClient;
use rauta_common::api::v1::{
    DeltaDiscoveryRequest, ErrorDetail, ListStatusesRequest, Node, ObjectStatus,
};
use rauta_common::types::ResourceType;
use rauta_tests::harness::{Controller, Echo, Workspace, eventually};
use rauta_tests::manifests::{infra, prefix_route};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn node(id: String, addresses: Vec<String>) -> Node {
    Node {
        id,
        gateway_namespace: "infra".into(),
        gateway_name: "gw".into(),
        build_version: format!("1.0\n{}", "b".repeat(10_000)),
        addresses,
    }
}

async fn gateway_status(controller: &Controller) -> ObjectStatus {
    let request = ListStatusesRequest {
        kind: "Gateway".into(),
        ..Default::default()
    };
    controller
        .admin()
        .await
        .list_statuses(request)
        .await
        .expect("ListStatuses")
        .into_inner()
        .objects
        .into_iter()
        .find(|o| o.name == "gw")
        .expect("Gateway infra/gw status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_reports_are_bounded_and_cleaned() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("route.yaml", &prefix_route("web", "/", "echo"));
    let controller = Controller::start(&ws.config, ws.path());
    let mut client = DiscoveryClient::connect(controller.url())
        .await
        .unwrap()
        .max_encoding_message_size(8 * 1024 * 1024);

    // A megabyte of node id: refused.
    let huge_id = DeltaDiscoveryRequest {
        node: Some(node("p".repeat(1 << 20), vec![])),
        type_url: ResourceType::RouteTable.type_url().into(),
        ..Default::default()
    };
    let refused = client
        .delta_resources(tokio_stream::iter([huge_id]))
        .await
        .expect_err("a 1 MB node id is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().len() < 200, "{}", refused.message());

    // A thousand addresses, among them things that are not addresses.
    let mut addresses = vec![
        "evil\nname".to_owned(),
        "10.9.9.9, 10.8.8.8".to_owned(),
        "\u{1b}[2J".to_owned(),
    ];
    addresses.extend((0..1000).map(|i| format!("10.1.{}.{}", i / 250, i % 250)));
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("posing-proxy".into(), addresses)),
        type_url: ResourceType::RouteTable.type_url().into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .delta_resources(ReceiverStream::new(rx))
        .await
        .expect("a proxy with a sane id is served")
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response")
        .expect("stream")
        .expect("not ended");
    // And a megabyte of rejection, one line per kilobyte.
    let nack = "route table refused\n".repeat(1 << 20 >> 5) + "\r\n\u{202e}end";
    tx.send(DeltaDiscoveryRequest {
        type_url: response.type_url,
        response_nonce: response.nonce,
        error_detail: Some(ErrorDetail {
            code: 3,
            message: nack,
        }),
        ..Default::default()
    })
    .await
    .unwrap();

    eventually(Duration::from_secs(10), || async {
        controller
            .proxies()
            .await
            .iter()
            .any(|p| p.types.iter().any(|t| t.last_nack.is_some()))
    })
    .await;
    let proxies = controller.proxies().await;
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    let proxy = &proxies[0];
    assert_eq!(proxy.id, "posing-proxy");
    assert!(
        proxy.build_version.len() <= 64 && !proxy.build_version.contains('\n'),
        "{:?}",
        proxy.build_version
    );
    let message = &proxy.types[0].last_nack.as_ref().unwrap().message;
    assert!(
        message.len() <= 1024,
        "NACK text of {} bytes",
        message.len()
    );
    assert!(message.starts_with("route table refused route table refused"));
    assert!(!message.chars().any(char::is_control), "{message:?}");

    // The Gateway's status: not programmed, for a clean and bounded reason, and at most 16
    // addresses, each an IP address.
    let status = gateway_status(&controller).await;
    let programmed = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Programmed")
        .unwrap();
    assert_eq!(
        (programmed.status.as_str(), programmed.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        programmed.message.len() <= 2048,
        "{}",
        programmed.message.len()
    );
    assert!(!programmed.message.chars().any(char::is_control));
    assert_eq!(status.addresses.len(), 16, "{:?}", status.addresses);
    for a in &status.addresses {
        assert!(a.value.parse::<std::net::IpAddr>().is_ok(), "{a:?}");
        assert_eq!(a.r#type, "IPAddress");
    }
    // The status file on disk says the same.
    let file = ws.config.join("status").join("Gateway.infra.gw.yaml");
    eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("Invalid"))
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.len() < 8192, "status file of {} bytes", text.len());
    assert!(
        !text.contains("evil") && !text.contains("10.9.9.9"),
        "{text}"
    );

    // The log names the proxy once per line, without the peer's control characters.
    let log = controller.process.log_text();
    assert!(log.contains("left out of the Gateway's status"), "{log}");
    assert!(
        log.len() < 64 * 1024,
        "controller log of {} bytes",
        log.len()
    );
    assert!(!log.contains("evil\nname") && !log.contains('\u{1b}'));
}
