//! Listeners, whether a Gateway's own or a ListenerSet's: what each serves (protocol,
//! certificates, route kinds, allowed namespaces), why one cannot be served, and the status
//! conditions that say so.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersTlsMode,
};
use rauta_common::api::v1::{ClientValidation, ListenerProtocol, ServerCertificate};

use super::references::GATEWAY_GROUP;
use super::route_view::RouteKind;
use super::routes::CompiledRoute;
use super::selectors::{NamespaceSelector, Requirement};
use super::status::{Condition, ListenerStatus};
use super::tls;
use crate::objects::{ObjectRef, ObjectSet};

/// What HTTP and HTTPS listeners serve.
const HTTP_ROUTE_KINDS: &[RouteKind] = &[RouteKind::Http, RouteKind::Grpc];
/// What TLS listeners serve, in Passthrough and Terminate mode.
const TLS_ROUTE_KINDS: &[RouteKind] = &[RouteKind::Tls];
/// What TCP listeners serve.
const TCP_ROUTE_KINDS: &[RouteKind] = &[RouteKind::Tcp];
/// What UDP listeners serve.
const UDP_ROUTE_KINDS: &[RouteKind] = &[RouteKind::Udp];

/// A Gateway listener as the translator sees it.
pub struct ListenerView<'a> {
    pub spec: Cow<'a, GatewayListeners>,
    /// The ListenerSet the listener comes from; None for the Gateway's own listeners.
    pub owner: Option<ObjectRef>,
    /// Namespace of the listener's owner ("Same" in allowedRoutes means this one).
    pub namespace: String,
    /// Set when the listener cannot be served.
    pub problem: Option<ListenerProblem>,
    pub valid: bool,
    pub protocol: ListenerProtocol,
    pub certificates: Vec<ServerCertificate>,
    pub client_validation: Option<ClientValidation>,
    /// The route kinds this listener's protocol serves.
    pub route_kinds: &'static [RouteKind],
    /// Every route attached to this listener, in route order.
    pub attached: Vec<AttachedRoute>,
}

/// A route attached to a listener.
pub struct AttachedRoute {
    /// The hostnames it serves there.
    pub hosts: Arc<[String]>,
    pub compiled: Arc<CompiledRoute>,
}

/// Why a listener is not served, as its conditions will say.
pub struct ListenerProblem {
    /// None: the listener is still Accepted; Some(reason): Accepted=False with that reason.
    pub not_accepted: Option<&'static str>,
    /// Some(reason): ResolvedRefs=False with that reason.
    pub unresolved: Option<&'static str>,
    pub message: String,
    /// Whether the listener reports HTTPRoute as a supported kind.
    pub routes_supported: bool,
    /// Some(reason): Conflicted=True with that reason.
    pub conflict: Option<&'static str>,
}

impl ListenerProblem {
    fn not_accepted(reason: &'static str, message: String, routes_supported: bool) -> Self {
        ListenerProblem {
            not_accepted: Some(reason),
            unresolved: None,
            message,
            routes_supported,
            conflict: None,
        }
    }
}

/// A listener as the translator sees it, with its TLS settings resolved.
pub fn listener_view<'a>(
    objects: &ObjectSet,
    gw: &Gateway,
    spec: Cow<'a, GatewayListeners>,
    owner: Option<ObjectRef>,
    namespace: &str,
) -> ListenerView<'a> {
    let mut client_validation = None;
    let owner_kind = if owner.is_some() {
        "ListenerSet"
    } else {
        "Gateway"
    };
    let passthrough = spec.tls.as_ref().and_then(|t| t.mode.as_ref())
        == Some(&GatewayListenersTlsMode::Passthrough);
    let (protocol, certificates, problem) = match spec.protocol.as_str() {
        "HTTP" => (ListenerProtocol::Http, Vec::new(), None),
        "TCP" => (ListenerProtocol::Tcp, Vec::new(), None),
        "UDP" => (ListenerProtocol::Udp, Vec::new(), None),
        "TLS" if passthrough => (ListenerProtocol::TlsPassthrough, Vec::new(), None),
        // tls.mode Terminate (the default): the listener's certificates, as HTTPS has them.
        "TLS" => match tls::listener_certificates(objects, (owner_kind, namespace), &spec) {
            Ok(certs) => (ListenerProtocol::TlsTerminate, certs, None),
            Err(p) => {
                let problem = ListenerProblem {
                    not_accepted: p.not_accepted,
                    unresolved: p.unresolved,
                    message: p.message,
                    routes_supported: true,
                    conflict: None,
                };
                (ListenerProtocol::TlsTerminate, Vec::new(), Some(problem))
            }
        },
        "HTTPS" => match tls::listener_certificates(objects, (owner_kind, namespace), &spec)
            .and_then(|certs| {
                Ok((
                    certs,
                    tls::client_validation(objects, gw, namespace, &spec)?,
                ))
            }) {
            Ok((certs, validation)) => {
                client_validation = validation;
                (ListenerProtocol::Https, certs, None)
            }
            Err(p) => {
                let problem = ListenerProblem {
                    not_accepted: p.not_accepted,
                    unresolved: p.unresolved,
                    message: p.message,
                    routes_supported: true,
                    conflict: None,
                };
                (ListenerProtocol::Https, Vec::new(), Some(problem))
            }
        },
        other => {
            let message = format!("protocol {other:?} is not supported");
            let problem = ListenerProblem::not_accepted("UnsupportedProtocol", message, false);
            (ListenerProtocol::Unspecified, Vec::new(), Some(problem))
        }
    };
    ListenerView {
        route_kinds: match protocol {
            ListenerProtocol::TlsPassthrough | ListenerProtocol::TlsTerminate => TLS_ROUTE_KINDS,
            ListenerProtocol::Tcp => TCP_ROUTE_KINDS,
            ListenerProtocol::Udp => UDP_ROUTE_KINDS,
            _ => HTTP_ROUTE_KINDS,
        },
        spec,
        owner,
        namespace: namespace.to_owned(),
        valid: problem.is_none(),
        problem,
        protocol,
        certificates,
        client_validation,
        attached: Vec::new(),
    }
}

/// Listeners with the same port and hostname as an earlier listener cannot be told apart: the
/// first keeps them, the later ones are Conflicted (HostnameConflict) and serve nothing.
pub fn mark_hostname_conflicts(listeners: &mut [ListenerView<'_>]) {
    // Keyed by protocol too: the same port with another protocol is a ProtocolConflict, which
    // the port assignment reports (gateway_resources.rs).
    let mut seen: BTreeSet<(i32, i32, String)> = BTreeSet::new();
    for l in listeners.iter_mut().filter(|l| l.valid) {
        let hostname = l
            .spec
            .hostname
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        // TLS listeners of both modes share a socket: one hostname, one mode.
        let protocol = match l.protocol {
            ListenerProtocol::TlsPassthrough => ListenerProtocol::TlsTerminate,
            p => p,
        };
        if !seen.insert((l.spec.port, protocol as i32, hostname.clone())) {
            l.valid = false;
            l.problem = Some(ListenerProblem {
                not_accepted: Some("HostnameConflict"),
                unresolved: None,
                message: format!(
                    "another listener already serves port {} for hostname {hostname:?}",
                    l.spec.port
                ),
                routes_supported: true,
                conflict: Some("HostnameConflict"),
            });
        }
    }
}

impl ListenerView<'_> {
    /// Appends everything attachment reads of this listener (`attachment.rs`: name, port,
    /// hostname, the kinds it serves, its owner's namespace, allowedRoutes, whether it
    /// supports routes at all), each field length-prefixed so that distinct listeners never
    /// encode alike. Returns whether allowedRoutes selects namespaces by label, which makes
    /// attachment read Namespaces too.
    pub fn attach_inputs(&self, out: &mut Vec<u8>) -> bool {
        fn put(out: &mut Vec<u8>, bytes: &[u8]) {
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        put(out, self.spec.name.as_bytes());
        put(out, &self.spec.port.to_le_bytes());
        match &self.spec.hostname {
            Some(h) => put(out, h.as_bytes()),
            None => put(out, b"\0none"),
        }
        let kinds: Vec<u8> = self.route_kinds.iter().map(|k| *k as u8).collect();
        put(out, &kinds);
        put(out, self.namespace.as_bytes());
        let supported = self.problem.as_ref().is_none_or(|p| p.routes_supported);
        put(out, &[u8::from(supported)]);
        let allowed = serde_json::to_vec(&self.spec.allowed_routes).unwrap_or_default();
        put(out, &allowed);
        self.spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_ref())
            == Some(&GatewayListenersAllowedRoutesNamespacesFrom::Selector)
    }

    /// Whether a route of `kind` from `route_namespace` may attach: the listener's protocol
    /// serves the kind, and allowedRoutes admits its namespace and kind.
    pub fn admits(&self, objects: &ObjectSet, kind: RouteKind, route_namespace: &str) -> bool {
        self.route_kinds.contains(&kind)
            && self.namespace_allowed(objects, route_namespace)
            && kind_allowed(&self.spec, kind)
    }

    /// allowedRoutes.namespaces; "Same" is the namespace of the listener's owner.
    fn namespace_allowed(&self, objects: &ObjectSet, route_namespace: &str) -> bool {
        let namespaces = self
            .spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        match namespaces.and_then(|n| n.from.as_ref()) {
            None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => {
                self.namespace == route_namespace
            }
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => namespaces
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|s| {
                    let selector = NamespaceSelector {
                        match_labels: s.match_labels.as_ref(),
                        requirements: s
                            .match_expressions
                            .iter()
                            .flatten()
                            .map(|e| Requirement {
                                key: &e.key,
                                operator: &e.operator,
                                values: e.values.as_deref().unwrap_or_default(),
                            })
                            .collect(),
                    };
                    selector.selects(objects, route_namespace)
                }),
        }
    }

    /// The status of a listener that cannot be served.
    pub fn problem_status(&self, problem: &ListenerProblem, g: i64) -> ListenerStatus {
        let spec = &self.spec;
        let mut conditions = Vec::new();
        if let Some(reason) = problem.conflict {
            let message = problem.message.clone();
            conditions.push(Condition::new("Conflicted", true, reason, message, g));
        }
        conditions.push(match problem.not_accepted {
            Some(reason) => Condition::new("Accepted", false, reason, problem.message.clone(), g),
            None => Condition::new("Accepted", true, "Accepted", "", g),
        });
        conditions.push(match problem.unresolved {
            Some(reason) => {
                Condition::new("ResolvedRefs", false, reason, problem.message.clone(), g)
            }
            None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g),
        });
        // A conflicted listener says why in Programmed too (the ListenerSet API's reasons).
        let message = problem.message.clone();
        let reason = problem.conflict.unwrap_or("Invalid");
        conditions.push(Condition::new("Programmed", false, reason, message, g));
        let kinds = if problem.routes_supported {
            listener_kinds(spec, self.route_kinds).0
        } else {
            vec![]
        };
        ListenerStatus {
            name: spec.name.clone(),
            attached_routes: self.attached_route_count(),
            supported_kinds: kinds,
            conditions,
        }
    }

    /// The status of a listener whose port another protocol already holds.
    pub fn protocol_conflict_status(&self, port: u32, g: i64) -> ListenerStatus {
        let msg = format!("port {port} is already used with another protocol");
        ListenerStatus {
            name: self.spec.name.clone(),
            attached_routes: self.attached_route_count(),
            supported_kinds: vec![],
            conditions: vec![
                Condition::new("Conflicted", true, "ProtocolConflict", msg.clone(), g),
                Condition::new("Accepted", false, "PortUnavailable", msg.clone(), g),
                Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g),
                Condition::new("Programmed", false, "Invalid", msg, g),
            ],
        }
    }

    /// How many routes are attached to the listener (served or not), each counted once. A
    /// route attached through several parentRefs is attached as it is attached, one
    /// parentRef after the other: its entries are next to each other.
    fn attached_route_count(&self) -> i32 {
        let distinct = self
            .attached
            .chunk_by(|a, b| Arc::ptr_eq(&a.compiled, &b.compiled))
            .count();
        i32::try_from(distinct).unwrap_or(i32::MAX)
    }

    /// The status of a listener that is served, with the number of routes attached to it.
    pub fn serving_status(&self, g: i64) -> ListenerStatus {
        let (kinds, valid_kinds) = listener_kinds(&self.spec, self.route_kinds);
        let resolved = if valid_kinds {
            Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g)
        } else {
            let names: Vec<&str> = self.route_kinds.iter().map(|k| k.name()).collect();
            let message = format!("supported route kinds: {}", names.join(", "));
            Condition::new("ResolvedRefs", false, "InvalidRouteKinds", message, g)
        };
        ListenerStatus {
            name: self.spec.name.clone(),
            attached_routes: self.attached_route_count(),
            supported_kinds: kinds,
            conditions: vec![
                Condition::new("Conflicted", false, "NoConflicts", "", g),
                Condition::new("Accepted", true, "Accepted", "", g),
                Condition::new("Programmed", true, "Programmed", "", g),
                resolved,
            ],
        }
    }
}

/// The kinds a listener serves (its protocol's, narrowed by allowedRoutes.kinds), and
/// whether every kind allowedRoutes lists is one it can serve (else InvalidRouteKinds).
fn listener_kinds(listener: &GatewayListeners, supported: &[RouteKind]) -> (Vec<String>, bool) {
    let listed = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_deref())
        .filter(|k| !k.is_empty());
    let Some(listed) = listed else {
        return (
            supported.iter().map(|k| k.name().to_owned()).collect(),
            true,
        );
    };
    let mut kinds: Vec<String> = Vec::new();
    let mut all_valid = true;
    for k in listed {
        let group_ok = k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP;
        match supported.iter().find(|s| group_ok && s.name() == k.kind) {
            Some(s) if !kinds.iter().any(|n| n == s.name()) => kinds.push(s.name().to_owned()),
            Some(_) => {}
            None => all_valid = false,
        }
    }
    (kinds, all_valid)
}

/// Whether the listener's allowedRoutes.kinds admits `kind` (unset or empty admits it).
fn kind_allowed(listener: &GatewayListeners, kind: RouteKind) -> bool {
    match listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_ref())
    {
        None => true,
        Some(kinds) if kinds.is_empty() => true,
        Some(kinds) => kinds.iter().any(|k| {
            k.kind == kind.name() && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        }),
    }
}
