//! Header fields with a meaning to the gateway itself, which the controller and the proxy
//! both need to recognise.

/// Fields that frame an HTTP/1.1 message or belong to one connection (RFC 9110 section 7.6.1,
/// RFC 9112 section 6), lower case.
pub const CONNECTION_FIELDS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Whether a session persistence token must not take this (lower-case) header name: a token
/// there would break the message, or other cookies.
pub fn reserved_for_session(name: &str) -> bool {
    CONNECTION_FIELDS.contains(&name) || matches!(name, "host" | "cookie" | "set-cookie")
}
