//! Limits on what a client may send: header size and count (hyper answers 431), request body
//! size (413), how long a connection may sit idle before it is closed, how slowly a request
//! body may arrive (408), and how long a response may wait for the client to read it.

use std::time::Duration;

/// The proxy's request limits (flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers), bytes; at least 8192.
    pub max_header_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
    /// Largest request body, bytes; `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for a request's head once its first byte arrived (HTTP/1.1), or for a
    /// header block to be complete (HTTP/2): a client that trickles them (slowloris) is cut
    /// off.
    pub header_timeout: Duration,
    /// How long the proxy may wait for a request body's bytes, in all (with a minimum rate)
    /// or between two reads (without one); then the request fails with 408.
    pub client_body_timeout: Duration,
    /// Each octet of request body received extends `client_body_timeout` by 1/rate seconds
    /// (Apache's mod_reqtimeout MinRate): a body trickled slower than this runs out of time.
    /// 0: the timeout is between two reads instead (nginx's client_body_timeout).
    pub client_body_min_rate: u64,
    /// A write to the client that makes no progress for this long ends the connection, and an
    /// HTTP/2 stream that waits this long for flow-control window is reset.
    pub send_timeout: Duration,
    /// Client connections each worker serves at once; 0: unlimited.
    pub max_connections_per_worker: usize,
    /// A UDP client flow with no datagram either way for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// UDP client flows kept at once, over all UDP listeners and workers.
    pub udp_max_flows: usize,
    /// A relayed TCP connection with no byte either way for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            idle_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(30),
            client_body_timeout: Duration::from_secs(60),
            client_body_min_rate: 500,
            send_timeout: Duration::from_secs(60),
            max_connections_per_worker: 0,
            udp_idle_timeout: Duration::from_secs(60),
            udp_max_flows: 10_000,
            tcp_idle_timeout: Duration::from_secs(3600),
        }
    }
}
