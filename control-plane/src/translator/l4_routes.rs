//! Route tables of the listeners that relay connections or datagrams instead of serving HTTP:
//! TCP (TCPRoute), UDP (UDPRoute) and TLS in Terminate mode (TLSRoute). Their routes are
//! attached and compiled like the others (`route_view.rs` reads them in the HTTP rule shape,
//! matching everything); here each compiled rule becomes an `L4Route` that keeps only its
//! name, the server names it serves and its weighted backends.

use std::collections::BTreeMap;

use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{ForwardAction, L4Route, L4RouteTable, ListenerProtocol};

use super::routes::MatchEntry;

/// Whether a listener of this protocol takes an `L4RouteTable` rather than a `RouteTable`.
pub fn is_l4(protocol: ListenerProtocol) -> bool {
    matches!(
        protocol,
        ListenerProtocol::Tcp | ListenerProtocol::Udp | ListenerProtocol::TlsTerminate
    )
}

/// The resource name of a listener (and its table) on `port`.
pub fn listener_name(protocol: ListenerProtocol, port: u32) -> String {
    match protocol {
        ListenerProtocol::Tcp => format!("tcp-{port}"),
        ListenerProtocol::Udp => format!("udp-{port}"),
        _ => format!("tls-{port}"),
    }
}

/// The table of one port: per server name (in name order; "*" for TCP and UDP), its rules in
/// precedence order (the oldest route's first rule first). A rule that does not forward (no
/// usable backend) keeps its place with no cluster, so its connections are closed rather
/// than sent to the next route.
pub fn table(name: &str, vhosts: BTreeMap<String, Vec<MatchEntry>>) -> L4RouteTable {
    let mut routes = Vec::new();
    for (domain, mut entries) in vhosts {
        entries.sort();
        for entry in entries {
            let forward = match entry.rule.action {
                Some(Action::Forward(f)) => f,
                _ => ForwardAction {
                    clusters: Vec::new(),
                    invalid_weight: 1,
                },
            };
            routes.push(L4Route {
                name: entry.rule.name,
                server_names: vec![domain.clone()],
                forward: Some(forward),
            });
        }
    }
    L4RouteTable {
        name: name.to_owned(),
        routes,
    }
}
