//! Who a request comes from: its client connection and the Gateway listener it arrived on.

use std::net::SocketAddr;
use std::sync::Arc;

use super::activity::Activity;
use crate::model::Relay;

/// One client connection.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Requests and bytes on the connection, for the idle timeout.
    pub activity: Arc<Activity>,
    /// The TLS server name the client sent (lower case), on HTTPS listeners.
    pub sni: Option<Arc<str>>,
}

/// The Gateway listener a connection arrived on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: Arc<str>,
    /// The Gateway's port for this listener (not the local port, which may be offset).
    pub port: u16,
    /// Whether connections arrive over TLS.
    pub tls: bool,
    /// Set on listeners whose connections (or datagrams) an L4 route table relays.
    pub relay: Option<Relay>,
}

impl ListenerCtx {
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}
