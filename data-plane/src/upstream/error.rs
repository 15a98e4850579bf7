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
    #[error("request to {addr}: circuit breaker {limit}")]
    Overflow { addr: SocketAddr, limit: Overflow },
}

/// Which circuit-breaker limit refused a request: its text goes to the client in the 503's
/// body and `x-rauta-overflow` header, and labels the overflow metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    ConnectionsPerEndpoint,
    Requests,
    RequestsPerEndpoint,
    Retries,
}

impl Overflow {
    pub fn name(self) -> &'static str {
        match self {
            Overflow::ConnectionsPerEndpoint => "max_connections_per_endpoint",
            Overflow::Requests => "max_requests",
            Overflow::RequestsPerEndpoint => "max_requests_per_endpoint",
            Overflow::Retries => "max_retries",
        }
    }

    /// The 503's body.
    pub fn body(self) -> &'static [u8] {
        match self {
            Overflow::ConnectionsPerEndpoint => {
                b"upstream overflow: max_connections_per_endpoint reached\n"
            }
            Overflow::Requests => b"upstream overflow: max_requests reached\n",
            Overflow::RequestsPerEndpoint => {
                b"upstream overflow: max_requests_per_endpoint reached\n"
            }
            Overflow::Retries => b"upstream overflow: max_retries reached\n",
        }
    }
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl UpstreamError {
    /// No connection could be made (as opposed to a failure on an open connection).
    /// The circuit-breaker limit that refused the request, if one did (not the endpoint's
    /// failure: outlier detection does not count it).
    pub fn overflow(&self) -> Option<Overflow> {
        match self {
            UpstreamError::Overflow { limit, .. } => Some(*limit),
            _ => None,
        }
    }

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
