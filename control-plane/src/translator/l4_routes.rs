//! Route tables of the listeners that relay connections or datagrams instead of serving HTTP:
//! TCP (TCPRoute), UDP (UDPRoute) and TLS (TLSRoute; in Passthrough mode, Terminate mode, or
//! both on one port, each route marked with its listener's mode). Their routes are
//! attached and compiled like the others (`route_view.rs` reads them in the HTTP rule shape,
//! matching everything); here each compiled rule becomes an `L4Route` that keeps only its
//! name, the server names it serves and its weighted backends.

use std::collections::{BTreeMap, BTreeSet};

use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{ForwardAction, L4Route, L4RouteTable, ListenerProtocol};

use super::routes::MatchEntry;

/// Whether a listener of this protocol takes an `L4RouteTable` rather than a `RouteTable`.
pub fn is_l4(protocol: ListenerProtocol) -> bool {
    matches!(
        protocol,
        ListenerProtocol::Tcp
            | ListenerProtocol::Udp
            | ListenerProtocol::TlsPassthrough
            | ListenerProtocol::TlsTerminate
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

/// The table of one port: its rules in precedence order (the oldest route's first rule first),
/// each with the server names it serves on this port ("*" for TCP and UDP). A rule serving
/// several names is one route (route names are unique in a table); on a port mixing TLS modes,
/// a rule attached through both a Passthrough and a Terminate listener is two, the passthrough
/// one named with a "/passthrough" suffix. A rule that does not forward (no usable backend)
/// keeps its place with no cluster, so its connections are closed rather than sent to the
/// next route.
pub fn table(name: &str, vhosts: BTreeMap<String, Vec<(MatchEntry, bool)>>) -> L4RouteTable {
    // A listener hostname no route serves still owns its names (listener isolation): a route
    // without backends closes their connections, before any handshake, rather than letting a
    // less specific listener's route take them.
    let unserved: Vec<L4Route> = vhosts
        .iter()
        .filter(|(_, entries)| entries.is_empty())
        .map(|(domain, _)| L4Route {
            name: format!("{name}/no-route/{domain}"),
            server_names: vec![domain.clone()],
            forward: Some(ForwardAction {
                clusters: Vec::new(),
                invalid_weight: 1,
            }),
            passthrough: true,
        })
        .collect();
    let mut entries: Vec<(MatchEntry, bool, String)> = vhosts
        .into_iter()
        .flat_map(|(domain, entries)| {
            entries
                .into_iter()
                .map(move |(e, p)| (e, p, domain.clone()))
        })
        .collect();
    // Stable: a rule's names stay in name order.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let terminated: BTreeSet<String> = entries
        .iter()
        .filter(|(_, passthrough, _)| !passthrough)
        .map(|(e, _, _)| e.rule.name.clone())
        .collect();
    let mut routes: Vec<L4Route> = Vec::new();
    for (entry, passthrough, domain) in entries {
        let name = match passthrough && terminated.contains(&entry.rule.name) {
            true => format!("{}/passthrough", entry.rule.name),
            false => entry.rule.name,
        };
        if let Some(route) = routes.iter_mut().find(|r| r.name == name) {
            if !route.server_names.contains(&domain) {
                route.server_names.push(domain);
            }
            continue;
        }
        let forward = match entry.rule.action {
            Some(Action::Forward(f)) => f,
            _ => ForwardAction {
                clusters: Vec::new(),
                invalid_weight: 1,
            },
        };
        routes.push(L4Route {
            name,
            server_names: vec![domain],
            forward: Some(forward),
            passthrough,
        });
    }
    routes.extend(unserved);
    L4RouteTable {
        name: name.to_owned(),
        routes,
    }
}
