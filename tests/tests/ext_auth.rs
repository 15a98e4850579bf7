//! External authorization (SecurityPolicy `extAuth`, "forward auth") end to end through the
//! real controller, proxy and echo backend, with an authorization service in the test: a
//! request the service answers 2xx goes on with the service's chosen headers (a client's own
//! values replaced); any other answer goes back to the client as it came; the service sees
//! the method, prefixed path and query, Host, the chosen headers and X-Forwarded-*, never the
//! body; a service that does not answer in time fails closed (403) or open, as configured; a
//! policy whose Service does not exist refuses every request and says why.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rauta_common::api::v1::ListStatusesRequest;
use rauta_tests::harness::{
    Echo, HttpResponse, Proxy, Workspace, eventually, http_method_request, metric_value,
    start_gateway_at,
};
use rauta_tests::manifests::{documents, gateway_class, service};
use tokio::net::TcpListener;

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - name: lenient\n    matches: [{path: {type: PathPrefix, value: /lenient}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - name: nowhere\n    matches: [{path: {type: PathPrefix, value: /nowhere}}]\n    backendRefs: [{name: echo, port: 8080}]\n  - backendRefs: [{name: echo, port: 8080}]\n";

/// What the service saw of one request: method, target, headers.
type Seen = (String, String, http::HeaderMap, usize);

/// An authorization service: `Bearer good` passes (with x-user and x-other headers), `Bearer
/// slow` passes after 3 s, anything else is refused 401 with its own challenge and body.
async fn auth_service() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            let service = service_fn(move |req: http::Request<Incoming>| {
                let log = Arc::clone(&log);
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let auth = parts.headers.get("authorization").cloned();
                    log.lock().unwrap_or_else(|e| e.into_inner()).push((
                        parts.method.to_string(),
                        parts.uri.to_string(),
                        parts.headers,
                        body,
                    ));
                    let auth = auth.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
                    if auth == "Bearer slow" {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    let resp = match auth {
                        // A refusal whose body is over what the proxy passes back.
                        "Bearer big" => http::Response::builder()
                            .status(302)
                            .header("location", "https://login.example/")
                            .body(Full::new(Bytes::from(vec![b'x'; 100_000]))),
                        "Bearer good" | "Bearer slow" => http::Response::builder()
                            .header("x-user", "alice")
                            .header("x-other", "not for the backend")
                            .body(Full::new(Bytes::new())),
                        _ => http::Response::builder()
                            .status(401)
                            .header("www-authenticate", "Custom realm=\"auth\"")
                            .body(Full::new(Bytes::from_static(b"denied by auth\n"))),
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

fn config(echo: SocketAddr, auth: SocketAddr) -> String {
    let policy = |name: &str, namespace: &str, target: &str, service: &str, fail_open: bool| {
        format!(
            "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  targetRefs: [{target}]\n  extAuth:\n    http: {{backendRef: {{name: {service}, namespace: auth, port: 9000}}, path: /verify, headersToBackend: [x-user]}}\n    headersToExtAuth: [authorization, x-tenant]\n    timeout: 500ms\n    failOpen: {fail_open}\n"
        )
    };
    documents(&[
        gateway_class("rauta"),
        GATEWAY.to_owned(),
        service("apps", "echo", &[echo]),
        service("auth", "authz", &[auth]).replace("port: 8080", "port: 9000"),
        ROUTE.to_owned(),
        // Policies reach Services in other namespaces only with a ReferenceGrant.
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: policies, namespace: auth}\nspec:\n  from: [{group: gateway.rauta.dev, kind: SecurityPolicy, namespace: infra}, {group: gateway.rauta.dev, kind: SecurityPolicy, namespace: apps}]\n  to: [{group: '', kind: Service}]\n".to_owned(),
        policy("gateway-auth", "infra", "{group: gateway.networking.k8s.io, kind: Gateway, name: gw}", "authz", false),
        policy("lenient", "apps", "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: lenient}", "authz", true),
        policy("nowhere", "apps", "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: nowhere}", "not-there", false),
    ])
}

async fn send(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let url = format!("http://{}{path}", proxy.listener(80));
    http_method_request(method, &url, Some("api.example"), headers, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_decides_and_its_refusals_reach_the_client() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let (auth, seen) = auth_service().await;
    ws.write("all.yaml", &config(echo.http, auth));
    let (controller, proxy) = start_gateway_at(&ws, 80, 1, &[]).await;
    let good = [("authorization", "Bearer good")];
    eventually(Duration::from_secs(15), || async {
        send(&proxy, "GET", "/", &good).await.status == 200
    })
    .await;

    // Allowed: the service's x-user replaces the client's; its other headers stay with it.
    let ok = send(
        &proxy,
        "POST",
        "/orders?id=1",
        &[
            ("authorization", "Bearer good"),
            ("x-user", "mallory"),
            ("x-tenant", "t1"),
            ("cookie", "c=1"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.seen_header("x-user"), ["alice"], "{}", ok.body);
    assert!(ok.seen_header("x-other").is_empty());
    let asked = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last()
        .cloned();
    let (method, target, headers, body) = asked.expect("the service was asked");
    assert_eq!(
        (method.as_str(), target.as_str(), body),
        ("POST", "/verify/orders?id=1", 0)
    );
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(header("host"), "api.example");
    assert_eq!(header("x-forwarded-method"), "POST");
    assert_eq!(header("x-forwarded-uri"), "/orders?id=1");
    assert_eq!(header("x-forwarded-host"), "api.example");
    assert_eq!(header("x-forwarded-proto"), "http");
    assert_eq!(header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(header("x-tenant"), "t1");
    assert_eq!(header("cookie"), "", "headers not chosen are not sent");

    // Refused: the service's answer as it came.
    let denied = send(&proxy, "GET", "/", &[("authorization", "Bearer bad")]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.headers["www-authenticate"], "Custom realm=\"auth\"");
    assert_eq!(denied.body, "denied by auth\n");

    // Too slow: closed on the Gateway's policy, open on the lenient rule's.
    let slow = [("authorization", "Bearer slow")];
    let started = Instant::now();
    assert_eq!(send(&proxy, "GET", "/", &slow).await.status, 403);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Failing open vouches for nothing: the client's own x-user (or a twin) goes.
    let forged = [
        ("authorization", "Bearer slow"),
        ("x-user", "admin"),
        ("x_user", "admin"),
    ];
    let lenient = send(&proxy, "GET", "/lenient", &forged).await;
    assert_eq!(lenient.status, 200);
    assert!(lenient.seen_header("x-user").is_empty(), "{}", lenient.body);
    assert!(lenient.seen_header("x_user").is_empty(), "{}", lenient.body);
    // A refusal stays one, however long its body: even where failing opens.
    let big = send(
        &proxy,
        "GET",
        "/lenient",
        &[("authorization", "Bearer big")],
    )
    .await;
    assert_eq!(big.status, 302);
    assert_eq!(big.headers["location"], "https://login.example/");

    // A policy whose Service does not exist refuses everything, and says why.
    assert_eq!(send(&proxy, "GET", "/nowhere", &good).await.status, 401);
    let objects = controller
        .admin()
        .await
        .list_statuses(ListStatusesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .objects;
    let nowhere = objects
        .iter()
        .find(|o| o.kind == "SecurityPolicy" && o.name == "nowhere")
        .map(|o| o.ancestors[0].conditions[0].clone())
        .expect("status of nowhere");
    assert_eq!(
        (nowhere.status.as_str(), nowhere.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(nowhere.message.contains("not-there"), "{}", nowhere.message);

    let metrics = proxy.metrics().await;
    let count = |policy: &str, result: &str| {
        metric_value(
            &metrics,
            &format!(
                "rauta_proxy_auth_requests_total{{method=\"ext_auth\",policy=\"{policy}\",result=\"{result}\"}}"
            ),
        )
    };
    assert!(count("infra/gateway-auth", "allowed") >= 2.0, "{metrics}");
    assert_eq!(count("infra/gateway-auth", "denied"), 1.0, "{metrics}");
    assert_eq!(
        count("infra/gateway-auth", "error_denied"),
        1.0,
        "{metrics}"
    );
    assert_eq!(count("apps/lenient", "error_allowed"), 1.0, "{metrics}");
    assert_eq!(count("apps/lenient", "denied"), 1.0, "{metrics}");
    assert!(
        metric_value(
            &metrics,
            "rauta_proxy_ext_auth_seconds_count{policy=\"infra/gateway-auth\"}"
        ) >= 4.0
    );
}

mod grpc {
    //! The same through Envoy's gRPC API (`envoy.service.auth.v3.Authorization`), with a
    //! tonic server in the test.

    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rauta_common::api::ext_authz::authorization_server::{Authorization, AuthorizationServer};
    use rauta_common::api::ext_authz::{
        BoolValue, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption,
        HttpStatus, OkHttpResponse, RpcStatus, check_response,
    };
    use rauta_tests::harness::{Echo, Workspace, eventually, metric_value, start_gateway_at};
    use rauta_tests::manifests::{documents, gateway_class, service};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::{GATEWAY, send};

    #[derive(Clone, Default)]
    struct Authz {
        asked: Arc<Mutex<Vec<CheckRequest>>>,
    }

    fn option(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append: append.map(|value| BoolValue { value }),
            append_action: 0,
        }
    }

    #[tonic::async_trait]
    impl Authorization for Authz {
        async fn check(
            &self,
            request: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            let check = request.into_inner();
            self.asked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(check.clone());
            let http = check
                .attributes
                .and_then(|a| a.request)
                .and_then(|r| r.http)
                .unwrap_or_default();
            let auth = http
                .headers
                .get("authorization")
                .cloned()
                .unwrap_or_default();
            let answer = match auth.as_str() {
                "Bearer good" => CheckResponse {
                    status: Some(RpcStatus::default()),
                    http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                        headers: vec![
                            option("x-user", "alice", None),
                            option("x-trace", "authz", Some(true)),
                        ],
                        headers_to_remove: vec!["authorization".into(), "host".into()],
                        ..Default::default()
                    })),
                },
                "Bearer teapot" => CheckResponse {
                    status: Some(RpcStatus {
                        code: 16,
                        message: "no".into(),
                    }),
                    http_response: Some(check_response::HttpResponse::DeniedResponse(
                        DeniedHttpResponse {
                            status: Some(HttpStatus { code: 401 }),
                            headers: vec![option("www-authenticate", "Custom", None)],
                            body: "denied over gRPC\n".into(),
                        },
                    )),
                },
                _ => CheckResponse {
                    status: Some(RpcStatus {
                        code: 7,
                        message: "denied".into(),
                    }),
                    http_response: None,
                },
            };
            Ok(tonic::Response::new(answer))
        }
    }

    async fn authz_server() -> (SocketAddr, Authz) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let authz = Authz::default();
        let service = AuthorizationServer::new(authz.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (addr, authz)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_envoy_ext_authz_server_decides_over_grpc() {
        let ws = Workspace::new();
        let echo = Echo::start("echo-1-a", "apps", ws.path());
        let (authz_addr, authz) = authz_server().await;
        let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - backendRefs: [{name: echo, port: 8080}]\n";
        let policy = "apiVersion: gateway.rauta.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: opa, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]\n  extAuth:\n    grpc: {backendRef: {name: authz, port: 9001}}\n    timeout: 1s\n";
        ws.write(
            "all.yaml",
            &documents(&[
                gateway_class("rauta"),
                GATEWAY.to_owned(),
                service("apps", "echo", &[echo.http]),
                service("apps", "authz", &[authz_addr]).replace("port: 8080", "port: 9001"),
                route.to_owned(),
                policy.to_owned(),
            ]),
        );
        let (_controller, proxy) = start_gateway_at(&ws, 80, 1, &[]).await;
        let good = [
            ("authorization", "Bearer good"),
            ("x-user", "mallory"),
            ("x-tenant", "t1"),
        ];
        eventually(Duration::from_secs(15), || async {
            send(&proxy, "GET", "/", &good).await.status == 200
        })
        .await;

        // Allowed: the service's headers set (x-user overwritten, x-trace added), the
        // headers it removes removed (but Host).
        let ok = send(&proxy, "POST", "/orders?id=1", &good).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.seen_header("x-user"), ["alice"], "{}", ok.body);
        assert_eq!(ok.seen_header("x-trace"), ["authz"]);
        assert!(ok.seen_header("authorization").is_empty(), "{}", ok.body);
        assert_eq!(ok.echo().unwrap_or_default()["host"], "api.example");
        let asked = authz
            .asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned();
        let attributes = asked.and_then(|c| c.attributes).unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        assert_eq!(
            (
                http.method.as_str(),
                http.path.as_str(),
                http.host.as_str(),
                http.scheme.as_str()
            ),
            ("POST", "/orders?id=1", "api.example", "http")
        );
        assert_eq!(http.headers.get("x-tenant").map(String::as_str), Some("t1"));
        // Pseudo-headers as Envoy sends them.
        assert_eq!(
            http.headers.get(":method").map(String::as_str),
            Some("POST")
        );
        assert_eq!(
            http.headers.get(":path").map(String::as_str),
            Some("/orders?id=1")
        );
        let source = format!("{:?}", attributes.source);
        assert!(source.contains("127.0.0.1"), "{source}");

        // Denied with the service's own answer, or 403 without one.
        let teapot = send(&proxy, "GET", "/", &[("authorization", "Bearer teapot")]).await;
        assert_eq!(teapot.status, 401);
        assert_eq!(teapot.headers["www-authenticate"], "Custom");
        assert_eq!(teapot.body, "denied over gRPC\n");
        assert_eq!(send(&proxy, "GET", "/", &[]).await.status, 403);

        let metrics = proxy.metrics().await;
        let count = |result: &str| {
            metric_value(
                &metrics,
                &format!(
                    "rauta_proxy_auth_requests_total{{method=\"ext_auth\",policy=\"apps/opa\",result=\"{result}\"}}"
                ),
            )
        };
        assert!(count("allowed") >= 2.0, "{metrics}");
        assert_eq!(count("denied"), 2.0, "{metrics}");
    }
}
