//! TLS connections to Gateways that do not speak HTTP first: the `tls_connection_rejected`
//! kind (upstream `tls.MakeTLSConnectionAndExpectEventuallyConnectionRejection`), a
//! ClientHello with SNI that a TLS Passthrough listener must refuse by closing or resetting
//! the connection.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How one connection attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// The peer closed (end of file) or reset the connection during connect or handshake:
    /// what upstream counts as a rejection.
    Rejected,
    /// Anything else (a completed handshake, an alert, a certificate error, a refused
    /// connection, a timeout), retried.
    Other(String),
}

/// Classifies the error a connect or handshake ended with.
fn classify(error: &std::io::Error) -> Attempt {
    match error.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => Attempt::Rejected,
        _ => Attempt::Other(error.to_string()),
    }
}

/// TLS 1.2 or later, no ALPN, no client certificate; the system roots upstream trusts are
/// irrelevant to the verdict (a handshake that gets as far as the certificate did not
/// reject), so nothing is trusted.
fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    // The ring provider supports the default versions; fall back to the process default.
    Arc::new(config.unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }))
}

async fn attempt(socket: SocketAddr, server_name: &str) -> Attempt {
    let name = match rustls_pki_types::ServerName::try_from(server_name.to_owned()) {
        Ok(n) => n,
        Err(e) => return Attempt::Other(format!("server name {server_name:?}: {e}")),
    };
    let exchange = async {
        let tcp = match tokio::net::TcpStream::connect(socket).await {
            Ok(t) => t,
            Err(e) => return classify(&e),
        };
        match tokio_rustls::TlsConnector::from(client_config())
            .connect(name, tcp)
            .await
        {
            Ok(_) => Attempt::Other("the handshake completed".into()),
            Err(e) => classify(&e),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Attempt::Other("timed out".into()))
}

/// A `tls_connection_rejected` entry: attempts every second (the first after 1 s) until one
/// is rejected, for up to `timeout_s` (capped by `budget`).
pub async fn expect_rejection(
    spec: &Value,
    socket: SocketAddr,
    budget: Duration,
) -> Result<(), String> {
    let server_name = spec["server_name"]
        .as_str()
        .ok_or("tls_connection_rejected without server_name")?;
    let limit = Duration::from_secs(spec["timeout_s"].as_u64().unwrap_or(30)).min(budget);
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match attempt(socket, server_name).await {
            Attempt::Rejected => return Ok(()),
            Attempt::Other(why) if start.elapsed() >= limit => {
                return Err(format!(
                    "TLS connection with SNI {server_name} was not rejected: {why}"
                ));
            }
            Attempt::Other(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn only_end_of_file_and_reset_count_as_rejection() {
        let eof = std::io::Error::from(ErrorKind::UnexpectedEof);
        let reset = std::io::Error::from(ErrorKind::ConnectionReset);
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert_eq!(classify(&eof), Attempt::Rejected);
        assert_eq!(classify(&reset), Attempt::Rejected);
        assert!(matches!(classify(&refused), Attempt::Other(_)));
    }

    #[tokio::test]
    async fn a_server_that_closes_after_the_client_hello_rejects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut hello = [0u8; 512];
                let _ = tcp.read(&mut hello).await;
                drop(tcp);
            }
        });
        assert_eq!(attempt(addr, "non.matching.com").await, Attempt::Rejected);
        // Nothing listening: refused, which is not a rejection by the gateway.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(matches!(
            attempt(closed, "x.example").await,
            Attempt::Other(_)
        ));
    }
}
