//! `expect` entries other than HTTP requests (README.md, "Non-HTTP expectation kinds"): where
//! each kind goes. A kind this runner does not know fails the case rather than passing it.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::case::{Case, NsName};
use super::world::World;
use super::{grpc, l4, tls};

/// The socket serving the entry's Gateway port, and the address a client would dial for it
/// ("<gateway address>:<port>", the default `:authority`).
fn dial_target(
    world: &mut World,
    case: &Case,
    spec: &Value,
) -> Result<(SocketAddr, String), String> {
    let gateway: NsName = match spec.get("gateway").filter(|g| !g.is_null()) {
        Some(g) => serde_json::from_value(g.clone()).map_err(|e| format!("gateway: {e}"))?,
        None => case
            .gateway
            .clone()
            .ok_or("expect entry without a gateway")?,
    };
    let port = spec["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("expect entry without a port")?;
    let socket = world.listener_addr(&gateway, port);
    Ok((socket, format!("{}:{port}", socket.ip())))
}

/// Runs one entry of `kind` (`spec` is the whole entry); `budget` caps upstream's waits.
pub async fn run(
    world: &mut World,
    case: &Case,
    kind: &str,
    spec: &Value,
    budget: Duration,
) -> Result<(), String> {
    let (socket, authority) = dial_target(world, case, spec)?;
    match (kind, spec["protocol"].as_str()) {
        ("grpc", _) => grpc::expect_call(spec, socket, &authority, budget).await,
        ("weighted_distribution", Some("grpc")) => {
            grpc::expect_distribution(spec, socket, &authority).await
        }
        ("tls_connection_rejected", _) => tls::expect_rejection(spec, socket, budget).await,
        (
            "tcp_echo" | "tcp_connect" | "tcp_echo_samples" | "udp_echo" | "udp_echo_samples"
            | "dns_query",
            _,
        )
        | ("weighted_distribution", Some("tcp" | "udp")) => {
            l4::run_expect(world, kind, spec, socket).await
        }
        (kind, protocol) => Err(format!(
            "expectation kind {kind:?} (protocol {protocol:?}) is not supported by this runner"
        )),
    }
    .map_err(|e| format!("{kind}: {e}"))
}
