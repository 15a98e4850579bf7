//! Every fuzz target's committed corpus (fuzz/seeds/TARGET: seeds from the tests, and inputs
//! that once failed) replayed through the target's entry point, so the test suite catches a
//! regression on them without cargo-fuzz. The differential target also checks that the fast
//! path and hyper agree on every seed.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus for {target}");
    inputs
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
    }
}

#[test]
fn http1_request_head() {
    replay("http1_request_head", rauta_proxy::fuzz::http1_request_head);
}

#[test]
fn http1_chunked() {
    replay("http1_chunked", rauta_proxy::fuzz::http1_chunked);
}

#[test]
fn http1_response() {
    replay("http1_response", rauta_proxy::fuzz::http1_response);
}

#[test]
fn http1_connection() {
    replay("http1_connection", rauta_proxy::fuzz::http1_connection);
}

#[test]
fn http1_differential() {
    replay("http1_differential", rauta_proxy::fuzz::http1_differential);
}

#[test]
fn hpack() {
    replay("hpack", rauta_proxy::fuzz::hpack);
}

#[test]
fn http2_connection() {
    replay("http2_connection", rauta_proxy::fuzz::http2_connection);
}

#[test]
fn snapshot() {
    rauta_proxy::fuzz::snapshot(&rauta_proxy::fuzz::snapshot_seed());
    replay("snapshot", rauta_proxy::fuzz::snapshot);
}

#[test]
fn controller_yaml() {
    replay("controller_yaml", rauta_controller::fuzz::yaml);
}

#[test]
fn credentials() {
    replay("credentials", rauta_proxy::fuzz::credentials);
}
