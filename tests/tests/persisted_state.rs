//! `--state-dir`: a proxy that restarts while no controller answers serves the configuration it
//! last applied, says it is stale until a controller confirms it, and resumes from its versions;
//! a persisted file that is damaged or does not build is refused whole and set aside.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rauta_common::api::v1::resource::Payload;
use rauta_proxy::config::persisted::{PersistedState, REJECTED_FILE, STATE_FILE};
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, free_port, http_get,
};
use rauta_tests::manifests::{infra, prefix_route};

struct Setup {
    ws: Workspace,
    _echo: Echo,
    state: PathBuf,
    grpc: SocketAddr,
    offset: u16,
}

impl Setup {
    /// A route on /web, served once by a controller and a proxy with `--state-dir`, both
    /// killed once the proxy has persisted it.
    async fn persisted() -> Setup {
        let ws = Workspace::new();
        let echo = Echo::start("echo-1-a", "apps", ws.path());
        ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
        ws.write("route.yaml", &prefix_route("web", "/web", "echo"));
        let state = ws.path().join("state");
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        // The session key outlives the process (the managed Secret does in Kubernetes): every
        // route table carries keys derived from it, and a new one would change them all.
        std::fs::write(
            ws.path().join("session.key"),
            format!("{}\n", "persisted-key-".repeat(4)),
        )
        .unwrap();
        let mut controller = Setup::start_controller(&ws, grpc);
        let setup = Setup {
            grpc,
            offset: free_port() - 80,
            state,
            _echo: echo,
            ws,
        };
        let mut proxy = setup.proxy();
        proxy.wait_ready().await;
        assert_eq!(http_get(&setup.url(), None).await.unwrap().status, 200);
        eventually(Duration::from_secs(10), || async {
            proxy
                .metrics()
                .await
                .contains("rauta_proxy_state_writes_total{result=\"ok\"}")
        })
        .await;
        assert!(setup.state.join(STATE_FILE).exists());
        // Crashes, not graceful stops: what is on disk is all there is.
        controller.process.kill();
        proxy.process.kill();
        setup
    }

    /// A proxy for the controller's address (answering or not) with `--state-dir`.
    fn proxy(&self) -> Proxy {
        let state = self.state.to_str().unwrap();
        Proxy::start_with(
            &format!("http://{}", self.grpc),
            "infra/gw",
            self.offset,
            Ipv4Addr::LOCALHOST,
            self.ws.path(),
            &["--state-dir", state],
        )
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/web", 80 + self.offset)
    }

    fn controller(&self) -> Controller {
        Setup::start_controller(&self.ws, self.grpc)
    }

    fn start_controller(ws: &Workspace, grpc: SocketAddr) -> Controller {
        let key = ws.path().join("session.key");
        let key = key.to_string_lossy();
        let flags = ["--plaintext", "--session-key-file", &key];
        Controller::start_with(&ws.config, ws.path(), grpc, &flags)
    }
}

async fn readyz(proxy: &Proxy) -> (u16, String) {
    let r = http_get(&format!("http://{}/readyz", proxy.admin), None)
        .await
        .expect("GET /readyz");
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_serves_its_persisted_configuration_until_a_controller_confirms_it() {
    let setup = Setup::persisted().await;

    // No controller: the proxy serves what it persisted, at once, and says it is stale.
    let proxy = setup.proxy();
    proxy.wait_ready().await;
    let response = http_get(&setup.url(), None).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.pod(), "echo-1-a");
    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ready, stale: serving the configuration persisted in")
            && body.contains("not yet confirmed by a controller"),
        "{body}"
    );
    let metrics = proxy.metrics().await;
    for line in [
        "rauta_proxy_config_stale 1",
        "rauta_proxy_controller_connected 0",
        "rauta_proxy_state_restores_total{result=\"restored\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(proxy.config_dump().await["stale"].is_string());

    // The controller comes back: the mark clears, and it sent nothing the proxy had.
    let controller = setup.controller();
    eventually(Duration::from_secs(15), || async {
        proxy.metrics().await.contains("rauta_proxy_config_stale 0")
    })
    .await;
    assert_eq!(readyz(&proxy).await, (200, "ready\n".to_owned()));
    assert!(proxy.config_dump().await["stale"].is_null());
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let proxies = controller.proxies().await;
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    for t in &proxies[0].types {
        // Presented as initial_resource_versions (an HTTP-only Gateway has no L4 tables).
        let l4 = t.type_url.ends_with("L4RouteTable");
        assert_eq!(t.resumed_resources, u32::from(!l4), "{t:?}");
        assert_eq!(t.resources_sent, 0, "{t:?}");
    }
    assert_eq!(http_get(&setup.url(), None).await.unwrap().status, 200);
}

/// The persisted state with one more listener, on port 0: it decodes (its checksum is right)
/// but does not build, so none of it may be served, not even the good listener.
fn with_invalid_listener(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let mut state = PersistedState::from_file_bytes(&bytes).unwrap();
    let listeners = state
        .types
        .iter_mut()
        .find(|t| t.type_url.ends_with(".Listener"))
        .expect("listeners persisted");
    let mut bad = listeners.resources[0].clone();
    let Some(Payload::Listener(l)) = &mut bad.payload else {
        panic!("a listener resource: {bad:?}");
    };
    l.name = "http-bad".into();
    l.port = 0;
    bad.name = "http-bad".into();
    listeners.resources.push(bad);
    std::fs::write(file, state.to_file_bytes()).unwrap();
}

/// Waits for the proxy to have refused its persisted state; returns /readyz's body.
async fn refused(setup: &Setup, proxy: &Proxy) -> String {
    eventually(Duration::from_secs(10), || async {
        proxy
            .metrics()
            .await
            .contains("rauta_proxy_state_restores_total{result=\"refused\"} 1")
    })
    .await;
    let (status, body) = readyz(proxy).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("waiting for the first configuration (the persisted one was refused"),
        "{body}"
    );
    assert!(
        http_get(&setup.url(), None).await.is_err(),
        "a refused state serves nothing"
    );
    assert!(proxy.metrics().await.contains("rauta_proxy_config_stale 0"));
    assert!(
        proxy
            .process
            .log_text()
            .contains("refusing the persisted configuration")
    );
    assert!(!setup.state.join(STATE_FILE).exists(), "set aside");
    assert!(setup.state.join(REJECTED_FILE).exists());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_state_that_is_damaged_or_does_not_build_is_refused_whole() {
    let setup = Setup::persisted().await;
    let file = setup.state.join(STATE_FILE);
    let good = std::fs::read(&file).unwrap();

    with_invalid_listener(&file);
    let mut proxy = setup.proxy();
    let body = refused(&setup, &proxy).await;
    assert!(body.contains("listener http-bad: invalid port 0"), "{body}");
    proxy.process.kill();

    // One bit flipped in the middle: the checksum catches it.
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    std::fs::write(&file, &damaged).unwrap();
    std::fs::remove_file(setup.state.join(REJECTED_FILE)).unwrap();
    let proxy = setup.proxy();
    let body = refused(&setup, &proxy).await;
    assert!(body.contains("checksum mismatch"), "{body}");
    assert_eq!(
        std::fs::read(setup.state.join(REJECTED_FILE)).unwrap(),
        damaged,
        "kept as it was for a person to read"
    );

    // A controller's configuration is served and persisted afresh.
    let _controller = setup.controller();
    proxy.wait_ready().await;
    assert_eq!(http_get(&setup.url(), None).await.unwrap().status, 200);
    assert_eq!(readyz(&proxy).await, (200, "ready\n".to_owned()));
    eventually(Duration::from_secs(10), || async {
        std::fs::read(&file).is_ok_and(|b| PersistedState::from_file_bytes(&b).is_ok())
    })
    .await;
}
