//! Upstream connections: one pool per endpoint, split into one shard per worker so that a
//! request only ever uses connections owned by its own thread (no lock contention, no
//! cross-thread wake-ups). HTTP/1.1 connections are kept alive and reused one request at a
//! time; an HTTP/2 endpoint gets one multiplexed connection per worker, which carries the
//! client's :authority (not the endpoint's address).

mod buffered;
mod error;
pub mod health_check;
pub mod jwks_fetch;
pub mod outlier;
mod pool;
mod pools;
pub mod raw;
pub mod redis;
mod response_body;
mod send;
pub mod stream;
pub mod tls;

use bytes::Bytes;
use http_body_util::{Either, Full};
use std::sync::Arc;

use prometheus::{Histogram, IntCounter};

use crate::body::client::RequestBody;
use crate::observe::metrics::ProxyMetrics;
use crate::observe::upstream_stats::EndpointStats;

pub use buffered::{BUFFERED_BODY_LIMIT, BodyError, buffer_body};
pub use error::{ExchangeError, Overflow, UpstreamError};
pub use pool::{DEFAULT_IDLE_TIMEOUT, EndpointPool, PoolSettings, RawConn};
pub use pools::{ClusterTls, UpstreamPools};
pub use response_body::{ResponseBody, ResponseBodyError};

/// The wire protocol to the endpoints of a cluster (over TLS when the cluster has TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    H2c,
}

/// What the proxy sends upstream: the client's body streamed through, or a buffered one
/// (mirrors, retries).
pub type UpstreamBody = Either<RequestBody, Full<Bytes>>;

/// Connection counters of one endpoint.
#[derive(Debug, Clone)]
pub struct PoolStats {
    /// Shared by every pool of the endpoint's address.
    pub endpoint: Arc<EndpointStats>,
    /// Requests (HTTP/2: streams) each connection carried, observed when it closes.
    pub requests_per_connection: Histogram,
    /// Requests the general path sent on raw connections ([`raw`]).
    pub raw_requests: IntCounter,
}

impl PoolStats {
    /// The series of one endpoint, reached with `protocol`.
    pub fn new(
        metrics: &ProxyMetrics,
        endpoint: Arc<EndpointStats>,
        protocol: Protocol,
    ) -> PoolStats {
        let protocol = match protocol {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2",
        };
        PoolStats {
            endpoint,
            requests_per_connection: metrics
                .requests_per_connection
                .with_label_values(&[protocol]),
            raw_requests: metrics.upstream_raw_requests.clone(),
        }
    }
}
