//! JSON Web Tokens (SecurityPolicy `jwt`) end to end through the real controller, proxy and
//! echo backend: RS256, ES256 and EdDSA tokens that verify pass, with their claims set as
//! request headers (a client's own values replaced) and the token removed; a missing,
//! expired, wrong-issuer, wrong-audience, forged, unsigned or HMAC token is answered 401 with a
//! Bearer challenge; a JWK Set fetched from a URL is fetched again when rotated, and kept when
//! its server fails; a rule's policy replaces the Gateway's and may require claims; a rate
//! limit keyed by a claim header counts per claim; bad policies refuse every request on their
//! targets and say why in status.

use std::time::Duration;

use rauta_common::api::v1::{GetSnapshotRequest, ListStatusesRequest};
use rauta_tests::harness::{
    Echo, HttpResponse, Proxy, Workspace, eventually, http_request, metric_value, start_gateway_at,
};
use rauta_tests::jwt::{JwksServer, SigningKey, jwks, unix_time};
use rauta_tests::manifests::{documents, gateway_class, service};
use serde_json::{Value, json};

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - name: admin\n    matches: [{path: {type: PathPrefix, value: /admin}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: limited\n    matches: [{path: {type: PathPrefix, value: /limited}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: broken\n    matches: [{path: {type: PathPrefix, value: /broken}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: missing\n    matches: [{path: {type: PathPrefix, value: /missing}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - backendRefs: [{name: echo, port: 8080}]\n";

/// A private key's member, pasted into the local JWK Set by mistake (RFC 8037's example).
const PRIVATE_MEMBER: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";

/// Indents a JSON document to sit in a YAML block scalar.
fn block(text: &str, indent: usize) -> String {
    format!("|\n{}{text}", " ".repeat(indent))
}

fn config(echo: std::net::SocketAddr, local: &str, admin: &str, remote_url: &str) -> String {
    documents(&[
        gateway_class("rauta"),
        GATEWAY.to_owned(),
        service("apps", "echo", &[echo]),
        ROUTE.to_owned(),
        // The Gateway's policy: two providers, the first reading Authorization, the second its
        // own header or a query parameter, with keys fetched from a URL.
        format!("apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: gateway-jwt, namespace: infra}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]\n  jwt:\n    providers:\n    - name: local\n      issuer: https://issuer.local\n      audiences: [api]\n      localJWKS:\n        inline: {}\n      claimToHeaders: [{{header: x-user, claim: sub}}, {{header: x-team, claim: org.team}}]\n    - name: remote\n      issuer: https://issuer.remote\n      remoteJWKS: {{uri: \"{remote_url}\", cacheDuration: 1s}}\n      extractFrom: {{headers: [{{name: x-remote-token}}], params: [access_token]}}\n      claimToHeaders: [{{header: x-user, claim: sub}}]\n", block(local, 10)),
        // The admin rule: its own policy, keys from a ConfigMap, the admin scope required.
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: admin-keys, namespace: apps}}\ndata:\n  jwks: {}\n", block(admin, 4)),
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: admin-jwt, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: admin}]\n  jwt:\n    providers:\n    - name: admins\n      issuer: https://issuer.local\n      localJWKS: {type: ValueRef, valueRef: {kind: ConfigMap, name: admin-keys}}\n      requiredClaims: [{name: scope, values: [admin]}]\n      extractFrom: {cookies: [session]}\n".to_owned(),
        // Two requests an hour per user (the header the proxy sets from `sub`).
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: per-user, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: limited}]\n  local:\n    limits: [{requests: 2, unit: Hour, key: [{type: Header, name: x-user}]}]\n".to_owned(),
        // Invalid: no usable key.
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: broken, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: broken}]\n  jwt:\n    providers:\n    - {name: p, localJWKS: {inline: '{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}'}}\n".to_owned(),
        // Valid, but its ConfigMap does not exist.
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: missing, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: missing}]\n  jwt:\n    providers:\n    - {name: p, localJWKS: {type: ValueRef, valueRef: {kind: ConfigMap, name: not-there}}}\n".to_owned(),
    ])
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let url = format!("http://{}{path}", proxy.listener(80));
    http_request(&url, Some("api.example"), headers, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn claims(iss: &str, sub: &str, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "sub": sub, "aud": "api", "exp": unix_time(600), "org": {"team": "core"}});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_verify_pass_with_their_claims_and_no_other_does() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let rsa = SigningKey::rsa("rsa-1");
    let ed = SigningKey::ed25519("ed-1");
    let admin_key = SigningKey::es256("admin-1");
    let remote_1 = SigningKey::es256("remote-1");
    let remote_2 = SigningKey::es256("remote-2");
    let server = JwksServer::start(&jwks(&[&remote_1])).await;
    let mut local: Value = serde_json::from_str(&jwks(&[&rsa, &ed])).unwrap_or_default();
    if let Some(keys) = local["keys"].as_array_mut() {
        keys.push(json!({"kty": "OKP", "crv": "Ed25519", "kid": "oops", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "d": PRIVATE_MEMBER}));
    }
    ws.write(
        "all.yaml",
        &config(
            echo.http,
            &local.to_string(),
            &jwks(&[&admin_key]),
            &server.url(),
        ),
    );
    let (controller, proxy) = start_gateway_at(&ws, 80, 1, &["--access-log", "json"]).await;
    let alice = rsa.sign(&claims("https://issuer.local", "alice", json!({})));
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "/", &[("authorization", &bearer(&alice))])
            .await
            .status
            == 200
    })
    .await;

    // No token: a bare challenge.
    let refused = get(&proxy, "/", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.headers["www-authenticate"],
        "Bearer realm=\"rauta\""
    );

    // RS256: claims become headers (a forged x-user replaced), the token is not forwarded.
    let ok = get(
        &proxy,
        "/",
        &[
            ("authorization", &bearer(&alice)),
            ("x-user", "mallory"),
            ("x_user", "mallory"),
            // Naming the claim header as hop-by-hop must not get the proxy to drop it.
            ("connection", "x-user"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.seen_header("x-user"), ["alice"], "{}", ok.body);
    assert!(
        ok.seen_header("x_user").is_empty(),
        "a twin of a claim header: {}",
        ok.body
    );
    assert_eq!(ok.seen_header("x-team"), ["core"]);
    assert!(ok.seen_header("authorization").is_empty(), "{}", ok.body);

    // EdDSA, and a token without exp.
    let bob = ed.sign(&json!({"iss": "https://issuer.local", "sub": "bob", "aud": ["x", "api"]}));
    let ok = get(&proxy, "/", &[("authorization", &bearer(&bob))]).await;
    assert_eq!(
        (ok.status, ok.seen_header("x-user")),
        (200, vec!["bob".to_owned()])
    );

    // Refused tokens.
    let forger = SigningKey::es256("rsa-1");
    let mut parts = alice.split('.');
    let (head, _, signature) = (parts.next(), parts.next(), parts.next());
    let root = {
        use base64::Engine;
        let c = claims("https://issuer.local", "root", json!({}));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string())
    };
    let tampered = format!("{}.{root}.{}", head.unwrap_or(""), signature.unwrap_or(""));
    let mut unsigned = alice
        .rsplit_once('.')
        .map_or("", |(signed, _)| signed)
        .to_owned();
    unsigned.push('.');
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let alg_none = format!("{none_header}.{}.", alice.split('.').nth(1).unwrap_or(""));
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("https://issuer.local", "eve", json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap_or_default();
    let cases = [
        (
            "expired",
            rsa.sign(&claims(
                "https://issuer.local",
                "alice",
                json!({"exp": unix_time(-120)}),
            )),
            "the token has expired",
        ),
        (
            "not yet valid",
            rsa.sign(&claims(
                "https://issuer.local",
                "alice",
                json!({"nbf": unix_time(600)}),
            )),
            "the token is not valid yet",
        ),
        (
            "wrong audience",
            rsa.sign(&claims(
                "https://issuer.local",
                "alice",
                json!({"aud": "web"}),
            )),
            "the token is not valid here",
        ),
        (
            "wrong issuer",
            rsa.sign(&claims("https://issuer.remote", "alice", json!({}))),
            "the token is not valid here",
        ),
        ("tampered", tampered, "the token is not valid here"),
        (
            "another key of the same id",
            forger.sign(&claims("https://issuer.local", "alice", json!({}))),
            "the token is not valid here",
        ),
        ("unsigned", unsigned, "the token is not valid here"),
        ("alg none", alg_none, "the token is not valid here"),
        ("hmac", hmac, "the token is not valid here"),
        (
            "garbage",
            "not.a.token".to_owned(),
            "the token is not valid here",
        ),
    ];
    for (what, token, description) in &cases {
        let resp = get(&proxy, "/", &[("authorization", &bearer(token))]).await;
        assert_eq!(resp.status, 401, "{what}");
        assert_eq!(
            resp.headers["www-authenticate"],
            format!(
                "Bearer realm=\"rauta\", error=\"invalid_token\", error_description=\"{description}\""
            ),
            "{what}"
        );
    }

    // The second provider: keys fetched from the URL; the token in its header or the query
    // (taken out before forwarding).
    let carol = remote_1.sign(&claims("https://issuer.remote", "carol", json!({})));
    let ok = get(&proxy, "/", &[("x-remote-token", &carol)]).await;
    assert_eq!(
        (ok.status, ok.seen_header("x-user")),
        (200, vec!["carol".to_owned()])
    );
    assert!(ok.seen_header("x-remote-token").is_empty());
    let ok = get(&proxy, &format!("/q?a=1&access_token={carol}"), &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.echo().unwrap_or_default()["path"], "/q?a=1");

    // A refused token in the query is not logged either.
    let refused_in_query = remote_1.sign(&claims("https://issuer.elsewhere", "eve", json!({})));
    let resp = get(&proxy, &format!("/q?access_token={refused_in_query}"), &[]).await;
    assert_eq!(resp.status, 401);

    // Rotation: the provider publishes a new key and drops the old one.
    server.set(Some(&jwks(&[&remote_2])));
    let dave = remote_2.sign(&claims("https://issuer.remote", "dave", json!({})));
    eventually(Duration::from_secs(10), || async {
        get(&proxy, "/", &[("x-remote-token", &dave)]).await.status == 200
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        get(&proxy, "/", &[("x-remote-token", &carol)]).await.status == 401
    })
    .await;
    // The JWK Set's server fails: the last good keys stay. (Keys in use are fetched again
    // when a request finds them due.)
    server.set(None);
    let fetches = server.requests();
    eventually(Duration::from_secs(15), || async {
        let status = get(&proxy, "/", &[("x-remote-token", &dave)]).await.status;
        assert_eq!(status, 200, "the keys went with their server");
        server.requests() > fetches + 1
    })
    .await;
    assert_eq!(
        get(&proxy, "/", &[("x-remote-token", &dave)]).await.status,
        200
    );

    // The admin rule's own policy replaces the Gateway's there: its keys, its cookie, the
    // admin scope.
    let scoped = |scope: &str| {
        admin_key.sign(&claims(
            "https://issuer.local",
            "root",
            json!({"scope": scope}),
        ))
    };
    let cookie = |token: &str| format!("theme=dark; session={token}");
    assert_eq!(
        get(&proxy, "/admin", &[("authorization", &bearer(&alice))])
            .await
            .status,
        401
    );
    assert_eq!(
        get(&proxy, "/admin", &[("cookie", &cookie(&scoped("read")))])
            .await
            .status,
        401
    );
    let ok = get(
        &proxy,
        "/admin",
        &[("cookie", &cookie(&scoped("read admin")))],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.seen_header("cookie"),
        ["theme=dark"],
        "the token's cookie is taken out"
    );

    // A limit keyed by the claim header counts per user, whatever x-user a client sends.
    for _ in 0..2 {
        let headers = [
            ("authorization", bearer(&alice)),
            ("x-user", "mallory".to_owned()),
        ];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(get(&proxy, "/limited", &headers).await.status, 200);
    }
    assert_eq!(
        get(&proxy, "/limited", &[("authorization", &bearer(&alice))])
            .await
            .status,
        429
    );
    assert_eq!(
        get(&proxy, "/limited", &[("authorization", &bearer(&bob))])
            .await
            .status,
        200
    );

    // Bad policies refuse everything on their rules.
    for path in ["/broken", "/missing"] {
        assert_eq!(
            get(&proxy, path, &[("authorization", &bearer(&alice))])
                .await
                .status,
            401,
            "{path}"
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
    let conditions = |name: &str| {
        let o = objects
            .iter()
            .find(|o| o.kind == "SecurityPolicy" && o.name == name)
            .unwrap_or_else(|| panic!("no status for {name}"));
        o.ancestors[0]
            .conditions
            .iter()
            .map(|c| {
                (
                    c.r#type.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let broken = conditions("broken");
    assert_eq!(
        (
            broken[0].0.as_str(),
            broken[0].1.as_str(),
            broken[0].2.as_str()
        ),
        ("Accepted", "False", "Invalid")
    );
    assert!(broken[0].3.contains("no usable key"), "{broken:?}");
    let missing = conditions("missing");
    assert_eq!(
        (
            missing[1].0.as_str(),
            missing[1].1.as_str(),
            missing[1].2.as_str()
        ),
        ("ResolvedRefs", "False", "InvalidCredentialRef"),
        "{missing:?}"
    );
    assert_eq!(conditions("gateway-jwt")[0].2, "Accepted");

    // Metrics by policy and result.
    let metrics = proxy.metrics().await;
    let count = |policy: &str, result: &str| {
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_auth_requests_total{{method=\"jwt\",policy=\"{policy}\",result=\"{result}\"}}"
            ),
        )
    };
    assert!(count("infra/gateway-jwt", "allowed") >= 8.0, "{metrics}");
    assert_eq!(count("infra/gateway-jwt", "expired"), 1.0, "{metrics}");
    assert_eq!(count("infra/gateway-jwt", "wrong_audience"), 1.0);
    assert!(
        count("infra/gateway-jwt", "bad_signature") >= 2.0,
        "tampered, unsigned"
    );
    assert!(count("infra/gateway-jwt", "unknown_key") >= 1.0);
    assert_eq!(count("apps/admin-jwt", "claims"), 1.0);

    // No token in the access log.
    let log = || std::fs::read_to_string(&proxy.stdout).unwrap_or_default();
    eventually(Duration::from_secs(10), || async {
        log().contains("/q?a=1")
    })
    .await;
    let log = log();
    for token in [&carol, &alice, &refused_in_query] {
        assert!(!log.contains(token.as_str()), "a token in the access log");
    }

    // Only public keys travel: a private key pasted into the JWK Set reaches no dump.
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
    assert!(text.contains("rsa-1"), "public keys are shown");
    assert!(
        !text.contains(PRIVATE_MEMBER),
        "a private key member in the dump"
    );
}
