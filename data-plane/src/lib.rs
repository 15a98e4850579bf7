//! rauta-proxy: the data plane. Data flows one way, and the folders are its stages:
//!
//! - `config` — the discovery client (`xds`) streams snapshots from the controller; the
//!   applier validates each into a new `model` and publishes it with one atomic swap into
//!   `shared`, and opens or closes listeners to match.
//! - `model` — the immutable runtime state built from a snapshot: route tables, rules (matches,
//!   action, filters), clusters and their endpoint pickers. Validated when built, so the
//!   request path never fails on configuration.
//! - `serve` — accepting connections and serving requests: the general path, the HTTP/1.1 and
//!   HTTP/2 fast paths, the proxy's own HTTP/2 server, the TCP, TLS and UDP relays. Reads `shared`.
//! - `upstream` — connection pools per endpoint, the raw HTTP/1.1 client, upstream TLS.
//!
//! Underneath: `codec` (HTTP/1.1 and HTTP/2 wire formats), `body` (request bodies between a
//! client and an upstream), `observe` (metrics, access log, trace context), `limits` and
//! `workers`. Beside: `kernel` (the XDP fast path: its program's maps follow the routing
//! state) and `admin` (the admin port). A module only imports from its own stage, from
//! an earlier one or from underneath; `tests/tests/architecture.rs` checks it.

pub mod admin;
pub mod body;
pub mod codec;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod kernel;
pub mod limits;
pub mod model;
pub mod observe;
pub mod serve;
pub mod shared;
pub mod upstream;
pub mod workers;
