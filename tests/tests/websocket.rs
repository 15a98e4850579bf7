//! A WebSocket through the proxy keeps working across a configuration swap that leaves its
//! route in place: swaps never touch established connections.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, free_port, http_get,
};
use rauta_tests::manifests::{infra, prefix_route};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_survives_a_snapshot_swap() {
    let ws_dir = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws_dir.path());
    ws_dir.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws_dir.write("route.yaml", &prefix_route("web", "/", "echo"));
    let controller = Controller::start(&ws_dir.config, ws_dir.path());
    let proxy = Proxy::start(
        &controller.url(),
        "infra/gw",
        free_port() - 80,
        ws_dir.path(),
    );
    proxy.wait_ready().await;
    let addr = proxy.listener(80);

    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(response.status(), 101);
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("before")
    );

    // A new version that keeps the route (another route is added).
    let before = controller.snapshot_version("infra/gw").await;
    ws_dir.write("other.yaml", &prefix_route("other", "/other", "echo"));
    eventually(Duration::from_secs(10), || async {
        controller.snapshot_version("infra/gw").await != before
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    assert_eq!(
        http_get(&format!("http://{addr}/other"), None)
            .await
            .unwrap()
            .status,
        200
    );

    // The same connection still echoes, text and binary.
    socket.send(Message::text("after")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("after")
    );
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    socket.close(None).await.unwrap();
}
