//! The server name of a TLS connection, read from its ClientHello before any handshake: TLS
//! listeners route by it (`relay.rs`), passing the connection through untouched or terminating
//! it as its route says.

use std::time::Duration;

use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest wait for the ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
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
        let extensions = match hello.ext.map(tls_parser::parse_tls_client_hello_extensions) {
            None => return Hello::NoServerName,
            Some(Ok((_, extensions))) => extensions,
            // Extensions that do not parse: nothing to route by, not a nameless client.
            Some(Err(_)) => return Hello::Unroutable,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
