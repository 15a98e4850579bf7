//! Session persistence tokens are signed: a client cannot make one up (or stretch a genuine
//! one's deadlines) to pin itself to an endpoint forever. Genuine tokens keep working across a
//! controller restart with the same `--session-key-file` and across a key rotation; the keys
//! never show in admin output.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rauta_common::api::v1::GetSnapshotRequest;
use rauta_common::api::v1::resource::Payload;
use rauta_tests::harness::{
    Controller, Echo, HttpResponse, Proxy, Workspace, all_in_sync, eventually, free_port,
    http_request,
};
use rauta_tests::manifests::{annotated_service, documents, gateway, gateway_class, http_route};

/// The session token of a `Set-Cookie: shop=TOKEN; ...`.
fn token(r: &HttpResponse) -> Option<String> {
    let value = r.headers.get(http::header::SET_COOKIE)?.to_str().ok()?;
    let rest = value.strip_prefix("shop=")?;
    Some(rest.split(';').next()?.to_owned())
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn get(url: &str, cookie: Option<&str>) -> HttpResponse {
    let cookie = cookie.map(|t| format!("shop={t}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
    let r = http_request(url, Some("sticky.example"), &headers, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r
}

/// The pods that answer 8 requests bringing `token`, and whether each answer started a new
/// session.
async fn answers(url: &str, token: &str) -> (BTreeSet<String>, bool) {
    let mut pods = BTreeSet::new();
    let mut all_new = true;
    for _ in 0..8 {
        let r = get(url, Some(token)).await;
        all_new &= self::token(&r).is_some();
        pods.insert(r.pod());
    }
    (pods, all_new)
}

async fn route_table_keys(controller: &Controller) -> Vec<String> {
    let snapshot = controller
        .admin()
        .await
        .get_snapshot(GetSnapshotRequest {
            gateway: "infra/gw".into(),
            type_url: "route_table".into(),
            name: "http-80".into(),
        })
        .await
        .expect("GetSnapshot")
        .into_inner();
    match &snapshot.resources[0].payload {
        Some(Payload::RouteTable(t)) => t.session_keys.clone(),
        other => panic!("not a route table: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_session_tokens_pin_nothing() {
    let ws = Workspace::new();
    let a = Echo::start("echo-a", "apps", ws.path());
    let b = Echo::start("echo-b", "apps", ws.path());
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            // Round robin: without a session, consecutive requests alternate.
            annotated_service(
                "apps",
                "rotating",
                &[a.http, b.http],
                &[("rauta.dev/load-balancer", "round-robin")],
            ),
            http_route(
                "apps",
                "sticky",
                ("infra", "gw"),
                &["sticky.example"],
                "  - sessionPersistence: {sessionName: shop, absoluteTimeout: 1h}\n    backendRefs: [{name: rotating, port: 8080}]\n",
            ),
        ]),
    );
    let key_file = ws.path().join("session.key");
    std::fs::write(&key_file, format!("{}\n", "first-key-".repeat(4))).unwrap();
    let key_flag = key_file.to_string_lossy().into_owned();
    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let flags = ["--plaintext", "--session-key-file", key_flag.as_str()];
    let controller = Controller::start_with(&ws.config, ws.path(), grpc, &flags);
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    let url = format!("http://{}/", proxy.listener(80));

    // A genuine session sticks.
    let first = get(&url, None).await;
    let genuine = token(&first).expect("a session cookie");
    let (pods, _) = answers(&url, &genuine).await;
    assert_eq!(pods, BTreeSet::from([first.pod()]), "the session moved");
    let pinned = if first.pod() == a.pod { a.http } else { b.http };

    // Made-up tokens for that endpoint, "never expiring": the unsigned form of old, the
    // genuine signature on other deadlines, a made-up signature.
    let (unsigned, signature) = genuine.rsplit_once('.').unwrap();
    let endpoint = hex(&pinned.to_string());
    for forged in [
        format!("{endpoint}.0.0"),
        format!("{endpoint}.0.0.{signature}"),
        format!("{endpoint}.0.0.{}", "0".repeat(signature.len())),
        format!("{unsigned}.{}", "f".repeat(signature.len())),
    ] {
        let (pods, all_new) = answers(&url, &forged).await;
        assert_eq!(pods.len(), 2, "{forged} pinned the session to {pods:?}");
        assert!(all_new, "{forged} was taken for a session");
    }

    // The keys are in the snapshot, and shown by neither the controller nor the proxy.
    let keys = route_table_keys(&controller).await;
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "[redacted]"),
        "{keys:?}"
    );
    let dump = proxy.config_dump().await.to_string();
    assert!(dump.contains("[redacted]"), "{dump}");
    assert!(!dump.contains("first-key"));

    // Another controller with the same key file: the session survives the restart.
    drop(controller);
    let controller = Controller::start_with(&ws.config, ws.path(), grpc, &flags);
    eventually(Duration::from_secs(20), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let (pods, all_new) = answers(&url, &genuine).await;
    assert_eq!(pods, BTreeSet::from([first.pod()]), "lost in the restart");
    assert!(!all_new);

    // A new key: sessions signed with the old one go on, new ones get the new signature.
    std::fs::write(&key_file, "second-key".repeat(4)).unwrap();
    eventually(Duration::from_secs(20), || async {
        route_table_keys(&controller).await.len() == 2
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let (pods, _) = answers(&url, &genuine).await;
    assert_eq!(pods, BTreeSet::from([first.pod()]), "lost in the rotation");
    let fresh = token(&get(&url, None).await).unwrap();
    assert_ne!(
        fresh.rsplit_once('.').unwrap().1,
        genuine.rsplit_once('.').unwrap().1
    );
    let (pods, _) = answers(&url, &fresh).await;
    assert_eq!(pods.len(), 1, "the new session moved: {pods:?}");
}
