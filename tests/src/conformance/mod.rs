//! A cluster-less replay of the upstream Gateway API conformance suite (HTTP, gRPC and TLS
//! routes, Gateways, ListenerSets): the `rauta-conformance` binary. See
//! tests/conformance/upstream/README.md for the case format.

pub mod case;
pub mod certs;
pub mod grpc;
pub mod http;
pub mod kinds;
pub mod l4;
pub mod report;
pub mod runner;
pub mod status;
pub mod tls;
pub mod world;
