//! rauta-controller: reads Gateway API objects, translates them into per-Gateway snapshots
//! and streams those to proxies.
//!
//! Data flows one way: `source` → `translator` → `cache` (snapshots) → `discovery` (gRPC).

pub mod admin;
pub mod auth;
pub mod cache;
pub mod crds;
pub mod discovery;
pub mod discovery_server;
#[doc(hidden)]
pub mod fuzz;
pub mod held;
pub mod inspect;
pub mod kube_status;
pub mod leader;
pub mod managed_tls;
pub mod metrics;
pub mod objects;
pub mod proxy_report;
pub mod publish;
pub mod registry;
pub mod replicas;
pub mod server;
pub mod session_keys;
pub mod snapshot;
pub mod source;
pub mod standalone;
pub mod state;
pub mod status_files;
pub mod status_store;
pub mod translator;
