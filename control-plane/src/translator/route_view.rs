//! Routes of every kind RAUTA serves, read as one shape: what attachment needs (parentRefs,
//! hostnames, generation) and the rules to compile, in the HTTPRoute rule shape that
//! `routes.rs` compiles. An HTTPRoute's rules are borrowed; those of a TLSRoute, TCPRoute or
//! UDPRoute (backendRefs only) are built field by field; a GRPCRoute's become HTTP rules in
//! `grpc.rs`. A route whose rules
//! cannot be read is still attached, and its status says why it is not accepted.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_api::experimental::httproutes::{HttpRoute, HttpRouteRules, HttpRouteRulesBackendRefs};
use gateway_api::experimental::tcproutes::TcpRoute;
use gateway_api::experimental::udproutes::UdpRoute;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::tlsroutes::TlsRoute;

use super::backends::Referrer;
use super::grpc;
use super::references::GATEWAY_GROUP;
use super::status::{ParentRef, generation_of};
use crate::objects::{ObjectRef, ObjectSet};

/// The route kinds RAUTA serves; a listener serves the kinds of its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Tls,
    Grpc,
    Tcp,
    Udp,
}

impl RouteKind {
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
        }
    }

    /// How the route's backends are referred to (ReferenceGrant `from`, HTTP/2 for gRPC).
    pub fn referrer(self) -> Referrer {
        Referrer {
            kind: self.name(),
            grpc: self == RouteKind::Grpc,
        }
    }
}

/// A route of any kind (an HTTPRoute and a TLSRoute may share a name).
pub type RouteId = (RouteKind, ObjectRef);

/// The object a route view reads, whichever its kind.
#[derive(Debug, Clone)]
pub enum RouteObject {
    Http(Arc<HttpRoute>),
    Tls(Arc<TlsRoute>),
    Grpc(Arc<GrpcRoute>),
    Tcp(Arc<TcpRoute>),
    Udp(Arc<UdpRoute>),
}

impl RouteObject {
    /// Whether the two are the same route object or equal ones.
    pub fn same(&self, other: &RouteObject) -> bool {
        fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        match (self, other) {
            (RouteObject::Http(a), RouteObject::Http(b)) => same(a, b),
            (RouteObject::Tls(a), RouteObject::Tls(b)) => same(a, b),
            (RouteObject::Grpc(a), RouteObject::Grpc(b)) => same(a, b),
            (RouteObject::Tcp(a), RouteObject::Tcp(b)) => same(a, b),
            (RouteObject::Udp(a), RouteObject::Udp(b)) => same(a, b),
            _ => false,
        }
    }
}

/// One route as attachment and compilation read it.
pub struct RouteView<'a> {
    pub kind: RouteKind,
    pub key: &'a ObjectRef,
    /// The object everything below is read from.
    pub object: RouteObject,
    pub generation: i64,
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    /// Every parentRef, with defaults made explicit (group, kind, the route's namespace).
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: &'a [String],
    /// The rules in HTTPRoute shape, or why they cannot be read as such (reported as
    /// Accepted=False, UnsupportedValue).
    pub rules: Result<Cow<'a, [HttpRouteRules]>, String>,
}

impl RouteView<'_> {
    pub fn id(&self) -> RouteId {
        (self.kind, self.key.clone())
    }
}

/// Makes a parentRef's defaults explicit. The parentRef types of the route kinds are distinct
/// generated structs with the same fields.
macro_rules! explicit_parent_ref {
    ($p:expr, $route_namespace:expr) => {
        ParentRef {
            group: $p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.to_owned()),
            kind: $p.kind.clone().unwrap_or_else(|| "Gateway".to_owned()),
            namespace: $p
                .namespace
                .clone()
                .unwrap_or_else(|| $route_namespace.to_string()),
            name: $p.name.clone(),
            section_name: $p.section_name.clone(),
            port: $p.port,
        }
    };
}

/// The rules of a route kind whose rules name backends only (TLSRoute, TCPRoute, UDPRoute), as
/// HTTP rules that match every request. Their rule and backendRef types are distinct generated
/// structs with the same fields.
macro_rules! backend_only_rules {
    ($rules:expr) => {
        $rules
            .iter()
            .map(|rule| HttpRouteRules {
                name: rule.name.clone(),
                backend_refs: Some(
                    rule.backend_refs
                        .iter()
                        .map(|b| HttpRouteRulesBackendRefs {
                            group: b.group.clone(),
                            kind: b.kind.clone(),
                            name: b.name.clone(),
                            namespace: b.namespace.clone(),
                            port: b.port,
                            weight: b.weight,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
}

/// A route of the object set, before its view is read: the view (parentRefs, rules in HTTP
/// shape) costs allocations a route whose attachment is reused does not need.
#[derive(Clone, Copy)]
pub struct RouteEntry<'a> {
    pub key: &'a ObjectRef,
    pub route: RouteRef<'a>,
}

/// A route object of the object set, whichever its kind.
#[derive(Clone, Copy)]
pub enum RouteRef<'a> {
    Http(&'a Arc<HttpRoute>),
    Tls(&'a Arc<TlsRoute>),
    Grpc(&'a Arc<GrpcRoute>),
    Tcp(&'a Arc<TcpRoute>),
    Udp(&'a Arc<UdpRoute>),
}

impl<'a> RouteEntry<'a> {
    pub fn kind(&self) -> RouteKind {
        match self.route {
            RouteRef::Http(_) => RouteKind::Http,
            RouteRef::Tls(_) => RouteKind::Tls,
            RouteRef::Grpc(_) => RouteKind::Grpc,
            RouteRef::Tcp(_) => RouteKind::Tcp,
            RouteRef::Udp(_) => RouteKind::Udp,
        }
    }

    pub fn id(&self) -> RouteId {
        (self.kind(), self.key.clone())
    }

    /// Whether `object` is this route's object or an equal one.
    pub fn is(&self, object: &RouteObject) -> bool {
        fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        match (self.route, object) {
            (RouteRef::Http(a), RouteObject::Http(b)) => same(a, b),
            (RouteRef::Tls(a), RouteObject::Tls(b)) => same(a, b),
            (RouteRef::Grpc(a), RouteObject::Grpc(b)) => same(a, b),
            (RouteRef::Tcp(a), RouteObject::Tcp(b)) => same(a, b),
            (RouteRef::Udp(a), RouteObject::Udp(b)) => same(a, b),
            _ => false,
        }
    }

    pub fn view(&self) -> RouteView<'a> {
        match self.route {
            RouteRef::Http(r) => http(self.key, r),
            RouteRef::Tls(r) => tls(self.key, r),
            RouteRef::Grpc(r) => grpc(self.key, r),
            RouteRef::Tcp(r) => tcp(self.key, r),
            RouteRef::Udp(r) => udp(self.key, r),
        }
    }
}

/// Every route of the object set: HTTPRoutes, TLSRoutes, GRPCRoutes, TCPRoutes, then
/// UDPRoutes, each by key; that is, in `RouteId` order.
pub fn all(objects: &ObjectSet) -> Vec<RouteEntry<'_>> {
    let entry = |(key, route)| RouteEntry { key, route };
    let http = objects
        .http_routes
        .iter()
        .map(|(k, r)| (k, RouteRef::Http(r)));
    let tls = objects
        .tls_routes
        .iter()
        .map(|(k, r)| (k, RouteRef::Tls(r)));
    let grpc = objects
        .grpc_routes
        .iter()
        .map(|(k, r)| (k, RouteRef::Grpc(r)));
    let tcp = objects
        .tcp_routes
        .iter()
        .map(|(k, r)| (k, RouteRef::Tcp(r)));
    let udp = objects
        .udp_routes
        .iter()
        .map(|(k, r)| (k, RouteRef::Udp(r)));
    http.chain(tls)
        .chain(grpc)
        .chain(tcp)
        .chain(udp)
        .map(entry)
        .collect()
}

/// A route's view: what every kind shares (key, generation, creation time, parentRefs with
/// their defaults made explicit) and its own hostnames and rules. The route kinds are distinct
/// generated structs with the same metadata and parentRef fields.
macro_rules! route_view {
    ($kind:ident, $key:expr, $route:expr, $hostnames:expr, $rules:expr) => {
        RouteView {
            kind: RouteKind::$kind,
            key: $key,
            object: RouteObject::$kind(Arc::clone($route)),
            generation: generation_of(&$route.metadata),
            created: $route.metadata.creation_timestamp.as_ref().map(|t| t.0),
            parent_refs: $route
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(|p| explicit_parent_ref!(p, $key.namespace))
                .collect(),
            hostnames: $hostnames,
            rules: $rules,
        }
    };
}

fn http<'a>(key: &'a ObjectRef, route: &'a Arc<HttpRoute>) -> RouteView<'a> {
    let hostnames = route.spec.hostnames.as_deref().unwrap_or_default();
    let rules = Cow::Borrowed(route.spec.rules.as_deref().unwrap_or_default());
    route_view!(Http, key, route, hostnames, Ok(rules))
}

fn grpc<'a>(key: &'a ObjectRef, route: &'a Arc<GrpcRoute>) -> RouteView<'a> {
    let hostnames = route.spec.hostnames.as_deref().unwrap_or_default();
    let rules = grpc::as_http_rules(route)
        .map(Cow::Owned)
        .map_err(|e| e.to_string());
    route_view!(Grpc, key, route, hostnames, rules)
}

/// A TLSRoute rule names backends only: as an HTTP rule it matches every request.
fn tls<'a>(key: &'a ObjectRef, route: &'a Arc<TlsRoute>) -> RouteView<'a> {
    let rules = Cow::Owned(backend_only_rules!(route.spec.rules));
    route_view!(Tls, key, route, &route.spec.hostnames, Ok(rules))
}

/// A TCPRoute: no hostnames, rules that name backends.
fn tcp<'a>(key: &'a ObjectRef, route: &'a Arc<TcpRoute>) -> RouteView<'a> {
    let rules = Cow::Owned(backend_only_rules!(route.spec.rules));
    route_view!(Tcp, key, route, &[], Ok(rules))
}

/// A UDPRoute: no hostnames, rules that name backends.
fn udp<'a>(key: &'a ObjectRef, route: &'a Arc<UdpRoute>) -> RouteView<'a> {
    let rules = Cow::Owned(backend_only_rules!(route.spec.rules));
    route_view!(Udp, key, route, &[], Ok(rules))
}
