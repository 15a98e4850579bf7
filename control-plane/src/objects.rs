//! The set of Kubernetes objects the translator reads, keyed by namespace and name.
//! Every source (directory of YAML, Kubernetes watches) fills one of these.

use std::fmt;
use std::sync::Arc;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::xbackendtrafficpolicies::XBackendTrafficPolicy;

use crate::crds::backend_policy::BackendPolicy;
use crate::crds::direct_response::DirectResponse;
use crate::crds::rate_limit_policy::RateLimitPolicy;
use crate::crds::response_cache::ResponseCache;
use crate::crds::security_policy::SecurityPolicy;
use crate::crds::traffic_policy::TrafficPolicy;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::tcproutes::TcpRoute;
use gateway_api::experimental::udproutes::UdpRoute;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::listenersets::ListenerSet;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Namespace and name of an object; the namespace is empty for cluster-scoped kinds. Shared
/// strings: a translation copies each route's key several times over (its compiled form,
/// its status, the memos), thousands of routes at a time, and a copy is then a count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// What an [`ObjectRef`]'s namespace or name may be made from.
pub trait NamePart {
    fn into_name(self) -> Arc<str>;
}

impl NamePart for &str {
    fn into_name(self) -> Arc<str> {
        if self.is_empty() {
            // Every cluster-scoped key has it: one allocation for all.
            static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
            return Arc::clone(&EMPTY);
        }
        Arc::from(self)
    }
}

impl NamePart for &String {
    fn into_name(self) -> Arc<str> {
        self.as_str().into_name()
    }
}

impl NamePart for String {
    fn into_name(self) -> Arc<str> {
        self.as_str().into_name()
    }
}

impl NamePart for Arc<str> {
    fn into_name(self) -> Arc<str> {
        self
    }
}

impl NamePart for &Arc<str> {
    fn into_name(self) -> Arc<str> {
        Arc::clone(self)
    }
}

impl ObjectRef {
    pub fn new(namespace: impl NamePart, name: impl NamePart) -> Self {
        ObjectRef {
            namespace: namespace.into_name(),
            name: name.into_name(),
        }
    }

    /// Parses "namespace/name".
    pub fn parse(s: &str) -> Option<ObjectRef> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .then(|| ObjectRef::new(ns, name))
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The object kinds RAUTA reads, in one table: each row gives the `Kind` variant (also the
/// `Object` variant), the `ObjectSet` field, the Rust type, the API group and kind as
/// manifests write them, and whether objects of the kind are namespaced. Every per-kind
/// `match` below is generated from it, so adding a kind is adding a row (and reading it in
/// the translator).
macro_rules! object_kinds {
    ($($variant:ident, $field:ident, $ty:ty, $group:literal, $kind:literal, $namespaced:literal;)*) => {
        /// The object kinds RAUTA reads.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind {
            $($variant,)*
        }

        impl Kind {
            pub const ALL: [Kind; [$(Kind::$variant),*].len()] = [$(Kind::$variant),*];

            /// Recognises a manifest by apiVersion and kind.
            pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
                let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
                match (group, kind) {
                    $(($group, $kind) => Some(Kind::$variant),)*
                    _ => None,
                }
            }

            /// The kind of a name as status and manifests write it (names are unique across
            /// the groups RAUTA reads).
            pub fn from_name(kind: &str) -> Option<Kind> {
                match kind {
                    $($kind => Some(Kind::$variant),)*
                    _ => None,
                }
            }

            pub fn is_namespaced(self) -> bool {
                match self {
                    $(Kind::$variant => $namespaced,)*
                }
            }

            /// The kind as manifests and status write it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$variant => $kind,)*
                }
            }

            /// Where the API server serves the kind (group, version, plural).
            pub fn api_resource(self) -> kube::api::ApiResource {
                let mut api = match self {
                    $(Kind::$variant => kube::api::ApiResource::erase::<$ty>(&()),)*
                };
                served_version(self, &mut api);
                api
            }
        }

        /// All objects known to a source, one map per kind.
        #[derive(Debug, Clone, Default)]
        pub struct ObjectSet {
            $(pub $field: KindMap<$ty>,)*
        }

        /// One decoded object of any supported kind.
        #[derive(Debug, Clone)]
        pub enum Object {
            $($variant(Arc<$ty>),)*
        }

        impl Object {
            /// Decodes a manifest of a known kind. Namespaced objects without a namespace get
            /// "default", as `kubectl apply` would.
            pub fn decode(kind: Kind, key: &ObjectRef, mut value: Value) -> Result<Object, ObjectError> {
                if kind.is_namespaced()
                    && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    meta.insert("namespace".into(), Value::String(key.namespace.to_string()));
                }
                fn de<T: DeserializeOwned>(
                    kind: Kind,
                    key: &ObjectRef,
                    v: Value,
                ) -> Result<Arc<T>, ObjectError> {
                    serde_json::from_value(v)
                        .map(Arc::new)
                        .map_err(|source| ObjectError::invalid(kind, key, &source))
                }
                Ok(match kind {
                    $(Kind::$variant => Object::$variant(de(kind, key, value)?),)*
                })
            }

            pub fn kind(&self) -> Kind {
                match self {
                    $(Object::$variant(_) => Kind::$variant,)*
                }
            }

            /// Whether the two are the same object or equal ones.
            pub fn same(&self, other: &Object) -> bool {
                match (self, other) {
                    $((Object::$variant(a), Object::$variant(b)) => Arc::ptr_eq(a, b) || a == b,)*
                    _ => false,
                }
            }
        }

        impl ObjectSet {
            /// Adds or replaces an object. Returns false if an object of that kind and key
            /// already existed.
            pub fn insert(&mut self, key: ObjectRef, object: Object) -> bool {
                match object {
                    $(Object::$variant(o) => self.$field.insert(key, o).is_none(),)*
                }
            }

            /// Removes an object; returns whether it was there.
            pub fn remove(&mut self, kind: Kind, key: &ObjectRef) -> bool {
                match kind {
                    $(Kind::$variant => self.$field.remove(key).is_some(),)*
                }
            }

            /// One object, if present.
            pub fn get(&self, kind: Kind, key: &ObjectRef) -> Option<Object> {
                match kind {
                    $(Kind::$variant => self.$field.get(key).cloned().map(Object::$variant),)*
                }
            }

            /// The keys of every object of one kind.
            pub fn keys(&self, kind: Kind) -> Vec<ObjectRef> {
                match kind {
                    $(Kind::$variant => self.$field.keys().cloned().collect(),)*
                }
            }

            /// Total number of objects.
            pub fn len(&self) -> usize {
                0 $(+ self.$field.len())*
            }

            /// Whether the two sets hold the same objects of every kind `compared` selects
            /// (the same object or an equal one).
            pub fn same_kinds(&self, other: &ObjectSet, compared: impl Fn(Kind) -> bool) -> bool {
                true $(&& (!compared(Kind::$variant) || same(&self.$field, &other.$field)))*
            }

            /// The objects of the kinds `kept` selects; the other kinds are empty. Objects are
            /// shared, not copied.
            pub fn only(&self, kept: impl Fn(Kind) -> bool) -> ObjectSet {
                ObjectSet {
                    $($field: if kept(Kind::$variant) { self.$field.clone() } else { KindMap::new() },)*
                }
            }
        }
    };
}

object_kinds! {
    GatewayClass, gateway_classes, GatewayClass, "gateway.networking.k8s.io", "GatewayClass", false;
    Gateway, gateways, Gateway, "gateway.networking.k8s.io", "Gateway", true;
    HttpRoute, http_routes, HttpRoute, "gateway.networking.k8s.io", "HTTPRoute", true;
    ReferenceGrant, reference_grants, ReferenceGrant, "gateway.networking.k8s.io", "ReferenceGrant", true;
    Service, services, Service, "", "Service", true;
    EndpointSlice, endpoint_slices, EndpointSlice, "discovery.k8s.io", "EndpointSlice", true;
    Secret, secrets, Secret, "", "Secret", true;
    Namespace, namespaces, Namespace, "", "Namespace", false;
    ConfigMap, config_maps, ConfigMap, "", "ConfigMap", true;
    BackendTlsPolicy, backend_tls_policies, BackendTlsPolicy, "gateway.networking.k8s.io", "BackendTLSPolicy", true;
    ListenerSet, listener_sets, ListenerSet, "gateway.networking.k8s.io", "ListenerSet", true;
    TlsRoute, tls_routes, TlsRoute, "gateway.networking.k8s.io", "TLSRoute", true;
    GrpcRoute, grpc_routes, GrpcRoute, "gateway.networking.k8s.io", "GRPCRoute", true;
    TcpRoute, tcp_routes, TcpRoute, "gateway.networking.k8s.io", "TCPRoute", true;
    UdpRoute, udp_routes, UdpRoute, "gateway.networking.k8s.io", "UDPRoute", true;
    DirectResponse, direct_responses, DirectResponse, "gateway.rauta.dev", "DirectResponse", true;
    ResponseCache, response_caches, ResponseCache, "gateway.rauta.dev", "ResponseCache", true;
    RateLimitPolicy, rate_limit_policies, RateLimitPolicy, "gateway.rauta.dev", "RateLimitPolicy", true;
    SecurityPolicy, security_policies, SecurityPolicy, "gateway.rauta.dev", "SecurityPolicy", true;
    BackendPolicy, backend_policies, BackendPolicy, "gateway.rauta.dev", "BackendPolicy", true;
    TrafficPolicy, traffic_policies, TrafficPolicy, "gateway.rauta.dev", "TrafficPolicy", true;
    XBackendTrafficPolicy, x_backend_traffic_policies, XBackendTrafficPolicy, "gateway.networking.x-k8s.io", "XBackendTrafficPolicy", true;
}

/// TCPRoute and UDPRoute are served as `v1` since Gateway API v1.6 (the conformance manifests
/// use it), while the gateway-api crate's types still say `v1alpha2`; their schema is the same.
fn served_version(kind: Kind, api: &mut kube::api::ApiResource) {
    if matches!(kind, Kind::TcpRoute | Kind::UdpRoute) {
        api.version = "v1".to_owned();
        api.api_version = format!("{}/v1", api.group);
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a manifest could not become an object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("document is not a mapping with apiVersion and kind")]
    NoTypeMeta,
    #[error("metadata.name is missing")]
    NoName,
    #[error("invalid {kind} {name}: {reason}")]
    Invalid {
        kind: Kind,
        name: String,
        /// For a Secret, with every quoted value taken out: the reasons serde gives quote
        /// the values they could not take, and a Secret's are keys and passwords.
        reason: String,
    },
}

impl ObjectError {
    /// A decoding error of `kind` object `name`, fit to log and to show in status.
    pub fn invalid(kind: Kind, name: &ObjectRef, source: &serde_json::Error) -> ObjectError {
        let reason = source.to_string();
        ObjectError::Invalid {
            kind,
            name: name.to_string(),
            reason: if kind == Kind::Secret {
                without_quoted(&reason)
            } else {
                reason
            },
        }
    }
}

/// `text` with everything between double quotes, single quotes or backticks replaced by
/// `[redacted]`.
pub fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str(rauta_common::redact::REDACTED);
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' || c == '\'' {
                    quote = Some(c);
                }
            }
        }
    }
    if quote.is_some() {
        out.push_str(rauta_common::redact::REDACTED);
    }
    out
}

/// Equal maps. A kind no change touched is the very same map (a shared copy), and is not
/// read; objects a source did not re-read are the same allocation, so the other comparisons
/// are mostly a pointer check rather than a walk through a large spec. (`OrdMap::diff` would
/// skip shared parts of the tree, but compares the objects of a changed leaf in full.)
fn same<T: PartialEq>(a: &KindMap<T>, b: &KindMap<T>) -> bool {
    a.ptr_eq(b)
        || (a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb)))
}

/// One kind's objects by key. A persistent map: a copy is a pointer, and a change to one
/// copy copies only the path to what changed. Sources hand the publisher a copy of
/// everything they know after each change, and the publisher keeps the last one to compare
/// with; with an ordinary map each of those copies cost as much as a large part of a
/// translation.
pub type KindMap<T> = imbl::OrdMap<ObjectRef, Arc<T>>;

/// The kind and key a manifest claims, readable even when the rest of it is invalid.
pub fn identify(value: &Value) -> Result<(Option<Kind>, ObjectRef), ObjectError> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or(ObjectError::NoTypeMeta)?;
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(ObjectError::NoTypeMeta)?;
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .ok_or(ObjectError::NoName)?;
    let kind = Kind::from_type_meta(api_version, kind);
    let namespace = match kind {
        Some(k) if !k.is_namespaced() => "",
        _ => meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default"),
    };
    Ok((kind, ObjectRef::new(namespace, name)))
}

impl ObjectSet {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether nothing at all differs.
    pub fn same_as(&self, other: &ObjectSet) -> bool {
        self.same_kinds(other, |_| true)
    }

    /// Whether the two sets differ at most in their EndpointSlices: such a change moves
    /// endpoints only, and takes the fast path that does not re-translate routes.
    pub fn same_except_endpoints(&self, other: &ObjectSet) -> bool {
        self.same_kinds(other, |kind| kind != Kind::EndpointSlice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identify_defaults_namespace_and_ignores_it_for_cluster_scoped() {
        let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}});
        assert_eq!(
            identify(&route).unwrap(),
            (Some(Kind::HttpRoute), ObjectRef::new("default", "r"))
        );
        let class = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "c", "namespace": "x"}});
        assert_eq!(
            identify(&class).unwrap(),
            (Some(Kind::GatewayClass), ObjectRef::new("", "c"))
        );
        let other =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
        assert_eq!(identify(&other).unwrap().0, None);
        assert!(matches!(
            identify(&json!({"kind": "Service"})),
            Err(ObjectError::NoTypeMeta)
        ));
    }

    #[test]
    fn every_kind_is_recognised_by_the_api_version_of_its_type() {
        for kind in Kind::ALL {
            let api = kind.api_resource();
            assert_eq!(api.kind, kind.name());
            assert_eq!(
                Kind::from_type_meta(&api.api_version, kind.name()),
                Some(kind)
            );
        }
    }

    #[test]
    fn decode_reports_schema_errors_with_the_object_name() {
        let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": "nope"}});
        let (kind, key) = identify(&bad).unwrap();
        let err = Object::decode(kind.unwrap(), &key, bad)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid Service default/s:"), "{err}");
    }
}
