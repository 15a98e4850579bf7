//! The controller's gRPC server: discovery, admin, reflection and health on one port.

use std::sync::Arc;

use rauta_common::api::FILE_DESCRIPTOR_SET;
use rauta_common::api::v1::admin_server::AdminServer;
use rauta_common::api::v1::discovery_server::DiscoveryServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::AdminService;
use crate::discovery::DiscoveryService;
use crate::state::ControllerState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until the listener fails.
pub async fn serve_grpc(listener: TcpListener, state: ControllerState) -> Result<(), ServerError> {
    let ControllerState {
        cache,
        registry,
        statuses,
        metrics,
    } = state;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DiscoveryServer<DiscoveryService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;

    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(DiscoveryServer::new(DiscoveryService::new(
            Arc::clone(&cache),
            Arc::clone(&registry),
            metrics,
        )))
        .add_service(AdminServer::new(AdminService::new(
            cache, registry, statuses,
        )))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
