//! HTTP Basic authentication (SecurityPolicy `basicAuth`) end to end through the real
//! controller, proxy and echo backend: users of an htpasswd Secret (bcrypt and SHA-1) pass
//! with their passwords, as themselves (the user header set, a forged one replaced, the
//! credentials removed); anyone else gets 401 with a Basic challenge; a Secret rotated changes
//! the users at once; a missing Secret or an unsupported entry refuses every request and says
//! so in status; the hashes never appear in the snapshot dump.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rauta_common::api::v1::{GetSnapshotRequest, ListStatusesRequest};
use rauta_tests::harness::{
    Echo, HttpResponse, Proxy, Workspace, eventually, http_request, metric_value, start_gateway_at,
};
use rauta_tests::manifests::{documents, gateway_class, service};

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - name: missing\n    matches: [{path: {type: PathPrefix, value: /missing}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: md5\n    matches: [{path: {type: PathPrefix, value: /md5}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - backendRefs: [{name: echo, port: 8080}]\n";

fn sha(password: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
    format!("{{SHA}}{}", STANDARD.encode(digest))
}

fn config(echo: std::net::SocketAddr, htpasswd: &str) -> String {
    let policy = |name: &str, section: &str, secret: &str| {
        let target = match section {
            "" => String::new(),
            s => format!(", sectionName: {s}"),
        };
        format!(
            "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api{target}}}]\n  basicAuth: {{users: {{name: {secret}}}, forwardUsernameHeader: x-user}}\n"
        )
    };
    let secret = |name: &str, text: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: apps}}\ndata: {{.htpasswd: {}}}\n",
            STANDARD.encode(text)
        )
    };
    documents(&[
        gateway_class("rauta"),
        GATEWAY.to_owned(),
        service("apps", "echo", &[echo]),
        ROUTE.to_owned(),
        secret("users", htpasswd),
        secret("md5-users", "old:$apr1$3KJ0.fE3$hzJ2rPgrbHIg6W3VpjMsn/\n"),
        policy("users", "", "users"),
        policy("missing", "missing", "not-there"),
        policy("md5", "md5", "md5-users"),
    ])
}

async fn get(proxy: &Proxy, path: &str, credentials: Option<&str>) -> HttpResponse {
    let url = format!("http://{}{path}", proxy.listener(80));
    let value = credentials.map(|c| format!("Basic {}", STANDARD.encode(c)));
    let headers: Vec<(&str, &str)> = value
        .iter()
        .map(|v| ("authorization", v.as_str()))
        .chain([("x-user", "root")])
        .collect();
    http_request(&url, Some("api.example"), &headers, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_users_pass_with_their_passwords_and_nobody_else() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let ann = bcrypt::hash("ann-password", 5).unwrap_or_default();
    ws.write(
        "all.yaml",
        &config(
            echo.http,
            &format!("# team\nann:{ann}\nsam:{}\n", sha("sam-password")),
        ),
    );
    let (controller, proxy) = start_gateway_at(&ws, 80, 1, &[]).await;
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "/", Some("sam:sam-password")).await.status == 200
    })
    .await;

    let refused = get(&proxy, "/", None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.headers["www-authenticate"],
        "Basic realm=\"rauta\", charset=\"UTF-8\""
    );
    for wrong in [
        "ann:sam-password",
        "sam:ann-password",
        "bob:x",
        "ann",
        "ann:",
    ] {
        assert_eq!(get(&proxy, "/", Some(wrong)).await.status, 401, "{wrong}");
    }
    for (credentials, user) in [("ann:ann-password", "ann"), ("sam:sam-password", "sam")] {
        // Twice: the second time from what the proxy remembers.
        for _ in 0..2 {
            let ok = get(&proxy, "/", Some(credentials)).await;
            assert_eq!(ok.status, 200, "{credentials}");
            assert_eq!(ok.seen_header("x-user"), [user], "{}", ok.body);
            assert!(ok.seen_header("authorization").is_empty(), "{}", ok.body);
        }
    }

    // A missing Secret or an entry of an unsupported kind: every request refused, and why.
    for path in ["/missing", "/md5"] {
        assert_eq!(
            get(&proxy, path, Some("ann:ann-password")).await.status,
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
    let condition = |name: &str, index: usize| {
        let o = objects
            .iter()
            .find(|o| o.kind == "SecurityPolicy" && o.name == name)
            .unwrap_or_else(|| panic!("no status for {name}"));
        let c = &o.ancestors[0].conditions[index];
        (
            c.r#type.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        )
    };
    let md5 = condition("md5", 0);
    assert_eq!(
        (md5.0.as_str(), md5.1.as_str(), md5.2.as_str()),
        ("Accepted", "False", "Invalid")
    );
    assert!(
        md5.3.contains("\"old\"") && !md5.3.contains("apr1"),
        "{md5:?}"
    );
    let missing = condition("missing", 1);
    assert_eq!(
        (missing.0.as_str(), missing.1.as_str(), missing.2.as_str()),
        ("ResolvedRefs", "False", "InvalidCredentialRef")
    );

    // No hash in the dump.
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
    assert!(
        !text.contains(&ann) && !text.contains(&sha("sam-password")),
        "a hash in the dump"
    );
    assert!(text.contains("\"sam\""), "user names are shown");

    // Rotation: sam's password changed.
    ws.write(
        "all.yaml",
        &config(
            echo.http,
            &format!("ann:{ann}\nsam:{}\n", sha("new-password")),
        ),
    );
    eventually(Duration::from_secs(15), || async {
        get(&proxy, "/", Some("sam:new-password")).await.status == 200
    })
    .await;
    assert_eq!(get(&proxy, "/", Some("sam:sam-password")).await.status, 401);

    let metrics = proxy.metrics().await;
    let count = |result: &str| {
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_auth_requests_total{{method=\"basic\",policy=\"apps/users\",result=\"{result}\"}}"
            ),
        )
    };
    assert!(count("allowed") >= 4.0, "{metrics}");
    assert_eq!(count("missing"), 1.0, "{metrics}");
    assert!(count("invalid") >= 5.0, "{metrics}");
}
