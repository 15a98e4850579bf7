//! The controller's gRPC server: discovery, admin, reflection and health on one port, over
//! TLS or mTLS (certificates reloaded on rotation) or, when asked for, plaintext; discovery and
//! admin calls are authenticated and authorised (auth.rs).

use std::sync::Arc;
use std::time::Duration;

use rauta_common::accept::AcceptBackoff;
use rauta_common::api::FILE_DESCRIPTOR_SET;
use rauta_common::api::v1::admin_server::AdminServer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::admin::AdminService;
use crate::auth::{Authenticator, Guarded};
use crate::discovery::DiscoveryService;
use crate::discovery_server::DiscoveryServer;
use crate::state::ControllerState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How the gRPC port is secured and what it offers.
#[derive(Clone)]
pub struct ServerOptions {
    /// TLS, with client certificates required when the config has a client verifier (mTLS).
    /// None: plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Who may call Discovery and Admin, and for what.
    pub auth: Arc<Authenticator>,
    /// Serve gRPC reflection (what grpcurl uses to find the services).
    pub reflection: bool,
}

impl ServerOptions {
    /// Plaintext, no token, reflection on: the standalone quickstart and tests.
    pub fn plaintext() -> Self {
        ServerOptions {
            tls: None,
            auth: Arc::new(Authenticator::none()),
            reflection: true,
        }
    }
}

/// Responses go out as several writes (a header, then shared resource bytes): without
/// TCP_NODELAY the second write waits for the peer's delayed ACK, some 40 ms.
fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Longest time a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections, with TCP_NODELAY; accept errors back off rather than spin.
fn accepted(listener: TcpListener) -> ReceiverStream<TcpStream> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => break,
            };
            match accepted {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    no_delay(&stream);
                    if tx.send(stream).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    backoff.failed().await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Accepted connections after their TLS handshake; failed handshakes are dropped (and logged
/// at debug) without holding up the others.
fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut incoming = accepted(listener);
    tokio::spawn(async move {
        while let Some(stream) = incoming.next().await {
            let peer = stream.peer_addr().ok();
            let (acceptor, handshaken) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = handshaken.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(?peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Serves until the listener fails.
pub async fn serve_grpc(
    listener: TcpListener,
    state: ControllerState,
    options: ServerOptions,
) -> Result<(), ServerError> {
    let ControllerState {
        cache,
        registry,
        statuses,
        metrics,
    } = state;
    let (reflection_v1, reflection_v1alpha) = if options.reflection {
        (
            Some(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .build_v1()?,
            ),
            Some(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .build_v1alpha()?,
            ),
        )
    } else {
        (None, None)
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<DiscoveryServer>().await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;

    let auth = options.auth;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(Guarded::new(
            DiscoveryServer::new(DiscoveryService::new(
                Arc::clone(&cache),
                Arc::clone(&registry),
                metrics,
                Arc::clone(&auth),
            )),
            Arc::clone(&auth),
            false,
        ))
        .add_service(Guarded::new(
            AdminServer::new(AdminService::new(cache, registry, statuses)),
            auth,
            true,
        ))
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(health);
    match options.tls {
        Some(config) => {
            router
                .serve_with_incoming(tls_incoming(listener, config))
                .await?
        }
        None => {
            let incoming = accepted(listener).map(Ok::<_, std::io::Error>);
            router.serve_with_incoming(incoming).await?
        }
    }
    Ok(())
}
