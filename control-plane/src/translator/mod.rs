//! The translator: a pure function from Gateway API objects to one resource set per Gateway
//! plus the status of every object involved. No I/O, no clock: tests call it directly.

pub mod addresses;
pub mod backend_tls;
pub mod backends;
mod filters;
mod grpc;
pub mod hostnames;
mod listener_sets;
mod routes;
pub mod service_policy;
pub mod status;
mod tls;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use gateway_api::experimental::httproutes::HttpRouteParentRefs;
use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersTlsMode,
};
use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{
    ClientCertificate, ClientValidation, Listener, ListenerProtocol, RouteTable, ServerCertificate,
    VirtualHost,
};
use rauta_common::types::ResourceType;

use crate::objects::{ObjectRef, ObjectSet};
use routes::{CompiledRoute, MatchEntry};
use status::{
    Condition, GatewayClassStatus, GatewayStatus, ListenerSetStatus, ListenerStatus, ParentRef,
    PolicyStatus, RouteParentStatus, RouteStatus, StatusReport, set_condition,
};

/// The controllerName RAUTA answers for in GatewayClass.spec.controllerName.
pub const DEFAULT_CONTROLLER_NAME: &str = "rauta.dev/gateway-controller";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Gateway API features this build implements, reported in GatewayClass status. Only features
/// whose conformance cases pass belong here (see tests/conformance).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "ReferenceGrant",
    "GatewayPort8080",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteParentRefPort",
    "HTTPRouteRequestTimeout",
    "HTTPRouteRetry",
    "HTTPRouteRequestMirror",
    "HTTPRouteCORS",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteQueryParamMatching",
    "HTTPRoutePortRedirect",
    "HTTPRoutePathRedirect",
    "HTTPRouteHostRewrite",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GatewayBackendClientCertificate",
    "ListenerSet",
    "GatewayStaticAddresses",
    "GatewayAddressEmpty",
    "TLSRoute",
];

/// The route kinds RAUTA serves; a listener serves exactly one, chosen by its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RouteKind {
    Http,
    Tls,
    Grpc,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    fn referrer(self) -> backends::Referrer {
        backends::Referrer {
            kind: self.name(),
            grpc: self == RouteKind::Grpc,
        }
    }
}

/// What HTTP and HTTPS listeners serve.
const HTTP_ROUTE_KINDS: &[RouteKind] = &[RouteKind::Http, RouteKind::Grpc];
/// What TLS passthrough listeners serve.
const TLS_ROUTE_KINDS: &[RouteKind] = &[RouteKind::Tls];

/// A route of either kind (an HTTPRoute and a TLSRoute may share a name).
type RouteId = (RouteKind, ObjectRef);

/// The Gateway listeners sharing one port (and so one proxy socket).
#[derive(Default)]
struct PortListeners {
    protocol: ListenerProtocol,
    hostnames: Vec<String>,
    /// Match entries by virtual-host domain.
    vhosts: BTreeMap<String, Vec<MatchEntry>>,
    certificates: Vec<ServerCertificate>,
    client_validation: Option<ClientValidation>,
}

type PortRoutes = BTreeMap<u32, PortListeners>;

/// Resources of one Gateway by type, then name.
pub type ResourceSet = BTreeMap<ResourceType, BTreeMap<String, Payload>>;

/// The translator's output.
#[derive(Debug, Default)]
pub struct Translation {
    /// One entry per Gateway of an accepted GatewayClass, even if it has no resources.
    pub gateways: BTreeMap<ObjectRef, ResourceSet>,
    pub status: StatusReport,
}

fn generation(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.generation.unwrap_or(0)
}

/// A Gateway listener as the translator sees it.
struct ListenerView<'a> {
    spec: Cow<'a, GatewayListeners>,
    /// The ListenerSet the listener comes from; None for the Gateway's own listeners.
    owner: Option<ObjectRef>,
    /// Namespace of the listener's owner ("Same" in allowedRoutes means this one).
    namespace: String,
    /// Set when the listener cannot be served.
    problem: Option<ListenerProblem>,
    valid: bool,
    protocol: ListenerProtocol,
    certificates: Vec<ServerCertificate>,
    client_validation: Option<ClientValidation>,
    /// The route kinds this listener's protocol serves.
    route_kinds: &'static [RouteKind],
    /// (hostnames, compiled route) for every route attached to this listener.
    attached: Vec<(Vec<String>, RouteId)>,
}

/// Why a listener is not served, as its conditions will say.
struct ListenerProblem {
    /// None: the listener is still Accepted; Some(reason): Accepted=False with that reason.
    not_accepted: Option<&'static str>,
    /// Some(reason): ResolvedRefs=False with that reason.
    unresolved: Option<&'static str>,
    message: String,
    /// Whether the listener reports HTTPRoute as a supported kind.
    routes_supported: bool,
    /// Some(reason): Conflicted=True with that reason.
    conflict: Option<&'static str>,
}

struct GatewayView<'a> {
    generation: i64,
    /// spec.addresses: the requested (type, value) pairs, or why one cannot be honoured.
    addresses: Result<Vec<(String, String)>, String>,
    /// Where the Gateway's Service (if it has one) makes it reachable.
    service_addresses: Vec<String>,
    /// Why spec.infrastructure.parametersRef cannot be used, if it is set.
    invalid_parameters: Option<String>,
    /// Some port uses frontend validation mode AllowInsecureFallback.
    insecure_frontend_validation: bool,
    /// spec.tls.backend.clientCertificateRef: None when unset, else the certificate or why it
    /// cannot be used (the Gateway's ResolvedRefs reason and message).
    backend_client_certificate: Option<Result<ClientCertificate, (&'static str, String)>>,
    listeners: Vec<ListenerView<'a>>,
    /// ListenerSets naming this Gateway as parent, allowed or not.
    listener_sets: Vec<listener_sets::ListenerSetView<'a>>,
}

/// Translates every object. `controller_name` selects the GatewayClasses RAUTA owns.
pub fn translate(objects: &ObjectSet, controller_name: &str) -> Translation {
    let mut out = Translation::default();

    let mut classes = BTreeSet::new();
    for (key, class) in &objects.gateway_classes {
        if class.spec.controller_name == controller_name {
            classes.insert(key.name.clone());
            let accepted = Condition::new(
                "Accepted",
                true,
                "Accepted",
                "",
                generation(&class.metadata),
            );
            out.status.gateway_classes.insert(
                key.clone(),
                GatewayClassStatus {
                    generation: generation(&class.metadata),
                    conditions: vec![accepted],
                    supported_features: SUPPORTED_FEATURES
                        .iter()
                        .map(|f| (*f).to_owned())
                        .collect(),
                },
            );
        }
    }

    let mut gateways: BTreeMap<ObjectRef, GatewayView<'_>> = objects
        .gateways
        .iter()
        .filter(|(_, gw)| classes.contains(&gw.spec.gateway_class_name))
        .map(|(key, gw)| (key.clone(), gateway_view(objects, key, gw)))
        .collect();

    // TLSRoutes share the HTTPRoute shape for what matters here (parentRefs, hostnames,
    // backendRefs); read as such, they go through the same attachment and backend resolution.
    let tls_routes: Vec<(ObjectRef, gateway_api::experimental::httproutes::HttpRoute)> = objects
        .tls_routes
        .iter()
        .filter_map(|(key, r)| {
            let value = serde_json::json!({
                "metadata": r.metadata,
                "spec": {"parentRefs": r.spec.parent_refs, "hostnames": r.spec.hostnames, "rules": r.spec.rules},
            });
            Some((key.clone(), serde_json::from_value(value).ok()?))
        })
        .collect();
    // GRPCRoutes become HTTP/2 routes matching on the path gRPC puts the method in.
    let grpc_routes: Vec<(ObjectRef, gateway_api::experimental::httproutes::HttpRoute)> = objects
        .grpc_routes
        .iter()
        .filter_map(|(key, r)| Some((key.clone(), grpc::as_http_route(r)?)))
        .collect();
    let all_routes = objects
        .http_routes
        .iter()
        .map(|(k, r)| (RouteKind::Http, k, &**r))
        .chain(tls_routes.iter().map(|(k, r)| (RouteKind::Tls, k, r)))
        .chain(grpc_routes.iter().map(|(k, r)| (RouteKind::Grpc, k, r)));
    let mut compiled: BTreeMap<RouteId, CompiledRoute> = BTreeMap::new();
    for (kind, key, route) in all_routes {
        let id: RouteId = (kind, key.clone());
        let generation = generation(&route.metadata);
        let mut parents = Vec::new();
        for parent in route.spec.parent_refs.iter().flatten() {
            let parent_ref = explicit_parent_ref(parent, &key.namespace);
            if parent_ref.group != GATEWAY_GROUP {
                continue;
            }
            let parent_key = ObjectRef::new(&parent_ref.namespace, &parent_ref.name);
            let gateway = match parent_ref.kind.as_str() {
                "Gateway" => gateways.get_mut(&parent_key),
                "ListenerSet" => gateways
                    .values_mut()
                    .find(|g| g.listener_sets.iter().any(|s| s.key == parent_key)),
                _ => continue,
            };
            let Some(gateway) = gateway else {
                continue; // Not a Gateway of ours: another controller writes this status.
            };
            let route_compiled = compiled
                .entry(id.clone())
                .or_insert_with(|| routes::compile(objects, key, route, kind.referrer()));
            let conditions = attach(
                objects,
                gateway,
                &id,
                route.spec.hostnames.as_deref().unwrap_or_default(),
                &parent_ref,
                route_compiled,
                generation,
            );
            parents.push(RouteParentStatus {
                parent_ref,
                controller_name: controller_name.to_owned(),
                conditions,
            });
        }
        if !parents.is_empty() {
            let statuses = match kind {
                RouteKind::Http => &mut out.status.http_routes,
                RouteKind::Tls => &mut out.status.tls_routes,
                RouteKind::Grpc => &mut out.status.grpc_routes,
            };
            statuses.insert(
                key.clone(),
                RouteStatus {
                    generation,
                    parents,
                },
            );
        }
    }

    policy_statuses(
        objects,
        controller_name,
        &gateways,
        &compiled,
        &mut out.status,
    );
    for (key, gateway) in gateways {
        let (resources, status, set_statuses) = build_gateway(&gateway, &compiled);
        out.gateways.insert(key.clone(), resources);
        out.status.gateways.insert(key, status);
        out.status.listener_sets.extend(set_statuses);
    }
    out
}

/// A listener as the translator sees it, with its TLS settings resolved.
fn listener_view<'a>(
    objects: &ObjectSet,
    gw: &Gateway,
    spec: Cow<'a, GatewayListeners>,
    owner: Option<ObjectRef>,
    namespace: &str,
) -> ListenerView<'a> {
    let mut client_validation = None;
    let (protocol, certificates, problem) = match spec.protocol.as_str() {
        "HTTP" => (ListenerProtocol::Http, Vec::new(), None),
        "TLS"
            if spec.tls.as_ref().and_then(|t| t.mode.as_ref())
                == Some(&GatewayListenersTlsMode::Passthrough) =>
        {
            (ListenerProtocol::TlsPassthrough, Vec::new(), None)
        }
        "TLS" => {
            let problem = ListenerProblem {
                not_accepted: Some("UnsupportedValue"),
                unresolved: None,
                message: "TLS listeners support tls.mode Passthrough only".into(),
                routes_supported: true,
                conflict: None,
            };
            (ListenerProtocol::TlsPassthrough, Vec::new(), Some(problem))
        }
        "HTTPS" => match tls::listener_certificates(objects, namespace, &spec).and_then(|certs| {
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
            let problem = ListenerProblem {
                not_accepted: Some("UnsupportedProtocol"),
                unresolved: None,
                message: format!("protocol {other:?} is not supported"),
                routes_supported: false,
                conflict: None,
            };
            (ListenerProtocol::Unspecified, Vec::new(), Some(problem))
        }
    };
    ListenerView {
        route_kinds: if protocol == ListenerProtocol::TlsPassthrough {
            TLS_ROUTE_KINDS
        } else {
            HTTP_ROUTE_KINDS
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

fn gateway_view<'a>(objects: &'a ObjectSet, key: &ObjectRef, gw: &'a Gateway) -> GatewayView<'a> {
    let mut listeners: Vec<ListenerView<'a>> = gw
        .spec
        .listeners
        .iter()
        .map(|spec| listener_view(objects, gw, Cow::Borrowed(spec), None, &key.namespace))
        .collect();
    let sets = listener_sets::of_gateway(objects, key, gw);
    for set in sets.iter().filter(|s| s.allowed.is_ok()) {
        // Listeners that cannot be read were refused when the file was parsed; none here.
        for spec in listener_sets::as_gateway_listeners(set.set).unwrap_or_default() {
            listeners.push(listener_view(
                objects,
                gw,
                Cow::Owned(spec),
                Some(set.key.clone()),
                &set.key.namespace,
            ));
        }
    }
    mark_hostname_conflicts(&mut listeners);
    // RAUTA defines no parameters kind yet, so any parametersRef is one it cannot resolve.
    let invalid_parameters = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
        .map(|p| {
            format!(
                "parametersRef {}/{} {} is not supported",
                p.group, p.kind, p.name
            )
        });
    GatewayView {
        generation: generation(&gw.metadata),
        invalid_parameters,
        insecure_frontend_validation: tls::insecure_fallback(gw),
        addresses: addresses::requested(gw),
        service_addresses: addresses::of_services(objects, key),
        listener_sets: sets,
        backend_client_certificate: tls::backend_client_certificate(objects, gw, &key.namespace)
            .transpose(),
        listeners,
    }
}

/// Listeners with the same port and hostname as an earlier listener cannot be told apart: the
/// first keeps them, the later ones are Conflicted (HostnameConflict) and serve nothing.
fn mark_hostname_conflicts(listeners: &mut [ListenerView<'_>]) {
    // Keyed by protocol too: the same port with another protocol is a ProtocolConflict, which
    // build_gateway reports.
    let mut seen: BTreeSet<(i32, i32, String)> = BTreeSet::new();
    for l in listeners.iter_mut().filter(|l| l.valid) {
        let hostname = l
            .spec
            .hostname
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        if !seen.insert((l.spec.port, l.protocol as i32, hostname.clone())) {
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

fn explicit_parent_ref(p: &HttpRouteParentRefs, route_namespace: &str) -> ParentRef {
    ParentRef {
        group: p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.to_owned()),
        kind: p.kind.clone().unwrap_or_else(|| "Gateway".to_owned()),
        namespace: p
            .namespace
            .clone()
            .unwrap_or_else(|| route_namespace.to_owned()),
        name: p.name.clone(),
        section_name: p.section_name.clone(),
        port: p.port,
    }
}

/// `owner_ns`: namespace of the listener's Gateway or ListenerSet ("Same" refers to it).
fn namespace_allowed(
    objects: &ObjectSet,
    listener: &GatewayListeners,
    owner_ns: &str,
    route_ns: &str,
) -> bool {
    let namespaces = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => owner_ns == route_ns,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => namespaces
            .and_then(|n| n.selector.as_ref())
            .is_some_and(|s| {
                let expressions: Vec<(String, String, Vec<String>)> = s
                    .match_expressions
                    .iter()
                    .flatten()
                    .map(|e| {
                        (
                            e.key.clone(),
                            e.operator.clone(),
                            e.values.clone().unwrap_or_default(),
                        )
                    })
                    .collect();
                labels_match(objects, route_ns, s.match_labels.as_ref(), &expressions)
            }),
    }
}

/// Whether a namespace's labels satisfy a label selector (matchLabels and matchExpressions as
/// (key, operator, values)).
fn labels_match(
    objects: &ObjectSet,
    namespace: &str,
    match_labels: Option<&BTreeMap<String, String>>,
    expressions: &[(String, String, Vec<String>)],
) -> bool {
    let mut labels = objects
        .namespaces
        .get(&ObjectRef::new("", namespace))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    // The API server puts this label on every Namespace; a directory of YAML may not.
    labels
        .entry("kubernetes.io/metadata.name".to_owned())
        .or_insert_with(|| namespace.to_owned());
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = expressions.iter().all(|(key, operator, values)| {
        let value = labels.get(key);
        match operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether the listener's allowedRoutes.kinds admits `kind` (unset or empty admits it).
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

/// Attaches a route to the matching listeners of one Gateway; returns the parent conditions.
fn attach(
    objects: &ObjectSet,
    gateway: &mut GatewayView<'_>,
    route: &RouteId,
    route_hostnames: &[String],
    parent: &ParentRef,
    compiled: &CompiledRoute,
    generation: i64,
) -> Vec<Condition> {
    let accepted = |ok: bool, reason: &str, msg: String| {
        Condition::new("Accepted", ok, reason, msg, generation)
    };
    let mut conditions = Vec::new();
    let resolved = match &compiled.ref_problem {
        Some(p) => Condition::new(
            "ResolvedRefs",
            false,
            p.reason,
            p.message.clone(),
            generation,
        ),
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", generation),
    };
    if let Some(msg) = &compiled.unsupported {
        conditions.push(accepted(false, "UnsupportedValue", msg.clone()));
        conditions.push(resolved);
        return conditions;
    }
    // A Gateway parentRef reaches the Gateway's own listeners, a ListenerSet parentRef only
    // that set's.
    let owner =
        (parent.kind == "ListenerSet").then(|| ObjectRef::new(&parent.namespace, &parent.name));
    let owner = owner.as_ref();
    let candidates: Vec<usize> = gateway
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.owner.as_ref() == owner)
        .filter(|(_, l)| {
            parent
                .section_name
                .as_deref()
                .is_none_or(|s| s == l.spec.name)
        })
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.spec.port))
        .map(|(i, _)| i)
        .collect();
    let mut reason = if candidates.is_empty() {
        Some((
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port",
        ))
    } else {
        None
    };
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| {
            let l = &gateway.listeners[i];
            l.route_kinds.contains(&route.0)
                && namespace_allowed(objects, &l.spec, &l.namespace, &route.1.namespace)
                && kind_allowed(&l.spec, route.0)
        })
        .collect();
    if reason.is_none() && allowed.is_empty() {
        reason = Some((
            "NotAllowedByListeners",
            "no matching listener allows routes from this namespace or of this kind",
        ));
    }
    let mut attached_any = false;
    for i in allowed {
        let listener = &mut gateway.listeners[i];
        if !listener.valid {
            continue;
        }
        if let Some(hosts) =
            hostnames::intersect(listener.spec.hostname.as_deref(), route_hostnames)
        {
            listener.attached.push((hosts, route.clone()));
            attached_any = true;
        }
    }
    if reason.is_none() && !attached_any {
        reason = Some((
            "NoMatchingListenerHostname",
            "no listener hostname intersects the route's hostnames",
        ));
    }
    match reason {
        Some((reason, msg)) => conditions.push(accepted(false, reason, msg.to_owned())),
        None => conditions.push(accepted(true, "Accepted", String::new())),
    }
    set_condition(&mut conditions, resolved);
    conditions
}

/// Builds a Gateway's resources from its attached routes, and its status.
fn build_gateway(
    gateway: &GatewayView<'_>,
    compiled: &BTreeMap<RouteId, CompiledRoute>,
) -> (
    crate::translator::ResourceSet,
    GatewayStatus,
    BTreeMap<ObjectRef, ListenerSetStatus>,
) {
    let mut resources = ResourceSet::new();
    let mut status = GatewayStatus {
        generation: gateway.generation,
        ..GatewayStatus::default()
    };
    // Listeners sharing a port share a socket; their hostnames become virtual hosts.
    let mut ports = PortRoutes::new();
    // Listener statuses, in listener order, with the ListenerSet they belong to.
    let mut listener_statuses: Vec<(Option<&ObjectRef>, ListenerStatus)> = Vec::new();
    for listener in &gateway.listeners {
        let spec = &listener.spec;
        let owner = listener.owner.as_ref();
        let mut conditions = Vec::new();
        let g = gateway.generation;
        let port = u32::try_from(spec.port)
            .ok()
            .filter(|p| (1..=65535).contains(p));
        if let Some(p) = &listener.problem {
            if let Some(reason) = p.conflict {
                conditions.push(Condition::new(
                    "Conflicted",
                    true,
                    reason,
                    p.message.clone(),
                    g,
                ));
            }
            conditions.push(match p.not_accepted {
                Some(reason) => Condition::new("Accepted", false, reason, p.message.clone(), g),
                None => Condition::new("Accepted", true, "Accepted", "", g),
            });
            conditions.push(match p.unresolved {
                Some(reason) => Condition::new("ResolvedRefs", false, reason, p.message.clone(), g),
                None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g),
            });
            conditions.push(Condition::new(
                "Programmed",
                false,
                "Invalid",
                p.message.clone(),
                g,
            ));
            let kinds = if p.routes_supported {
                listener_kinds(spec, listener.route_kinds).0
            } else {
                vec![]
            };
            listener_statuses.push((
                owner,
                ListenerStatus {
                    name: spec.name.clone(),
                    attached_routes: 0,
                    supported_kinds: kinds,
                    conditions,
                },
            ));
            continue;
        }
        let Some(port) = port else { continue };
        let entry = ports.entry(port).or_insert_with(|| PortListeners {
            protocol: listener.protocol,
            ..Default::default()
        });
        if entry.protocol != listener.protocol {
            // Two protocols on one port cannot share a socket; the first listener keeps it.
            let msg = format!("port {port} is already used with another protocol");
            conditions.push(Condition::new(
                "Conflicted",
                true,
                "ProtocolConflict",
                msg.clone(),
                g,
            ));
            conditions.push(Condition::new(
                "Accepted",
                false,
                "PortUnavailable",
                msg.clone(),
                g,
            ));
            conditions.push(Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g));
            conditions.push(Condition::new("Programmed", false, "Invalid", msg, g));
            listener_statuses.push((
                owner,
                ListenerStatus {
                    name: spec.name.clone(),
                    attached_routes: 0,
                    supported_kinds: vec![],
                    conditions,
                },
            ));
            continue;
        }
        entry
            .certificates
            .extend(listener.certificates.iter().cloned());
        entry.client_validation = entry
            .client_validation
            .take()
            .or_else(|| listener.client_validation.clone());
        let (hostnames, vhosts) = (&mut entry.hostnames, &mut entry.vhosts);
        if let Some(h) = &spec.hostname {
            hostnames.push(h.to_ascii_lowercase());
            // Listener isolation: a request for this listener's hostname is this listener's,
            // even when it has no routes (then 404), never another listener's "*".
            vhosts.entry(h.to_ascii_lowercase()).or_default();
        }
        for (hosts, route) in &listener.attached {
            let Some(route) = compiled.get(route) else {
                continue;
            };
            for host in hosts {
                vhosts
                    .entry(host.clone())
                    .or_default()
                    .extend(route.entries.iter().cloned());
            }
            let clusters = resources.entry(ResourceType::Cluster).or_default();
            for backend in &route.backends {
                let mut cluster = backend.cluster.clone();
                if let (Some(tls), Some(Ok(cert))) =
                    (&mut cluster.tls, &gateway.backend_client_certificate)
                {
                    tls.client_certificate = Some(cert.clone());
                }
                clusters.insert(cluster.name.clone(), Payload::Cluster(cluster));
            }
            let endpoints = resources.entry(ResourceType::Endpoints).or_default();
            for backend in &route.backends {
                endpoints.insert(
                    backend.endpoints.cluster.clone(),
                    Payload::Endpoints(backend.endpoints.clone()),
                );
            }
        }
        let routes: BTreeSet<&RouteId> = listener.attached.iter().map(|(_, r)| r).collect();
        let (kinds, valid_kinds) = listener_kinds(spec, listener.route_kinds);
        conditions.push(Condition::new("Conflicted", false, "NoConflicts", "", g));
        conditions.push(Condition::new("Accepted", true, "Accepted", "", g));
        conditions.push(Condition::new("Programmed", true, "Programmed", "", g));
        conditions.push(if valid_kinds {
            Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g)
        } else {
            Condition::new(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                format!(
                    "supported route kinds: {}",
                    listener
                        .route_kinds
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                g,
            )
        });
        listener_statuses.push((
            owner,
            ListenerStatus {
                name: spec.name.clone(),
                attached_routes: i32::try_from(routes.len()).unwrap_or(i32::MAX),
                supported_kinds: kinds,
                conditions,
            },
        ));
    }
    let mut set_statuses = listener_set_statuses(gateway, &listener_statuses);
    status.listeners = listener_statuses
        .into_iter()
        .filter(|(owner, _)| owner.is_none())
        .map(|(_, l)| l)
        .collect();
    status.attached_listener_sets = i32::try_from(
        gateway
            .listener_sets
            .iter()
            .filter(|s| s.allowed.is_ok())
            .count(),
    )
    .unwrap_or(i32::MAX);
    for (
        port,
        PortListeners {
            protocol,
            mut hostnames,
            vhosts,
            certificates,
            client_validation,
        },
    ) in ports
    {
        let name = match protocol {
            ListenerProtocol::Https => format!("https-{port}"),
            ListenerProtocol::TlsPassthrough => format!("tls-{port}"),
            _ => format!("http-{port}"),
        };
        hostnames.sort();
        hostnames.dedup();
        let virtual_hosts = vhosts
            .into_iter()
            .map(|(domain, mut entries)| {
                entries.sort();
                VirtualHost {
                    name: domain.clone(),
                    domains: vec![domain],
                    rules: entries.into_iter().map(|e| e.rule).collect(),
                }
            })
            .collect();
        let listener = Listener {
            name: name.clone(),
            port,
            protocol: protocol as i32,
            hostnames,
            route_table: name.clone(),
            certificates,
            client_validation,
        };
        resources
            .entry(ResourceType::Listener)
            .or_default()
            .insert(name.clone(), Payload::Listener(listener));
        // Session keys are the cache's to add: the translator has no secrets.
        let table = RouteTable {
            name: name.clone(),
            virtual_hosts,
            session_keys: Vec::new(),
        };
        resources
            .entry(ResourceType::RouteTable)
            .or_default()
            .insert(name, Payload::RouteTable(table));
    }
    let accepted_listener =
        |l: &ListenerView<'_>| l.problem.as_ref().is_none_or(|p| p.not_accepted.is_none());
    // The Gateway's own listeners decide its Accepted; a ListenerSet's decide the set's.
    let own = || gateway.listeners.iter().filter(|l| l.owner.is_none());
    let any_valid = own().any(accepted_listener);
    let all_valid = own().all(accepted_listener);
    let g = gateway.generation;
    let accepted = if let Some(reason) = &gateway.invalid_parameters {
        Condition::new("Accepted", false, "InvalidParameters", reason.clone(), g)
    } else if let Err(message) = &gateway.addresses {
        Condition::new("Accepted", false, "UnsupportedAddress", message.clone(), g)
    } else if !any_valid {
        Condition::new(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid",
            g,
        )
    } else if !all_valid {
        Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            "some listeners are invalid",
            g,
        )
    } else {
        Condition::new("Accepted", true, "Accepted", "", g)
    };
    let programmed = accepted.is_true() && gateway.listeners.iter().any(|l| l.valid);
    status.requested_addresses = gateway.addresses.clone().unwrap_or_default();
    status.service_addresses = gateway.service_addresses.clone();
    if gateway.insecure_frontend_validation {
        status.conditions.push(Condition::new(
            "InsecureFrontendValidationMode",
            true,
            "ConfigurationChanged",
            "some ports accept clients without a valid certificate (AllowInsecureFallback)",
            g,
        ));
    }
    status.conditions.push(accepted);
    match &gateway.backend_client_certificate {
        Some(Err((reason, message))) => status.conditions.push(Condition::new(
            "ResolvedRefs",
            false,
            reason,
            message.clone(),
            g,
        )),
        Some(Ok(_)) => {
            status
                .conditions
                .push(Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g));
        }
        None => {}
    }
    status.conditions.push(if programmed {
        Condition::new("Programmed", true, "Programmed", "", g)
    } else {
        Condition::new(
            "Programmed",
            false,
            "Invalid",
            "the Gateway is not accepted",
            g,
        )
    });
    if !programmed {
        resources.clear();
        for set in set_statuses.values_mut() {
            for c in &mut set.conditions {
                if c.type_ == "Programmed" {
                    *c = Condition::new(
                        "Programmed",
                        false,
                        "Invalid",
                        "the parent Gateway is not programmed",
                        c.observed_generation,
                    );
                }
            }
        }
    }
    (resources, status, set_statuses)
}

/// The status of each ListenerSet of a Gateway, from its listeners' statuses.
fn listener_set_statuses(
    gateway: &GatewayView<'_>,
    listeners: &[(Option<&ObjectRef>, ListenerStatus)],
) -> BTreeMap<ObjectRef, ListenerSetStatus> {
    let mut out = BTreeMap::new();
    for set in &gateway.listener_sets {
        let g = set.generation;
        let mine: Vec<ListenerStatus> = listeners
            .iter()
            .filter(|(owner, _)| *owner == Some(&set.key))
            .map(|(_, l)| l.clone())
            .collect();
        let conditions = match &set.allowed {
            Err(message) => vec![
                Condition::new("Accepted", false, "NotAllowed", message.clone(), g),
                Condition::new("Programmed", false, "NotAllowed", message.clone(), g),
            ],
            Ok(()) => {
                let accepted = |l: &ListenerStatus| {
                    l.conditions
                        .iter()
                        .any(|c| c.type_ == "Accepted" && c.is_true())
                };
                if mine.iter().all(accepted) {
                    vec![
                        Condition::new("Accepted", true, "Accepted", "", g),
                        Condition::new("Programmed", true, "Programmed", "", g),
                    ]
                } else if mine.iter().any(accepted) {
                    vec![
                        Condition::new(
                            "Accepted",
                            true,
                            "ListenersNotValid",
                            "some listeners are invalid",
                            g,
                        ),
                        Condition::new("Programmed", true, "Programmed", "", g),
                    ]
                } else {
                    vec![
                        Condition::new(
                            "Accepted",
                            false,
                            "ListenersNotValid",
                            "no listener is valid",
                            g,
                        ),
                        Condition::new(
                            "Programmed",
                            false,
                            "ListenersNotValid",
                            "no listener is valid",
                            g,
                        ),
                    ]
                }
            }
        };
        out.insert(
            set.key.clone(),
            ListenerSetStatus {
                generation: g,
                conditions,
                listeners: mine,
            },
        );
    }
    out
}

/// BackendTLSPolicy status: every policy naming a Service port that a route attached to one of
/// our Gateways uses gets that Gateway as an ancestor.
fn policy_statuses(
    objects: &ObjectSet,
    controller_name: &str,
    gateways: &BTreeMap<ObjectRef, GatewayView<'_>>,
    compiled: &BTreeMap<RouteId, CompiledRoute>,
    out: &mut StatusReport,
) {
    for backend in compiled.values().flat_map(|c| &c.backends) {
        let service = &backend.service_port.0;
        let problems = objects
            .services
            .get(service)
            .map(|s| service_policy::from_annotations(s.metadata.annotations.as_ref()).problems)
            .unwrap_or_default();
        if !problems.is_empty() {
            out.service_annotations.insert(service.clone(), problems);
        }
    }
    for (gw_key, gateway) in gateways {
        let used: BTreeSet<backend_tls::ServicePortKey> = gateway
            .listeners
            .iter()
            .flat_map(|l| &l.attached)
            .filter_map(|(_, route)| compiled.get(route))
            .flat_map(|c| &c.backends)
            .map(|b| b.service_port.clone())
            .collect();
        for policy in backend_tls::policies_targeting(objects, &used) {
            let entry = out
                .backend_tls_policies
                .entry(policy.clone())
                .or_insert_with(|| PolicyStatus {
                    generation: objects
                        .backend_tls_policies
                        .get(policy)
                        .map_or(0, |p| generation(&p.metadata)),
                    ancestors: Vec::new(),
                });
            entry.ancestors.push(RouteParentStatus {
                parent_ref: ParentRef {
                    group: GATEWAY_GROUP.to_owned(),
                    kind: "Gateway".to_owned(),
                    namespace: gw_key.namespace.clone(),
                    name: gw_key.name.clone(),
                    section_name: None,
                    port: None,
                },
                controller_name: controller_name.to_owned(),
                conditions: backend_tls::conditions(objects, policy),
            });
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod golden_tests;
