//! A cluster-less replay of the upstream Gateway API conformance suite (HTTP side): the
//! `rauta-conformance` binary. See tests/conformance/upstream/README.md for the case format.

pub mod case;
pub mod certs;
pub mod http;
pub mod l4;
pub mod runner;
pub mod status;
pub mod world;
