//! Code shared by `rauta-controller` and `rauta-proxy`: the generated discovery API and the
//! protocol constants both sides must agree on.

pub mod accept;
pub mod api;
pub mod credentials;
pub mod fields;
pub mod hash;
pub mod jwks;
pub mod matching;
pub mod paths;
pub mod plain_http;
pub mod process;
pub mod redact;
pub mod types;
pub mod wire;
