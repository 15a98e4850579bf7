//! Authorization rules (SecurityPolicy `authorization`) end to end through the real
//! controller, proxy and echo backend: the first matching rule decides, by client address
//! (read through one trusted X-Forwarded-For hop, so addresses a client puts further left are
//! ignored), verified JWT claims and scopes, method and path; no rule matching, the default
//! denies with 403; a rule's own policy overrides the Gateway's authorization while the
//! Gateway's JWT still applies (concern by concern); an invalid rule makes its policy refuse
//! every request and say why.

use std::time::Duration;

use rauta_common::api::v1::ListStatusesRequest;
use rauta_tests::harness::{
    Echo, Proxy, Workspace, eventually, http_method_request, metric_value, start_gateway_at,
};
use rauta_tests::jwt::{SigningKey, jwks, unix_time};
use rauta_tests::manifests::{documents, gateway_class, service};
use serde_json::json;

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - name: open\n    matches: [{path: {type: PathPrefix, value: /open}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: typo\n    matches: [{path: {type: PathPrefix, value: /typo}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - backendRefs: [{name: echo, port: 8080}]\n";

fn config(echo: std::net::SocketAddr, keys: &str) -> String {
    documents(&[
        gateway_class("rauta"),
        GATEWAY.to_owned(),
        service("apps", "echo", &[echo]),
        ROUTE.to_owned(),
        format!("apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: authz, namespace: infra}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]\n  jwt:\n    optional: true\n    providers:\n    - name: idp\n      issuer: https://idp\n      localJWKS: {{inline: '{keys}'}}\n  authorization:\n    defaultAction: Deny\n    clientIPDetection: {{xForwardedFor: {{numTrustedHops: 1}}}}\n    rules:\n    - name: blocked\n      action: Deny\n      principal: {{clientCIDRs: [192.0.2.0/24]}}\n    - name: admins\n      action: Allow\n      principal: {{jwt: {{claims: [{{name: groups, values: [admin]}}], scopes: [write]}}}}\n      operation: {{paths: [/admin]}}\n    - name: secrets\n      action: Deny\n      operation: {{paths: [/public/secret]}}\n    - name: readers\n      action: Allow\n      operation: {{methods: [GET], paths: [/public]}}\n"),
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: open, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: open}]\n  authorization: {defaultAction: Allow}\n".to_owned(),
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: typo, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: typo}]\n  authorization:\n    rules: [{action: Allow, principal: {clientCIDRs: [10.0.0.0/33]}}]\n".to_owned(),
    ])
}

/// A request's method, path and headers, and the status it must get.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);

async fn status(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let url = format!("http://{}{path}", proxy.listener(80));
    http_method_request(method, &url, Some("api.example"), headers, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_rule_decides_and_the_default_denies() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let key = SigningKey::ed25519("k");
    ws.write("all.yaml", &config(echo.http, &jwks(&[&key])));
    let (controller, proxy) = start_gateway_at(&ws, 80, 1, &[]).await;
    eventually(Duration::from_secs(15), || async {
        status(&proxy, "GET", "/public", &[]).await == 200
    })
    .await;

    let token = |groups: &[&str], scope: &str| {
        let claims = json!({"iss": "https://idp", "sub": "u", "exp": unix_time(600), "groups": groups, "scope": scope});
        format!("Bearer {}", key.sign(&claims))
    };
    let admin = token(&["dev", "admin"], "read write");
    let reader = token(&["admin"], "read");
    let cases: &[Case] = &[
        ("GET", "/public/page", vec![], 200),
        ("POST", "/public/page", vec![], 403),
        ("GET", "/publicity", vec![], 403),
        ("GET", "/admin", vec![], 403),
        (
            "DELETE",
            "/admin/users",
            vec![("authorization", &admin)],
            200,
        ),
        (
            "DELETE",
            "/admin/users",
            vec![("authorization", &reader)],
            403,
        ),
        // The client behind the one trusted hop is in the blocked range...
        (
            "GET",
            "/public",
            vec![("x-forwarded-for", "192.0.2.7")],
            403,
        ),
        (
            "GET",
            "/admin",
            vec![("authorization", &admin), ("x-forwarded-for", "192.0.2.7")],
            403,
        ),
        // ...while an address the client itself put further left means nothing.
        (
            "GET",
            "/public",
            vec![("x-forwarded-for", "192.0.2.7, 10.1.1.1")],
            200,
        ),
        // A path is compared in one form: however a client spells /public/secret, it is denied.
        ("GET", "/public/secret", vec![], 403),
        ("GET", "//public//secret", vec![], 403),
        ("GET", "/public/%73ecret", vec![], 403),
        ("GET", "/public%2Fsecret", vec![], 403),
        ("GET", "/public/x/../secret", vec![], 403),
        ("GET", "/public/secrets", vec![], 200),
        // A '%' that starts no escape: refused, not decoded around ("%6%73" is not "%6s").
        ("GET", "/public/%6%73ecret", vec![], 400),
        // The route's own authorization allows all; the Gateway's JWT still checks tokens.
        ("POST", "/open/x", vec![], 200),
        (
            "POST",
            "/open/x",
            vec![("authorization", "Bearer not-a-token")],
            401,
        ),
        // An invalid policy refuses everything on its rule.
        ("GET", "/typo/public", vec![], 401),
    ];
    for (method, path, headers, expected) in cases {
        assert_eq!(
            status(&proxy, method, path, headers).await,
            *expected,
            "{method} {path} {headers:?}"
        );
    }

    let objects = controller
        .admin()
        .await
        .list_statuses(ListStatusesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .objects;
    let typo = objects
        .iter()
        .find(|o| o.kind == "SecurityPolicy" && o.name == "typo")
        .map(|o| o.ancestors[0].conditions[0].clone())
        .expect("typo's status");
    assert_eq!(
        (typo.status.as_str(), typo.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(typo.message.contains("10.0.0.0/33"), "{}", typo.message);

    let metrics = proxy.metrics().await;
    let count = |rule: &str, result: &str| {
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_authorization_requests_total{{policy=\"infra/authz\",result=\"{result}\",rule=\"{rule}\"}}"
            ),
        )
    };
    assert_eq!(count("blocked", "denied"), 2.0, "{metrics}");
    assert_eq!(count("admins", "allowed"), 1.0, "{metrics}");
    assert_eq!(count("", "denied"), 4.0, "{metrics}");
    assert_eq!(count("secrets", "denied"), 5.0, "{metrics}");
}
