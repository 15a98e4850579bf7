//! rauta-proxy: the data plane.
//!
//! Data flows one way: `xds` (stream) → `applier` (validate, `store`, build `routing` state,
//! open `listeners`) → `shared` (one atomic swap) → `proxy` (request path).

pub mod access_log;
pub mod admin;
pub mod applier;
pub mod cluster;
pub mod config_dump;
pub mod cors;
pub mod filters;
#[doc(hidden)]
pub mod fuzz;
pub mod h1;
pub mod http2;
pub mod limits;
pub mod listeners;
pub mod maglev;
pub mod metrics;
pub mod mirror;
pub mod outlier;
pub mod passthrough;
pub mod proxy;
pub mod raw_stream;
pub mod retry_budget;
pub mod route_stats;
pub mod routing;
pub mod session;
pub mod shared;
pub mod store;
pub mod tls;
pub mod trace;
pub mod upgrade;
pub mod upstream;
pub mod upstream_raw;
pub mod upstream_tls;
pub mod workers;
pub mod xds;
