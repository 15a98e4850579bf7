//! Pooled upstream HTTP clients, shared by every cluster with the same settings, and the
//! request bodies held in memory to be sent more than once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prost::Message;
use rauta_common::api::v1::UpstreamTls;

/// The wire protocol to the endpoints of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    H2c,
}

/// What the proxy sends upstream: the client's body streamed through, or a buffered one
/// (mirrored requests).
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// One client type for cleartext and TLS clusters: the connector speaks TLS for `https` URIs
/// only, so a cleartext cluster never touches its TLS settings.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Pool identity: protocol, connect timeout and a digest of the TLS settings.
type ClientKey = (Protocol, Duration, Option<u64>);

/// Clients keyed by their settings, so pools survive snapshot swaps that do not change them.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: HashMap<ClientKey, Arc<HttpClient>>,
}

impl ClientCache {
    /// The pooled client for these settings; `tls` set means the endpoints speak TLS.
    pub fn get(
        &mut self,
        protocol: Protocol,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<Arc<HttpClient>, String> {
        let key = (
            protocol,
            connect_timeout,
            tls.map(|t| rauta_common::hash::fnv1a64(&t.encode_to_vec())),
        );
        if let Some(client) = self.clients.get(&key) {
            return Ok(Arc::clone(client));
        }
        let config = match tls {
            Some(tls) => crate::upstream_tls::client_config(tls)?,
            None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS versions: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let https = match tls {
            Some(t) => {
                let name = rustls_pki_types::ServerName::try_from(t.server_name.clone())
                    .map_err(|e| format!("server_name {:?}: {e}", t.server_name))?;
                https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => https,
        };
        let connector = match protocol {
            Protocol::Http1 => https.enable_http1().wrap_connector(http),
            Protocol::H2c => https.enable_http2().wrap_connector(http),
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
        if protocol == Protocol::H2c {
            builder.http2_only(true);
        }
        let client = Arc::new(builder.build(connector));
        self.clients.insert(key, Arc::clone(&client));
        Ok(client)
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
