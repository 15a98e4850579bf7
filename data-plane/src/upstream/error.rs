//! Why an upstream exchange failed.

use std::net::SocketAddr;
use std::time::Duration;

use crate::codec::h1::response::BadResponse;

/// Why a request could not be sent upstream or got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("connecting to {addr}: failed while this request waited for it")]
    ConnectFailedMeanwhile { addr: SocketAddr },
    #[error("request to {addr}: {source}")]
    Request {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {addr}: {source}")]
    Exchange {
        addr: SocketAddr,
        source: ExchangeError,
    },
}

impl UpstreamError {
    /// No connection could be made (as opposed to a failure on an open connection).
    pub fn is_connect(&self) -> bool {
        !matches!(
            self,
            UpstreamError::Request { .. } | UpstreamError::Exchange { .. }
        )
    }
}

/// Why a raw exchange failed before the response head was read.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the response head")]
    Closed,
    #[error(transparent)]
    Response(#[from] BadResponse),
    #[error("invalid response field")]
    Field,
}
