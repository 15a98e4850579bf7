//! One GET of a JWK Set (JWT providers' `remote_jwks`): over HTTP/1.1, on a connection of its
//! own (fetches are minutes apart), TLS for https URLs checked against the Web PKI roots,
//! within [`FETCH_TIMEOUT`] and [`MAX_DOCUMENT_BYTES`].

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Longest a fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWK Set taken.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not an http or https URL with a host")]
    Uri(String),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
}

static WEB_PKI: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    // The ring provider supports the default versions; a failure here would be a build bug.
    Arc::new(config.unwrap_or_else(|e| panic!("rustls client config: {e}")))
});

/// The body of a 200 answer to a GET of `uri`.
pub async fn fetch(uri: &Uri) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, get(uri))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn get(uri: &Uri) -> Result<Bytes, FetchError> {
    let bad_uri = || FetchError::Uri(uri.to_string());
    let host = uri.host().ok_or_else(bad_uri)?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_uri()),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // An IPv6 literal comes bracketed in URLs, not in socket addresses.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(FetchError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return exchange(tcp, uri).await;
    }
    let name = ServerName::try_from(bare.to_owned()).map_err(|_| bad_uri())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&WEB_PKI))
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(e.to_string()))?;
    exchange(stream, uri).await
}

async fn exchange<S>(stream: S, uri: &Uri) -> Result<Bytes, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: &dyn std::fmt::Display| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(target)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    if resp.status() != StatusCode::OK {
        return Err(FetchError::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|e| http(&*e))?;
    Ok(body.to_bytes())
}
