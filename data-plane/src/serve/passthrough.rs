//! TLS passthrough (TLSRoute): a connection is routed by the server name in its ClientHello and
//! relayed to an endpoint untouched; the proxy never sees the plaintext.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::model::rule::Pick;
use crate::serve::context::ListenerCtx;
use crate::shared::Shared;

/// Longest wait for the ClientHello, and for the upstream connection.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A TLS record header plus the largest plaintext record (RFC 8446 section 5.1).
const MAX_HELLO: usize = 5 + (1 << 14);

/// What the bytes read so far say about the server name.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The first record is not complete yet.
    Incomplete,
    /// A ClientHello with this server name (lower case).
    ServerName(String),
    /// A ClientHello without a server name (a client connecting by address).
    NoServerName,
    /// Not a ClientHello.
    Unroutable,
}

/// Reads the server name from the first TLS record, if it holds a whole ClientHello.
pub fn server_name(buf: &[u8]) -> Hello {
    if buf.len() < 5 {
        return Hello::Incomplete;
    }
    if buf[0] != 22 {
        return Hello::Unroutable; // Not a handshake record.
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + len {
        return Hello::Incomplete;
    }
    let Ok((_, record)) = tls_parser::parse_tls_plaintext(&buf[..5 + len]) else {
        return Hello::Unroutable;
    };
    for msg in &record.msg {
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = msg else {
            continue;
        };
        let Some(Ok((_, extensions))) =
            hello.ext.map(tls_parser::parse_tls_client_hello_extensions)
        else {
            return Hello::NoServerName;
        };
        for ext in extensions {
            if let TlsExtension::SNI(names) = ext
                && let Some((_, name)) = names.first()
                && let Ok(name) = std::str::from_utf8(name)
            {
                return Hello::ServerName(name.to_ascii_lowercase());
            }
        }
        return Hello::NoServerName;
    }
    Hello::Unroutable
}

/// The bytes of a connection's first TLS record, read until it holds a whole ClientHello,
/// and the server name in it (`None`: a ClientHello without one). `None` when the client
/// sends something else, closes, or takes longer than [`HELLO_TIMEOUT`].
pub async fn read_client_hello(client: &mut TcpStream) -> Option<(Vec<u8>, Option<String>)> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            match server_name(&buf) {
                Hello::Incomplete if buf.len() < MAX_HELLO => {}
                Hello::ServerName(name) => return Some(Some(name)),
                Hello::NoServerName => return Some(None),
                _ => return None,
            }
            let mut chunk = [0u8; 2048];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let name = tokio::time::timeout(HELLO_TIMEOUT, read).await.ok()??;
    Some((buf, name))
}

/// Serves one passthrough connection: reads the ClientHello, picks a backend by its server
/// name, replays the bytes read so far and relays both ways until either side closes.
pub async fn serve(
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let Some((buf, Some(name))) = read_client_hello(&mut client).await else {
        debug!(%peer, listener = %ctx.name, "no routable ClientHello; closing");
        return;
    };
    let endpoint = {
        let state = shared.state.load();
        let rule = state
            .route_table(&ctx.name)
            .and_then(|t| t.virtual_host(&name))
            .and_then(|v| v.first_rule());
        let Some(rule) = rule else {
            debug!(%peer, %name, "no TLSRoute for this server name; closing");
            return;
        };
        let Pick::Backend(backend) = rule.action.pick(rand::random()) else {
            return;
        };
        let Some(endpoint) = backend
            .cluster
            .as_ref()
            .and_then(|c| c.pick(peer.ip(), crate::model::request::RequestHeaders::Raw(&[])))
        else {
            debug!(%peer, %name, "no ready endpoint; closing");
            return;
        };
        endpoint.addr
    };
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await;
    let Ok(Ok(mut upstream)) = upstream else {
        debug!(%peer, %endpoint, "upstream connect failed; closing");
        return;
    };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&buf).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name_once_the_record_is_complete() {
        let hello = client_hello("Passthrough.Example.com");
        assert_eq!(server_name(&hello[..3]), Hello::Incomplete);
        assert_eq!(server_name(&hello[..hello.len() - 1]), Hello::Incomplete);
        assert_eq!(
            server_name(&hello),
            Hello::ServerName("passthrough.example.com".into())
        );
    }

    #[test]
    fn plaintext_is_unroutable_and_nameless_hellos_are_told_apart() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), Hello::Unroutable);
        // An IP address is never sent as SNI.
        assert_eq!(server_name(&client_hello("127.0.0.1")), Hello::NoServerName);
    }
}
