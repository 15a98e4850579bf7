//! The set of Kubernetes objects the translator reads, keyed by namespace and name.
//! Every source (directory of YAML, Kubernetes watches) fills one of these.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::httproutes::HttpRoute;
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

/// Namespace and name of an object; the namespace is empty for cluster-scoped kinds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
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

/// The object kinds RAUTA reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    ReferenceGrant,
    Service,
    EndpointSlice,
    Secret,
    Namespace,
    ConfigMap,
    BackendTlsPolicy,
    ListenerSet,
    TlsRoute,
    GrpcRoute,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::ReferenceGrant,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
        Kind::Namespace,
        Kind::ConfigMap,
        Kind::BackendTlsPolicy,
        Kind::ListenerSet,
        Kind::TlsRoute,
        Kind::GrpcRoute,
    ];

    /// Recognises a manifest by apiVersion and kind.
    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        match (group, kind) {
            ("gateway.networking.k8s.io", "GatewayClass") => Some(Kind::GatewayClass),
            ("gateway.networking.k8s.io", "Gateway") => Some(Kind::Gateway),
            ("gateway.networking.k8s.io", "HTTPRoute") => Some(Kind::HttpRoute),
            ("gateway.networking.k8s.io", "ReferenceGrant") => Some(Kind::ReferenceGrant),
            ("", "Service") => Some(Kind::Service),
            ("discovery.k8s.io", "EndpointSlice") => Some(Kind::EndpointSlice),
            ("", "Secret") => Some(Kind::Secret),
            ("", "Namespace") => Some(Kind::Namespace),
            ("", "ConfigMap") => Some(Kind::ConfigMap),
            ("gateway.networking.k8s.io", "BackendTLSPolicy") => Some(Kind::BackendTlsPolicy),
            ("gateway.networking.k8s.io", "ListenerSet") => Some(Kind::ListenerSet),
            ("gateway.networking.k8s.io", "TLSRoute") => Some(Kind::TlsRoute),
            ("gateway.networking.k8s.io", "GRPCRoute") => Some(Kind::GrpcRoute),
            _ => None,
        }
    }

    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::GatewayClass | Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Secret => "Secret",
            Kind::Namespace => "Namespace",
            Kind::ConfigMap => "ConfigMap",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",
            Kind::ListenerSet => "ListenerSet",
            Kind::TlsRoute => "TLSRoute",
            Kind::GrpcRoute => "GRPCRoute",
        };
        f.write_str(s)
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

/// All objects known to a source, one map per kind.
#[derive(Debug, Clone, Default)]
pub struct ObjectSet {
    pub gateway_classes: BTreeMap<ObjectRef, Arc<GatewayClass>>,
    pub gateways: BTreeMap<ObjectRef, Arc<Gateway>>,
    pub http_routes: BTreeMap<ObjectRef, Arc<HttpRoute>>,
    pub reference_grants: BTreeMap<ObjectRef, Arc<ReferenceGrant>>,
    pub services: BTreeMap<ObjectRef, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectRef, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<ObjectRef, Arc<Secret>>,
    pub namespaces: BTreeMap<ObjectRef, Arc<Namespace>>,
    pub config_maps: BTreeMap<ObjectRef, Arc<ConfigMap>>,
    pub backend_tls_policies: BTreeMap<ObjectRef, Arc<BackendTlsPolicy>>,
    pub listener_sets: BTreeMap<ObjectRef, Arc<ListenerSet>>,
    pub tls_routes: BTreeMap<ObjectRef, Arc<TlsRoute>>,
    pub grpc_routes: BTreeMap<ObjectRef, Arc<GrpcRoute>>,
}

/// One decoded object of any supported kind.
#[derive(Debug, Clone)]
pub enum Object {
    GatewayClass(Arc<GatewayClass>),
    Gateway(Arc<Gateway>),
    HttpRoute(Arc<HttpRoute>),
    ReferenceGrant(Arc<ReferenceGrant>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<Secret>),
    Namespace(Arc<Namespace>),
    ConfigMap(Arc<ConfigMap>),
    BackendTlsPolicy(Arc<BackendTlsPolicy>),
    ListenerSet(Arc<ListenerSet>),
    TlsRoute(Arc<TlsRoute>),
    GrpcRoute(Arc<GrpcRoute>),
}

/// Equal maps; objects a source did not re-read are the same allocation, so most comparisons
/// are a pointer check rather than a walk through a large spec.
fn same<T: PartialEq>(a: &BTreeMap<ObjectRef, Arc<T>>, b: &BTreeMap<ObjectRef, Arc<T>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
}

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

impl Object {
    /// Decodes a manifest of a known kind. Namespaced objects without a namespace get "default",
    /// as `kubectl apply` would.
    pub fn decode(kind: Kind, key: &ObjectRef, mut value: Value) -> Result<Object, ObjectError> {
        if kind.is_namespaced()
            && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("namespace".into(), Value::String(key.namespace.clone()));
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
            Kind::GatewayClass => Object::GatewayClass(de(kind, key, value)?),
            Kind::Gateway => Object::Gateway(de(kind, key, value)?),
            Kind::HttpRoute => Object::HttpRoute(de(kind, key, value)?),
            Kind::ReferenceGrant => Object::ReferenceGrant(de(kind, key, value)?),
            Kind::Service => Object::Service(de(kind, key, value)?),
            Kind::EndpointSlice => Object::EndpointSlice(de(kind, key, value)?),
            Kind::Secret => Object::Secret(de(kind, key, value)?),
            Kind::Namespace => Object::Namespace(de(kind, key, value)?),
            Kind::ConfigMap => Object::ConfigMap(de(kind, key, value)?),
            Kind::BackendTlsPolicy => Object::BackendTlsPolicy(de(kind, key, value)?),
            Kind::ListenerSet => Object::ListenerSet(de(kind, key, value)?),
            Kind::TlsRoute => Object::TlsRoute(de(kind, key, value)?),
            Kind::GrpcRoute => Object::GrpcRoute(de(kind, key, value)?),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(_) => Kind::Secret,
            Object::Namespace(_) => Kind::Namespace,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
            Object::ListenerSet(_) => Kind::ListenerSet,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
        }
    }
}

impl ObjectSet {
    /// Adds or replaces an object. Returns false if an object of that kind and key already existed.
    pub fn insert(&mut self, key: ObjectRef, object: Object) -> bool {
        match object {
            Object::GatewayClass(o) => self.gateway_classes.insert(key, o).is_none(),
            Object::Gateway(o) => self.gateways.insert(key, o).is_none(),
            Object::HttpRoute(o) => self.http_routes.insert(key, o).is_none(),
            Object::ReferenceGrant(o) => self.reference_grants.insert(key, o).is_none(),
            Object::Service(o) => self.services.insert(key, o).is_none(),
            Object::EndpointSlice(o) => self.endpoint_slices.insert(key, o).is_none(),
            Object::Secret(o) => self.secrets.insert(key, o).is_none(),
            Object::Namespace(o) => self.namespaces.insert(key, o).is_none(),
            Object::ConfigMap(o) => self.config_maps.insert(key, o).is_none(),
            Object::BackendTlsPolicy(o) => self.backend_tls_policies.insert(key, o).is_none(),
            Object::ListenerSet(o) => self.listener_sets.insert(key, o).is_none(),
            Object::TlsRoute(o) => self.tls_routes.insert(key, o).is_none(),
            Object::GrpcRoute(o) => self.grpc_routes.insert(key, o).is_none(),
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn remove(&mut self, kind: Kind, key: &ObjectRef) -> bool {
        match kind {
            Kind::GatewayClass => self.gateway_classes.remove(key).is_some(),
            Kind::Gateway => self.gateways.remove(key).is_some(),
            Kind::HttpRoute => self.http_routes.remove(key).is_some(),
            Kind::ReferenceGrant => self.reference_grants.remove(key).is_some(),
            Kind::Service => self.services.remove(key).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).is_some(),
            Kind::Secret => self.secrets.remove(key).is_some(),
            Kind::Namespace => self.namespaces.remove(key).is_some(),
            Kind::ConfigMap => self.config_maps.remove(key).is_some(),
            Kind::BackendTlsPolicy => self.backend_tls_policies.remove(key).is_some(),
            Kind::ListenerSet => self.listener_sets.remove(key).is_some(),
            Kind::TlsRoute => self.tls_routes.remove(key).is_some(),
            Kind::GrpcRoute => self.grpc_routes.remove(key).is_some(),
        }
    }

    /// One object, if present.
    pub fn get(&self, kind: Kind, key: &ObjectRef) -> Option<Object> {
        match kind {
            Kind::GatewayClass => self
                .gateway_classes
                .get(key)
                .cloned()
                .map(Object::GatewayClass),
            Kind::Gateway => self.gateways.get(key).cloned().map(Object::Gateway),
            Kind::HttpRoute => self.http_routes.get(key).cloned().map(Object::HttpRoute),
            Kind::ReferenceGrant => self
                .reference_grants
                .get(key)
                .cloned()
                .map(Object::ReferenceGrant),
            Kind::Service => self.services.get(key).cloned().map(Object::Service),
            Kind::EndpointSlice => self
                .endpoint_slices
                .get(key)
                .cloned()
                .map(Object::EndpointSlice),
            Kind::Secret => self.secrets.get(key).cloned().map(Object::Secret),
            Kind::Namespace => self.namespaces.get(key).cloned().map(Object::Namespace),
            Kind::ConfigMap => self.config_maps.get(key).cloned().map(Object::ConfigMap),
            Kind::BackendTlsPolicy => self
                .backend_tls_policies
                .get(key)
                .cloned()
                .map(Object::BackendTlsPolicy),
            Kind::ListenerSet => self
                .listener_sets
                .get(key)
                .cloned()
                .map(Object::ListenerSet),
            Kind::TlsRoute => self.tls_routes.get(key).cloned().map(Object::TlsRoute),
            Kind::GrpcRoute => self.grpc_routes.get(key).cloned().map(Object::GrpcRoute),
        }
    }

    /// The keys of every object of one kind.
    pub fn keys(&self, kind: Kind) -> Vec<ObjectRef> {
        fn k<T>(m: &BTreeMap<ObjectRef, Arc<T>>) -> Vec<ObjectRef> {
            m.keys().cloned().collect()
        }
        match kind {
            Kind::GatewayClass => k(&self.gateway_classes),
            Kind::Gateway => k(&self.gateways),
            Kind::HttpRoute => k(&self.http_routes),
            Kind::ReferenceGrant => k(&self.reference_grants),
            Kind::Service => k(&self.services),
            Kind::EndpointSlice => k(&self.endpoint_slices),
            Kind::Secret => k(&self.secrets),
            Kind::Namespace => k(&self.namespaces),
            Kind::ConfigMap => k(&self.config_maps),
            Kind::BackendTlsPolicy => k(&self.backend_tls_policies),
            Kind::ListenerSet => k(&self.listener_sets),
            Kind::TlsRoute => k(&self.tls_routes),
            Kind::GrpcRoute => k(&self.grpc_routes),
        }
    }

    /// Total number of objects.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.reference_grants.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.namespaces.len()
            + self.config_maps.len()
            + self.backend_tls_policies.len()
            + self.listener_sets.len()
            + self.tls_routes.len()
            + self.grpc_routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the two sets differ at most in their EndpointSlices: such a change moves
    /// endpoints only, and takes the fast path that does not re-translate routes.
    pub fn same_except_endpoints(&self, other: &ObjectSet) -> bool {
        same(&self.gateway_classes, &other.gateway_classes)
            && same(&self.gateways, &other.gateways)
            && same(&self.http_routes, &other.http_routes)
            && same(&self.reference_grants, &other.reference_grants)
            && same(&self.services, &other.services)
            && same(&self.secrets, &other.secrets)
            && same(&self.namespaces, &other.namespaces)
            && same(&self.config_maps, &other.config_maps)
            && same(&self.backend_tls_policies, &other.backend_tls_policies)
            && same(&self.listener_sets, &other.listener_sets)
            && same(&self.tls_routes, &other.tls_routes)
            && same(&self.grpc_routes, &other.grpc_routes)
    }

    /// Whether nothing at all differs.
    pub fn same_as(&self, other: &ObjectSet) -> bool {
        self.same_except_endpoints(other) && same(&self.endpoint_slices, &other.endpoint_slices)
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
    fn decode_reports_schema_errors_with_the_object_name() {
        let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": "nope"}});
        let (kind, key) = identify(&bad).unwrap();
        let err = Object::decode(kind.unwrap(), &key, bad)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid Service default/s:"), "{err}");
    }
}
