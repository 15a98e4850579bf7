//! What the controller and the proxy agree on about session persistence tokens.

/// Header names a session token must not take: framing, connection and cookie fields (a
/// token there would break the message or other sessions). The controller refuses them in a
/// route; the proxy refuses them in a snapshot.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
    "cookie",
    "set-cookie",
];
