//! Pooled upstream HTTP clients, shared by every cluster with the same settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
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
