//! What grpcurl relies on: reflection (v1 and v1alpha) lists our services and serves every
//! file they need, health reports SERVING, and the admin service answers.

use prost::Message;
use rauta_common::api::v1::admin_client::AdminClient;
use rauta_common::api::v1::{GetSnapshotRequest, ListSnapshotsRequest};
use rauta_controller::server::{ServerOptions, serve_grpc};
use rauta_controller::state::ControllerState;
use tokio_stream::StreamExt;
use tonic_reflection::pb::{v1, v1alpha};

async fn start() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = ControllerState::new().unwrap();
    tokio::spawn(serve_grpc(listener, state, ServerOptions::plaintext()));
    url
}

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn reflect(
    url: &str,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel(url).await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    stream
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

async fn file_descriptors(
    url: &str,
    request: v1::server_reflection_request::MessageRequest,
) -> Vec<prost_types::FileDescriptorProto> {
    match reflect(url, request).await {
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(r) => r
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_services_and_resolves_every_dependency() {
    use v1::server_reflection_request::MessageRequest;
    let url = start().await;
    let services = match reflect(&url, MessageRequest::ListServices(String::new())).await {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(r) => {
            r.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    for want in [
        "rauta.v1.Discovery",
        "rauta.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == want),
            "{want} missing from {services:?}"
        );
    }
    // grpcurl describes a method by fetching the file of its service, then each import by name.
    let mut pending: Vec<String> = Vec::new();
    for file in file_descriptors(
        &url,
        MessageRequest::FileContainingSymbol("rauta.v1.Admin".into()),
    )
    .await
    {
        pending.extend(file.dependency);
    }
    assert!(
        pending
            .iter()
            .any(|d| d == "google/protobuf/timestamp.proto"),
        "{pending:?}"
    );
    let mut seen = Vec::new();
    while let Some(name) = pending.pop() {
        if seen.contains(&name) {
            continue;
        }
        let files = file_descriptors(&url, MessageRequest::FileByFilename(name.clone())).await;
        assert!(files.iter().any(|f| f.name() == name), "{name}");
        for f in files {
            pending.extend(f.dependency);
        }
        seen.push(name);
    }
    assert!(
        seen.iter().any(|s| s == "rauta/v1/resources.proto"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn reflection_v1alpha_and_health_answer() {
    let url = start().await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&url).await);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    assert!(format!("{resp:?}").contains("rauta.v1.Admin"));

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&url).await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "rauta.v1.Discovery".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn admin_reports_unknown_gateways_and_bad_arguments_clearly() {
    let url = start().await;
    let mut admin = AdminClient::connect(url).await.unwrap();
    assert!(
        admin
            .list_snapshots(ListSnapshotsRequest {})
            .await
            .unwrap()
            .into_inner()
            .snapshots
            .is_empty()
    );
    let err = admin
        .get_snapshot(GetSnapshotRequest {
            gateway: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = admin
        .get_snapshot(GetSnapshotRequest {
            gateway: "a/b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn token_guards_admin_and_reflection_can_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let options = ServerOptions {
        tls: None,
        auth: std::sync::Arc::new(rauta_controller::auth::Authenticator::shared_token(
            rauta_common::credentials::ReloadingToken::start(&token_file).unwrap(),
        )),
        reflection: false,
    };
    tokio::spawn(serve_grpc(
        listener,
        ControllerState::new().unwrap(),
        options,
    ));
    let ch = channel(&url).await;

    let status = AdminClient::new(ch.clone())
        .list_snapshots(ListSnapshotsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let mut authed = AdminClient::with_interceptor(ch.clone(), |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", "Bearer t0ken".parse().unwrap());
        Ok(req)
    });
    assert!(authed.list_snapshots(ListSnapshotsRequest {}).await.is_ok());

    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let status = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}
