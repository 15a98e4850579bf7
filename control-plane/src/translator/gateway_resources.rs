//! A Gateway's resources: listeners sharing a port share one proxy socket, so they become one
//! `Listener` and one `RouteTable` per port (a virtual host per hostname; an `L4RouteTable` for
//! TCP, UDP and TLS Terminate ports, `l4_routes.rs`), plus the `Cluster` of every backend
//! their routes use (`backends::EndpointIndex` fills in their endpoints).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{
    ClientCertificate, ClientValidation, Listener, ListenerPolicies, ListenerProtocol,
    RequestPolicies, ServerCertificate,
};
use rauta_common::types::ResourceType;

use super::hostnames;
use super::l4_routes;
use super::listeners::ListenerView;
use super::output::ResourceSet;
use super::route_rules::{self, Placed, RulesMemo};
use super::routes::CompiledRoute;

/// The Gateway listeners sharing one port (and so one proxy socket).
struct PortListeners<'a> {
    protocol: ListenerProtocol,
    hostnames: Vec<String>,
    /// What each attached route contributes. Placed in virtual hosts once every listener of
    /// the port is known, because listener isolation depends on all of them.
    contributions: Vec<Contribution<'a>>,
    certificates: Vec<ServerCertificate>,
    client_validation: Option<ClientValidation>,
    /// The policies attached to each listener (by hostname) or to the Gateway.
    policies: Vec<ListenerPolicies>,
}

/// What one route contributes to one domain of a port. Borrowed from the listener it
/// attached to: thousands of routes, each placed on every translation.
struct Contribution<'a> {
    /// Hostname of the listener it attached to (lower case).
    listener: Option<Rc<str>>,
    /// The virtual-host domain (L4: server name).
    domain: &'a str,
    /// Attached through a TLS Passthrough listener.
    passthrough: bool,
    compiled: &'a Arc<CompiledRoute>,
    /// `compiled.kernel_candidates`, read here while the route's backends are: asking each
    /// compiled route again later costs a cache miss a route.
    kernel_candidates: bool,
}

/// The served listeners of one Gateway, by port and transport (UDP or not): a TCP and a UDP
/// listener may share a port number, as their sockets do.
#[derive(Default)]
pub struct Ports<'a>(BTreeMap<(u32, bool), PortListeners<'a>>);

/// Which protocols one proxy socket serves together: TLS Passthrough and Terminate listeners
/// on one port become one TLS Terminate socket whose passthrough routes are relayed untouched
/// (TLSRouteModeMixed). `None`: they cannot share it.
fn shared_protocol(a: ListenerProtocol, b: ListenerProtocol) -> Option<ListenerProtocol> {
    use ListenerProtocol::{TlsPassthrough, TlsTerminate};
    match (a, b) {
        (a, b) if a == b => Some(a),
        (TlsPassthrough, TlsTerminate) | (TlsTerminate, TlsPassthrough) => Some(TlsTerminate),
        _ => None,
    }
}

/// Another protocol already holds the port (a ProtocolConflict).
pub struct PortTaken;

impl<'a> Ports<'a> {
    /// Adds a served listener to its port, and the clusters its routes use to `resources`.
    /// The first listener on a port decides its protocol: a listener of another protocol
    /// cannot share the socket.
    pub fn add(
        &mut self,
        listener: &'a ListenerView<'_>,
        port: u32,
        client_certificate: Option<&ClientCertificate>,
        policies: Option<RequestPolicies>,
        resources: &mut ResourceSet,
    ) -> Result<(), PortTaken> {
        let udp = listener.protocol == ListenerProtocol::Udp;
        let entry = self.0.entry((port, udp)).or_insert_with(|| PortListeners {
            protocol: listener.protocol,
            hostnames: Vec::new(),
            contributions: Vec::new(),
            certificates: Vec::new(),
            client_validation: None,
            policies: Vec::new(),
        });
        entry.protocol = shared_protocol(entry.protocol, listener.protocol).ok_or(PortTaken)?;
        let passthrough = listener.protocol == ListenerProtocol::TlsPassthrough;
        entry
            .certificates
            .extend(listener.certificates.iter().cloned());
        entry.client_validation = entry
            .client_validation
            .take()
            .or_else(|| listener.client_validation.clone());
        let listener_hostname: Option<Rc<str>> = listener
            .spec
            .hostname
            .as_deref()
            .filter(|h| !h.is_empty())
            .map(|h| h.to_ascii_lowercase().into());
        if let Some(h) = &listener_hostname {
            entry.hostnames.push(h.to_string());
        }
        if let Some(policies) = policies {
            entry.policies.push(ListenerPolicies {
                hostname: listener_hostname.as_deref().unwrap_or("").to_owned(),
                policies: Some(policies),
            });
        }
        let mut previous: Option<&Arc<CompiledRoute>> = None;
        for attached in &listener.attached {
            let kernel_candidates = attached.compiled.kernel_candidates;
            for host in attached.hosts.iter() {
                entry.contributions.push(Contribution {
                    listener: listener_hostname.clone(),
                    domain: host,
                    passthrough,
                    compiled: &attached.compiled,
                    kernel_candidates,
                });
            }
            // A route attached through several parentRefs is listed once per parentRef, in
            // a row: its clusters are added once.
            if !previous.is_some_and(|p| Arc::ptr_eq(p, &attached.compiled)) {
                add_backends(&attached.compiled, client_certificate, resources);
            }
            previous = Some(&attached.compiled);
        }
        Ok(())
    }

    /// One Listener and one RouteTable per port, rules sorted by precedence.
    pub fn into_resources(self, resources: &mut ResourceSet, memo: &mut RulesMemo) {
        for ((port, _), listeners) in self.0 {
            let l4 = l4_routes::is_l4(listeners.protocol);
            let name = match listeners.protocol {
                ListenerProtocol::Https => format!("https-{port}"),
                p if l4 => l4_routes::listener_name(p, port),
                _ => format!("http-{port}"),
            };
            let mut hostnames = listeners.hostnames;
            hostnames.sort();
            hostnames.dedup();
            let vhosts = isolated_virtual_hosts(&hostnames, listeners.contributions);
            let listener = Listener {
                name: name.clone(),
                port,
                protocol: listeners.protocol as i32,
                hostnames: hostnames.clone(),
                route_table: if l4 { String::new() } else { name.clone() },
                certificates: listeners.certificates,
                client_validation: listeners.client_validation,
                l4_route_table: if l4 { name.clone() } else { String::new() },
            };
            resources.entry(ResourceType::Listener).or_default().insert(
                name.clone(),
                Arc::new(Payload::Listener(Box::new(listener))),
            );
            if l4 {
                let vhosts = vhosts
                    .into_iter()
                    .map(|(domain, placed)| {
                        let entries = placed
                            .iter()
                            .flat_map(|p| p.entries().map(|e| (e.clone(), p.passthrough)))
                            .collect();
                        (domain.to_owned(), entries)
                    })
                    .collect();
                let table = l4_routes::table(&name, vhosts);
                resources
                    .entry(ResourceType::L4RouteTable)
                    .or_default()
                    .insert(name, Arc::new(Payload::L4RouteTable(table)));
                continue;
            }
            let kernel = listeners.protocol == ListenerProtocol::Http;
            let (mut table, rules) = route_rules::table(&name, &hostnames, vhosts, kernel, memo);
            table.listener_policies = listeners.policies;
            resources
                .entry(ResourceType::RouteTable)
                .or_default()
                .insert(name, Arc::new(Payload::RouteTable(table)));
            let by_name = resources.entry(ResourceType::RouteRules).or_default();
            by_name.extend(rules);
        }
    }
}

/// Match entries (and whether they came through a Passthrough listener) by virtual-host
/// domain, with listener isolation: a request is served only
/// by the routes of the most specific listener whose hostname matches it. Each listener
/// hostname gets a virtual host even where no route serves it (then 404), and a route's
/// domain is left out where a more specific listener owns all of it (the route attached to a
/// less specific listener, e.g. "*.example.com" through the hostname-less one). Hosts a more
/// specific listener owns inside a broader domain need nothing: that listener's own virtual
/// host is more specific, so the proxy's lookup (exact, longest wildcard, "*") picks it.
fn isolated_virtual_hosts<'h, 'a: 'h>(
    listener_hostnames: &'h [String],
    contributions: Vec<Contribution<'a>>,
) -> BTreeMap<&'h str, Vec<Placed<'a>>> {
    let mut vhosts: BTreeMap<&'h str, Vec<Placed<'a>>> = listener_hostnames
        .iter()
        .map(|h| (h.as_str(), Vec::new()))
        .collect();
    let port = hostnames::PortHostnames::new(listener_hostnames);
    for c in contributions {
        if port.owned_by_more_specific_listener(c.domain, c.listener.as_deref()) {
            continue;
        }
        vhosts.entry(c.domain).or_default().push(Placed {
            passthrough: c.passthrough,
            kernel_candidates: c.kernel_candidates,
            compiled: c.compiled,
        });
    }
    vhosts
}

/// The clusters of a route's backends, with the Gateway's client certificate where they
/// speak TLS (their endpoints are filled in once the Gateway's clusters are known).
fn add_backends(
    route: &CompiledRoute,
    client_certificate: Option<&ClientCertificate>,
    resources: &mut ResourceSet,
) {
    let clusters = resources.entry(ResourceType::Cluster).or_default();
    for backend in &route.backends {
        let payload = match (&backend.cluster.tls, client_certificate) {
            (Some(_), Some(cert)) => {
                let mut cluster = (*backend.cluster).clone();
                if let Some(tls) = &mut cluster.tls {
                    tls.client_certificate = Some(cert.clone());
                }
                Arc::new(Payload::Cluster(Box::new(cluster)))
            }
            _ => Arc::clone(backend.cluster.payload()),
        };
        clusters.insert(backend.cluster.name.clone(), payload);
    }
}
