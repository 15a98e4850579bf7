//! Helpers for RAUTA's end-to-end tests: the echo backend's pure parts and a harness that
//! starts the real binaries on 127.0.0.1.

pub mod backend;
pub mod conformance;
pub mod echo;
pub mod fake_kube;
pub mod grpc_dynamic;
pub mod harness;
pub mod jwt;
pub mod l4_echo;
pub mod manifests;
pub mod proc_stats;
pub mod raw_h2;
pub mod redis;
