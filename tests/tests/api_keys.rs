//! API keys (SecurityPolicy `apiKeyAuth`, gateway.rauta.dev/v1alpha1) end to end through the
//! real controller, proxy and echo backend: a missing or wrong key is answered 401 with a
//! WWW-Authenticate challenge; a valid key in a header or a query parameter passes, as its
//! client (the client id set upstream, a forged one replaced), and is removed before
//! forwarding; a rule's policy overrides the Gateway's; a Secret rotated changes the keys at
//! once; a missing Secret or an invalid policy refuses every request (fail closed) and says so
//! in status; the keys never appear in the controller's snapshot dump.

use std::time::Duration;

use rauta_common::api::v1::{GetSnapshotRequest, ListStatusesRequest};
use rauta_tests::harness::{
    Echo, HttpResponse, Proxy, Workspace, eventually, http_request, metric_value, start_gateway_at,
};
use rauta_tests::manifests::{documents, gateway_class, service};

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - name: partner\n    matches: [{path: {type: PathPrefix, value: /partner}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: ResponseCache, name: short}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: broken\n    matches: [{path: {type: PathPrefix, value: /broken}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - backendRefs: [{name: echo, port: 8080}]\n";

fn secret(name: &str, entries: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData: {{{entries}}}\n",
        ns = if name == "gateway-clients" {
            "infra"
        } else {
            "apps"
        }
    )
}

fn config(echo: std::net::SocketAddr, clients: &str) -> String {
    documents(&[
        gateway_class("rauta"),
        GATEWAY.to_owned(),
        service("apps", "echo", &[echo]),
        ROUTE.to_owned(),
        secret("clients", clients),
        secret("gateway-clients", "ops: ops-key-0"),
        // Every route of the Gateway: the ops key.
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: gateway-keys, namespace: infra}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  apiKeyAuth:\n    credentialRefs: [{name: gateway-clients}]\n".to_owned(),
        // The partner rule: the partners' keys, in a header or the query, the client id passed on.
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: partner-keys, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: partner}]\n  apiKeyAuth:\n    credentialRefs: [{name: clients}, {name: not-there}]\n    extractFrom: [{headers: [x-partner-key], params: [key]}]\n    forwardClientIDHeader: x-client-id\n".to_owned(),
        // The partner rule: 4 requests an hour per client, counted by the id the proxy sets,
        // and a response cache.
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: per-partner, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: partner}]\n  local:\n    limits: [{requests: 4, unit: Hour, key: [{type: Header, name: x-client-id}]}]\n".to_owned(),
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: ResponseCache\nmetadata: {name: short, namespace: apps}\nspec: {maxTTL: 60s}\n".to_owned(),
        // The broken rule: an invalid policy, which must not leave it open.
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: broken, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: broken}]\n  apiKeyAuth:\n    credentialRefs: [{name: clients}]\n    extractFrom: [{headers: [\"not a header\"]}]\n".to_owned(),
    ])
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let url = format!("http://{}{path}", proxy.listener(80));
    http_request(&url, Some("api.example"), headers, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_let_their_clients_in_and_nobody_else() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write(
        "all.yaml",
        &config(
            echo.http,
            "alice: alice-key-1, bob: bob-key-2, carol: carol-key-4",
        ),
    );
    let (controller, proxy) = start_gateway_at(&ws, 80, 1, &["--access-log", "json"]).await;
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "/", &[("x-api-key", "ops-key-0")]).await.status == 200
    })
    .await;

    // The Gateway's policy: no key, a wrong key, the right one.
    let refused = get(&proxy, "/", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["www-authenticate"], "ApiKey");
    assert_eq!(
        get(&proxy, "/", &[("x-api-key", "ops-key-1")]).await.status,
        401
    );
    let ok = get(&proxy, "/", &[("x-api-key", "ops-key-0")]).await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.seen_header("x-api-key").is_empty(),
        "the key is not forwarded: {}",
        ok.body
    );

    // The partner rule's own policy replaces the Gateway's there.
    assert_eq!(
        get(&proxy, "/partner", &[("x-api-key", "ops-key-0")])
            .await
            .status,
        401
    );
    let alice = get(
        &proxy,
        "/partner",
        &[("x-partner-key", "alice-key-1"), ("x-client-id", "mallory")],
    )
    .await;
    assert_eq!(alice.status, 200);
    assert_eq!(
        alice.seen_header("x-client-id"),
        ["alice"],
        "{}",
        alice.body
    );
    assert!(alice.seen_header("x-partner-key").is_empty());
    let bob = get(&proxy, "/partner/x?a=1&key=bob-key-2&b=2", &[]).await;
    assert_eq!(bob.status, 200);
    assert_eq!(bob.seen_header("x-client-id"), ["bob"]);
    let echoed = bob.echo().unwrap_or_default();
    assert_eq!(
        echoed["path"], "/partner/x?a=1&b=2",
        "the key is taken out of the query"
    );

    // Per-client limits count the id the proxy sets: a forged or missing id escapes nothing
    // (the partner rule allows each client 3 requests an hour; alice used 1).
    for forged in ["mallory", "", "bob"] {
        let headers = [("x-partner-key", "alice-key-1"), ("x-client-id", forged)];
        assert_eq!(
            get(&proxy, "/partner", &headers).await.status,
            200,
            "{forged:?}"
        );
    }
    let over = get(&proxy, "/partner", &[("x-partner-key", "alice-key-1")]).await;
    assert_eq!(over.status, 429, "alice's fourth request");
    // An authenticated answer is for its client: the rule's response cache neither keeps it
    // nor answers another client with it.
    for client in ["bob-key-2", "carol-key-4"] {
        let headers = [
            ("x-partner-key", client),
            ("x-echo-set-header", "Cache-Control: max-age=60"),
        ];
        let resp = get(&proxy, "/partner/cacheable", &headers).await;
        let id = client.split('-').next().unwrap_or("");
        assert_eq!(
            (resp.status, resp.seen_header("x-client-id")),
            (200, vec![id.to_owned()])
        );
        assert!(
            !resp.headers.contains_key("cache-status"),
            "{:?}",
            resp.headers
        );
    }

    // An invalid policy refuses everything on its rule, whatever key.
    for key in ["ops-key-0", "alice-key-1"] {
        assert_eq!(
            get(&proxy, "/broken", &[("x-api-key", key)]).await.status,
            401
        );
    }

    // Status: the missing Secret in ResolvedRefs, the invalid policy not accepted.
    let objects = controller
        .admin()
        .await
        .list_statuses(ListStatusesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .objects;
    let conditions = |name: &str| {
        let o = objects
            .iter()
            .find(|o| o.kind == "SecurityPolicy" && o.name == name)
            .unwrap_or_else(|| panic!("no status for {name}"));
        o.ancestors[0]
            .conditions
            .iter()
            .map(|c| (c.r#type.clone(), c.status.clone(), c.reason.clone()))
            .collect::<Vec<_>>()
    };
    let t = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        conditions("partner-keys"),
        [
            t("Accepted", "True", "Accepted"),
            t("ResolvedRefs", "False", "InvalidCredentialRef")
        ]
    );
    assert_eq!(conditions("broken")[0], t("Accepted", "False", "Invalid"));

    // Metrics by policy and result.
    let metrics = proxy.metrics().await;
    let count = |policy: &str, result: &str| {
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_auth_requests_total{{method=\"api_key\",policy=\"{policy}\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(count("apps/partner-keys", "allowed"), 8.0, "{metrics}");
    assert_eq!(
        count("apps/partner-keys", "missing"),
        1.0,
        "the ops key is in another header"
    );
    assert!(count("infra/gateway-keys", "missing") >= 1.0);

    // Neither keys nor their digests in the snapshot dump.
    let dump = controller
        .admin()
        .await
        .get_snapshot(GetSnapshotRequest {
            gateway: "infra/gw".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let text = format!("{dump:?}");
    assert!(!text.contains("alice-key-1") && !text.contains("ops-key-0"));
    let digest = ring::digest::digest(&ring::digest::SHA256, b"alice-key-1");
    assert!(
        !text.contains(&format!("{:?}", digest.as_ref())),
        "a key digest in the dump"
    );
    assert!(text.contains("alice"), "client ids are shown");

    // Rotation: bob's key replaced; the old one is refused as soon as the new one passes.
    ws.write(
        "all.yaml",
        &config(
            echo.http,
            "alice: alice-key-1, bob: bob-key-3, carol: carol-key-4",
        ),
    );
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "/partner", &[("x-partner-key", "bob-key-3")])
            .await
            .status
            == 200
    })
    .await;
    assert_eq!(
        get(&proxy, "/partner", &[("x-partner-key", "bob-key-2")])
            .await
            .status,
        401
    );

    // The access log has the request with its key taken out of the query, and no key.
    let log = || std::fs::read_to_string(&proxy.stdout).unwrap_or_default();
    eventually(Duration::from_secs(10), || async {
        log().contains("/partner/x?a=1&b=2")
    })
    .await;
    let log = log();
    for key in ["alice-key-1", "bob-key-2", "ops-key-0"] {
        assert!(!log.contains(key), "{key} in the access log");
    }
}
