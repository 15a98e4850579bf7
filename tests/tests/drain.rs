//! SIGTERM drains the proxy: it stops accepting, answers /readyz with 503, lets the requests in
//! flight finish, closes idle keep-alive connections, and exits; a WebSocket open at SIGTERM
//! keeps working until it closes; a request that outlives the grace period does not keep it
//! alive.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rauta_tests::harness::{Controller, Echo, Proxy, Workspace, free_port, http_get};
use rauta_tests::manifests::{infra, prefix_route};

fn start(ws: &Workspace, drain_timeout: &str) -> (Controller, Proxy, Echo) {
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("route.yaml", &prefix_route("web", "/", "echo"));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start_with(
        &controller.url(),
        "infra/gw",
        free_port() - 80,
        std::net::Ipv4Addr::LOCALHOST,
        ws.path(),
        &["--drain-timeout", drain_timeout],
    );
    (controller, proxy, echo)
}

/// One keep-alive HTTP/1.1 exchange on a raw socket, which then stays open and idle.
fn idle_keep_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .write_all(b"GET /idle HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The echo answers JSON; its closing brace ends the body.
    while !seen.ends_with(b"}") && !seen.ends_with(b"}\n") {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits() {
    let ws = Workspace::new();
    let (_controller, mut proxy, _echo) = start(&ws, "20");
    proxy.wait_ready().await;
    let listener = proxy.listener(80);
    let base = format!("http://{listener}");
    let mut idle = idle_keep_alive(listener);

    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let url = format!("{base}/slow/{i}?delay=1500ms");
            tokio::spawn(async move { http_get(&url, Some("example.com")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let terminated = Instant::now();
    proxy.process.terminate();

    // Draining: not ready any more, and no new connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = http_get(&format!("http://{}/readyz", proxy.admin), None)
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("draining"), "{ready:?}");
    assert!(
        TcpStream::connect_timeout(&listener, Duration::from_secs(1)).is_err(),
        "the listener should be closed"
    );
    // The idle keep-alive connection is closed rather than left to the grace period.
    let mut buf = [0u8; 64];
    assert_eq!(
        idle.read(&mut buf).unwrap_or(0),
        0,
        "idle connection closed"
    );

    for (i, request) in in_flight.into_iter().enumerate() {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status, 200, "request {i}: {response:?}");
    }
    let status = proxy
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits once drained");
    assert!(status.success(), "{status:?}");
    let took = terminated.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "drained in {took:?}, well before the 20 s grace period"
    );
    assert!(proxy.process.log_text().contains("drained"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain() {
    let ws = Workspace::new();
    let (_controller, mut proxy, _echo) = start(&ws, "1");
    proxy.wait_ready().await;
    let url = format!("http://{}/stuck?delay=30s", proxy.listener(80));
    let stuck = tokio::spawn(async move { http_get(&url, Some("example.com")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = Instant::now();
    proxy.process.terminate();
    let status = proxy
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits at the end of the grace period");
    let took = terminated.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited after {took:?}"
    );
    assert!(status.success(), "{status:?}");
    assert!(proxy.process.log_text().contains("grace period"));
    assert!(stuck.await.unwrap().is_err(), "the stuck request was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_open_at_sigterm_is_waited_for() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::Message;
    let ws = Workspace::new();
    let (_controller, mut proxy, _echo) = start(&ws, "20");
    proxy.wait_ready().await;
    let addr = proxy.listener(80);
    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("before")
    );

    let terminated = Instant::now();
    proxy.process.terminate();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Draining, and the WebSocket still relays both ways.
    assert!(
        proxy.process.wait_exit(Duration::from_millis(10)).is_none(),
        "the proxy must wait for the open WebSocket"
    );
    socket.send(Message::text("during")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("during")
    );

    // Once the client closes it, nothing is open: the proxy exits well before its grace period.
    socket.close(None).await.unwrap();
    drop(socket);
    let status = proxy
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits once the WebSocket closed");
    assert!(status.success(), "{status:?}");
    assert!(
        terminated.elapsed() < Duration::from_secs(10),
        "exited {:?} after SIGTERM",
        terminated.elapsed()
    );
    assert!(proxy.process.log_text().contains("drained; exiting"));
}
