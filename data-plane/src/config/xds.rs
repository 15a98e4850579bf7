//! The discovery client: keeps one stream to the controller, applies each response and ACKs
//! or NACKs it. On disconnect it keeps serving and reconnects with capped, jittered backoff,
//! presenting the versions it holds so the controller sends only what changed. Given several
//! controller addresses (replicas), each reconnection tries the next one, so a proxy whose
//! controller went away moves to another; every replica serves the same content, and resource
//! versions are content hashes, so the move costs only what changed.

use std::time::Duration;

use rauta_common::api::v1::discovery_client::DiscoveryClient;
use rauta_common::api::v1::{DeltaDiscoveryRequest, ErrorDetail, Node};
use rauta_common::types::{ResourceType, WILDCARD};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use std::sync::Arc;

use rauta_common::credentials::ReloadingToken;
use rustls_pki_types::ServerName;

use std::collections::HashMap;

use rauta_common::api::v1::DeltaDiscoveryResponse;

use crate::observe::metrics::ProxyMetrics;

/// What the discovery client hands each response to (the applier), as ztunnel's xDS client
/// talks to a handler: the client knows the protocol, not what the proxy does with resources.
pub trait ConfigHandler {
    /// Why a response is rejected; its text is the NACK's message.
    type Error: std::fmt::Display;

    /// Applies one response, or says why it is rejected; a rejected response changes nothing.
    fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), Self::Error>;

    /// The resources held of a type, by name, with their versions: presented on reconnect so
    /// the controller sends only what changed.
    fn known_versions(&self, ty: ResourceType) -> HashMap<String, String>;
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("invalid controller address: {0}")]
    Address(tonic::transport::Error),
    #[error("connecting: {0}")]
    Connect(tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("request channel closed")]
    Closed,
}

/// How the discovery connection is secured.
#[derive(Clone, Default)]
pub struct ChannelSecurity {
    /// TLS (mTLS when the config presents a client certificate) and the name the controller's
    /// certificate must carry. None: plaintext.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Bearer token sent with the stream.
    pub token: Option<Arc<ReloadingToken>>,
}

/// One controller address and how to reach it.
#[derive(Clone)]
pub struct ControllerAddress {
    /// http://HOST:PORT or https://HOST:PORT.
    pub url: String,
    pub security: ChannelSecurity,
}

pub struct XdsClient {
    /// Tried in turn: the first, then on each reconnection the next.
    controllers: Vec<ControllerAddress>,
    node: Node,
    max_backoff: Duration,
    metrics: ProxyMetrics,
}

impl XdsClient {
    /// `controllers` must not be empty.
    pub fn new(
        controllers: Vec<ControllerAddress>,
        node: Node,
        max_backoff: Duration,
        metrics: ProxyMetrics,
    ) -> Self {
        XdsClient {
            controllers,
            node,
            max_backoff,
            metrics,
        }
    }

    /// Runs forever.
    pub async fn run(self, mut applier: impl ConfigHandler) {
        let mut backoff = INITIAL_BACKOFF;
        for attempt in 0.. {
            let Some(controller) = self
                .controllers
                .get(attempt % self.controllers.len().max(1))
            else {
                warn!("no controller address: not connecting");
                return;
            };
            let mut received = false;
            match self
                .stream_once(controller, &mut applier, &mut received)
                .await
            {
                Ok(()) => {
                    info!(controller = %controller.url, "controller closed the discovery stream")
                }
                Err(err) => {
                    warn!(controller = %controller.url, %err, "discovery stream failed; serving the last good configuration")
                }
            }
            self.metrics.controller_connected.set(0);
            if received {
                backoff = INITIAL_BACKOFF;
            }
            // Full jitter in [backoff/2, backoff] keeps a fleet from reconnecting in lockstep.
            let half = backoff / 2;
            let sleep = half + half.mul_f64(rand::random::<f64>());
            debug!(?sleep, "reconnecting after backoff");
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    async fn stream_once(
        &self,
        controller: &ControllerAddress,
        applier: &mut impl ConfigHandler,
        received: &mut bool,
    ) -> Result<(), StreamError> {
        // TLS is done by our connector, so tonic sees a plain http:// endpoint.
        let address = match controller.url.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => controller.url.clone(),
        };
        let endpoint = Endpoint::from_shared(address)
            .map_err(StreamError::Address)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = match &controller.security.tls {
            Some((config, name)) => {
                let connector = tls_connector(Arc::clone(config), name.clone());
                endpoint.connect_with_connector(connector).await
            }
            None => endpoint.connect().await,
        }
        .map_err(StreamError::Connect)?;
        let token = controller.security.token.clone();
        let mut client =
            DiscoveryClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                if let Some(token) = &token {
                    let value = token.header_value().parse().map_err(|_| {
                        tonic::Status::internal("token is not a valid header value")
                    })?;
                    req.metadata_mut().insert("authorization", value);
                }
                Ok(req)
            })
            .max_decoding_message_size(256 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(ResourceType::ALL.len() * 2);
        for (i, ty) in ResourceType::ALL.into_iter().enumerate() {
            let request = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: ty.type_url().to_owned(),
                resource_names_subscribe: vec![WILDCARD.to_owned()],
                initial_resource_versions: applier.known_versions(ty),
                ..Default::default()
            };
            tx.send(request).await.map_err(|_| StreamError::Closed)?;
        }
        let mut inbound = client
            .delta_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        info!(controller = %controller.url, "discovery stream open");
        self.metrics.controller_connected.set(1);
        while let Some(response) = inbound.message().await? {
            *received = true;
            let short =
                ResourceType::parse(&response.type_url).map_or("unknown", |t| t.short_name());
            let error_detail = match applier.apply(&response) {
                Ok(()) => {
                    info!(ty = short, version = %response.system_version_info, resources = response.resources.len(), removed = response.removed_resources.len(), "applied");
                    self.metrics
                        .updates
                        .with_label_values(&[short, "ack"])
                        .inc();
                    None
                }
                Err(rejected) => {
                    let message = rejected.to_string();
                    warn!(ty = short, version = %response.system_version_info, %message, "rejected update (NACK); keeping the previous configuration");
                    self.metrics
                        .updates
                        .with_label_values(&[short, "nack"])
                        .inc();
                    Some(ErrorDetail {
                        code: tonic::Code::InvalidArgument as i32,
                        message,
                    })
                }
            };
            let ack = DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                error_detail,
                ..Default::default()
            };
            tx.send(ack).await.map_err(|_| StreamError::Closed)?;
        }
        Ok(())
    }
}

/// Connects to the controller over TLS: TCP to the URI's host and port, then a handshake that
/// checks the controller's certificate for `name` (and presents ours, for mTLS).
fn tls_connector(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let (connector, name) = (
            tokio_rustls::TlsConnector::from(Arc::clone(&config)),
            name.clone(),
        );
        async move {
            let host = uri
                .host()
                .unwrap_or("localhost")
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    })
}
