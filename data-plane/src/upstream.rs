//! Pooled upstream HTTP clients, shared by every cluster with the same settings, and the
//! request bodies held in memory to be sent more than once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The wire protocol to the endpoints of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    H2c,
}

/// What the proxy sends upstream: the client's body streamed through, or a buffered one
/// (mirrored requests).
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

pub type HttpClient = Client<HttpConnector, UpstreamBody>;

/// Clients keyed by protocol and connect timeout, so pools survive snapshot swaps.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: HashMap<(Protocol, Duration), Arc<HttpClient>>,
}

impl ClientCache {
    pub fn get(&mut self, protocol: Protocol, connect_timeout: Duration) -> Arc<HttpClient> {
        Arc::clone(
            self.clients
                .entry((protocol, connect_timeout))
                .or_insert_with(|| {
                    let mut connector = HttpConnector::new();
                    connector.set_nodelay(true);
                    connector.set_connect_timeout(Some(connect_timeout));
                    let mut builder = Client::builder(TokioExecutor::new());
                    builder
                        .timer(TokioTimer::new())
                        .pool_timer(TokioTimer::new())
                        .pool_idle_timeout(Duration::from_secs(90));
                    if protocol == Protocol::H2c {
                        builder.http2_only(true);
                    }
                    Arc::new(builder.build(connector))
                }),
        )
    }
}

/// Largest request body held in memory to be sent more than once (mirrors, retries).
pub const BUFFERED_BODY_LIMIT: u64 = 64 * 1024;
/// Longest wait for a small body to arrive before it is forwarded.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body: {0}")]
    Read(hyper::Error),
    #[error("the request body did not arrive in time")]
    TimedOut,
}

/// Reads a small body into memory so it can be sent more than once. Returns the body to
/// forward, and the bytes for the copies (`None`: too large or of unknown size; it is streamed once, not mirrored or retried).
pub async fn buffer_body(incoming: Incoming) -> Result<(UpstreamBody, Option<Bytes>), BodyError> {
    if incoming.is_end_stream() {
        return Ok((Either::Right(Full::new(Bytes::new())), Some(Bytes::new())));
    }
    if incoming
        .size_hint()
        .upper()
        .is_none_or(|n| n > BUFFERED_BODY_LIMIT)
    {
        return Ok((Either::Left(incoming), None));
    }
    let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, incoming.collect())
        .await
        .map_err(|_| BodyError::TimedOut)?
        .map_err(BodyError::Read)?
        .to_bytes();
    Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
}
