//! The discovery client: keeps one stream to the controller, applies each response and ACKs
//! or NACKs it. On disconnect it keeps serving and reconnects with capped, jittered backoff,
//! presenting the versions it holds so the controller sends only what changed.

use std::time::Duration;

use rauta_common::api::v1::discovery_client::DiscoveryClient;
use rauta_common::api::v1::{DeltaDiscoveryRequest, ErrorDetail, Node};
use rauta_common::types::{ResourceType, WILDCARD};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::applier::Applier;
use crate::metrics::ProxyMetrics;

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

pub struct XdsClient {
    controller: String,
    node: Node,
    max_backoff: Duration,
    metrics: ProxyMetrics,
}

impl XdsClient {
    pub fn new(
        controller: String,
        node: Node,
        max_backoff: Duration,
        metrics: ProxyMetrics,
    ) -> Self {
        XdsClient {
            controller,
            node,
            max_backoff,
            metrics,
        }
    }

    /// Runs forever.
    pub async fn run(self, mut applier: Applier) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let mut received = false;
            match self.stream_once(&mut applier, &mut received).await {
                Ok(()) => info!("controller closed the discovery stream"),
                Err(err) => {
                    warn!(controller = %self.controller, %err, "discovery stream failed; serving the last good configuration")
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
        applier: &mut Applier,
        received: &mut bool,
    ) -> Result<(), StreamError> {
        let endpoint = Endpoint::from_shared(self.controller.clone())
            .map_err(StreamError::Address)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(StreamError::Connect)?;
        let mut client = DiscoveryClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
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
        info!(controller = %self.controller, "discovery stream open");
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
                Err(message) => {
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
