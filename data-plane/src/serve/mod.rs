//! Serving clients: connections accepted per listener (`accept`), and each request on one of
//! three paths that share routing (`crate::model`) and attempt bookkeeping (`attempt`):
//!
//! - the HTTP/1.1 fast path (`h1`), which parses heads in place and writes the upstream's
//!   request straight from the client's fields, for rules whose filters it implements;
//! - the HTTP/2 fast path (`http2::fast`): HTTP/2 requests without a body, planned by the same
//!   planner as HTTP/1.1;
//! - the general path (`general`, `forward`, `cached` for rules with a response cache,
//!   `global_limit` for rules with global rate limits) for everything else, through hyper's
//!   types.
//!
//! Also the proxy's own HTTP/2 server (`http2`), the TCP, TLS and UDP relays, and protocol upgrades.

pub mod accept;
pub mod activity;
pub mod attempt;
pub mod authenticate;
pub mod cached;
pub mod client_hello;
pub mod context;
pub mod copy;
pub mod ext_auth;
mod ext_auth_answer;
mod ext_authz_grpc;
pub mod forward;
pub mod general;
pub mod global_limit;
pub mod h1;
pub mod headers;
pub mod http2;
pub mod local_reply;
pub mod mirror;
pub mod relay;
pub mod request_log;
pub mod rewind;
pub mod traffic;
pub mod udp;
pub mod upgrade;
