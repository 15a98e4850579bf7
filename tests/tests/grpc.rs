//! GRPCRoute end to end: a real gRPC client calls a real gRPC server (grpc.health.v1) through
//! the proxy. The route matches on service and method, the backend is reached over HTTP/2
//! although its Service port says nothing about the protocol, gRPC status codes carried in
//! trailers come back intact, and an unmatched method is not routed.

use std::time::Duration;

use rauta_common::api::v1::ListStatusesRequest;
use rauta_tests::harness::{Workspace, eventually, start_gateway};
use rauta_tests::manifests::{documents, gateway, gateway_class, service};
use tonic::Code;
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: health, namespace: apps}
spec:
  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [grpc.example]
  rules:
  - matches:
    - method: {service: grpc.health.v1.Health, method: Check}
      headers: [{name: x-tenant, value: blue}]
    backendRefs: [{name: health, port: 8080}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_matches_service_method_and_keeps_trailers() {
    // The gRPC backend: the standard health service, h2c on a free port.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("rauta.test.Echo", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let ws = Workspace::new();
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "health", &[backend]),
            ROUTE.to_owned(),
        ]),
    );
    let (controller, proxy) = start_gateway(&ws, &[]).await;

    let channel = Endpoint::from_shared(format!("http://{}", proxy.listener(80)))
        .unwrap()
        .origin("http://grpc.example".parse().unwrap())
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let check = |service: &str, tenant: &str| {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        req.metadata_mut()
            .insert("x-tenant", tenant.parse().unwrap());
        req
    };

    let ok = client
        .check(check("rauta.test.Echo", "blue"))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status, ServingStatus::Serving as i32);

    // A gRPC error travels in the trailers (HTTP 200, grpc-status 5): it must arrive as sent.
    let err = client
        .check(check("no.such.Service", "blue"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // The header match and the method match both count: these reach no route (HTTP 404,
    // which gRPC clients see as UNIMPLEMENTED).
    let err = client
        .check(check("rauta.test.Echo", "green"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = client
        .watch(check("rauta.test.Echo", "blue"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // The route's status says it is accepted and its backend resolved.
    let admin = controller.admin().await;
    eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let objects = admin
                .list_statuses(ListStatusesRequest {
                    kind: "GRPCRoute".into(),
                    namespace: "apps".into(),
                    name: "health".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .objects;
            objects.first().is_some_and(|o| {
                let conds = &o.parents[0].conditions;
                ["Accepted", "ResolvedRefs"]
                    .iter()
                    .all(|t| conds.iter().any(|c| c.r#type == *t && c.status == "True"))
            })
        }
    })
    .await;
}
