//! ListenerSet (GEP-1713): listeners that other teams add to a Gateway. Their listeners join
//! the Gateway's (same sockets, same conflict rules); routes attach to them through a
//! ListenerSet parentRef, and "Same" namespace means the ListenerSet's namespace.

use gateway_api::gateways::{
    Gateway, GatewayAllowedListenersNamespacesFrom, GatewayListeners,
    GatewayListenersAllowedRoutes, GatewayListenersAllowedRoutesKinds,
    GatewayListenersAllowedRoutesNamespaces, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector,
    GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions, GatewayListenersTls,
    GatewayListenersTlsCertificateRefs, GatewayListenersTlsMode,
};
use gateway_api::listenersets::{
    ListenerSet, ListenerSetListeners, ListenerSetListenersAllowedRoutes,
    ListenerSetListenersAllowedRoutesNamespacesFrom, ListenerSetListenersTls,
    ListenerSetListenersTlsMode,
};

use super::references::GATEWAY_GROUP;
use super::selectors::{NamespaceSelector, Requirement};
use super::status::generation_of;
use crate::objects::{ObjectRef, ObjectSet};

/// A ListenerSet that names a Gateway as its parent.
pub struct ListenerSetView<'a> {
    pub key: ObjectRef,
    pub generation: i64,
    pub set: &'a ListenerSet,
    /// Err: why the Gateway does not take it (Accepted=False, NotAllowed).
    pub allowed: Result<(), NotAllowed>,
}

/// A Gateway's allowedListeners does not admit a ListenerSet's namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Gateway {gateway} does not allow ListenerSets from namespace {namespace}")]
pub struct NotAllowed {
    pub gateway: ObjectRef,
    pub namespace: String,
}

/// The ListenerSets whose parentRef is this Gateway, oldest first (then by namespace/name):
/// the order in which their listeners yield to earlier ones on conflicts.
pub fn of_gateway<'a>(
    objects: &'a ObjectSet,
    gateway_key: &ObjectRef,
    gateway: &Gateway,
) -> Vec<ListenerSetView<'a>> {
    let mut out: Vec<ListenerSetView<'a>> = objects
        .listener_sets
        .iter()
        .filter(|(key, set)| {
            let p = &set.spec.parent_ref;
            p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                && *p.name == *gateway_key.name
                && p.namespace.as_deref().unwrap_or(&key.namespace) == &*gateway_key.namespace
        })
        .map(|(key, set)| ListenerSetView {
            key: key.clone(),
            generation: generation_of(&set.metadata),
            set,
            allowed: allowed(objects, gateway_key, gateway, &key.namespace),
        })
        .collect();
    out.sort_by(|a, b| {
        let created =
            |v: &ListenerSetView<'_>| v.set.metadata.creation_timestamp.clone().map(|t| t.0);
        (created(a), &a.key).cmp(&(created(b), &b.key))
    });
    out
}

/// Whether the Gateway's spec.allowedListeners admits ListenerSets from `namespace`. The
/// default admits none.
fn allowed(
    objects: &ObjectSet,
    gateway_key: &ObjectRef,
    gateway: &Gateway,
    namespace: &str,
) -> Result<(), NotAllowed> {
    let namespaces = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let ok = match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayAllowedListenersNamespacesFrom::None) => false,
        Some(GatewayAllowedListenersNamespacesFrom::Same) => namespace == &*gateway_key.namespace,
        Some(GatewayAllowedListenersNamespacesFrom::All) => true,
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => namespaces
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
                selector.selects(objects, namespace)
            }),
    };
    if ok {
        Ok(())
    } else {
        Err(NotAllowed {
            gateway: gateway_key.clone(),
            namespace: namespace.to_owned(),
        })
    }
}

/// A ListenerSet's listeners in the Gateway listener shape: the generated types are distinct
/// structs with the same fields, copied here field by field.
pub fn as_gateway_listeners(set: &ListenerSet) -> Vec<GatewayListeners> {
    set.spec.listeners.iter().map(gateway_listener).collect()
}

fn gateway_listener(l: &ListenerSetListeners) -> GatewayListeners {
    GatewayListeners {
        allowed_routes: l.allowed_routes.as_ref().map(allowed_routes),
        hostname: l.hostname.clone(),
        name: l.name.clone(),
        port: l.port,
        protocol: l.protocol.clone(),
        tls: l.tls.as_ref().map(tls),
    }
}

fn allowed_routes(a: &ListenerSetListenersAllowedRoutes) -> GatewayListenersAllowedRoutes {
    use ListenerSetListenersAllowedRoutesNamespacesFrom as From;
    GatewayListenersAllowedRoutes {
        kinds: a.kinds.as_ref().map(|kinds| {
            kinds
                .iter()
                .map(|k| GatewayListenersAllowedRoutesKinds {
                    group: k.group.clone(),
                    kind: k.kind.clone(),
                })
                .collect()
        }),
        namespaces: a
            .namespaces
            .as_ref()
            .map(|n| GatewayListenersAllowedRoutesNamespaces {
                from: n.from.as_ref().map(|f| match f {
                    From::All => GatewayListenersAllowedRoutesNamespacesFrom::All,
                    From::Selector => GatewayListenersAllowedRoutesNamespacesFrom::Selector,
                    From::Same => GatewayListenersAllowedRoutesNamespacesFrom::Same,
                }),
                selector: n.selector.as_ref().map(|s| {
                    GatewayListenersAllowedRoutesNamespacesSelector {
                        match_expressions: s.match_expressions.as_ref().map(|exprs| {
                            exprs
                                .iter()
                                .map(|e| {
                                    GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions {
                                        key: e.key.clone(),
                                        operator: e.operator.clone(),
                                        values: e.values.clone(),
                                    }
                                })
                                .collect()
                        }),
                        match_labels: s.match_labels.clone(),
                    }
                }),
            }),
    }
}

fn tls(t: &ListenerSetListenersTls) -> GatewayListenersTls {
    GatewayListenersTls {
        certificate_refs: t.certificate_refs.as_ref().map(|refs| {
            refs.iter()
                .map(|r| GatewayListenersTlsCertificateRefs {
                    group: r.group.clone(),
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                    namespace: r.namespace.clone(),
                })
                .collect()
        }),
        mode: t.mode.as_ref().map(|m| match m {
            ListenerSetListenersTlsMode::Terminate => GatewayListenersTlsMode::Terminate,
            ListenerSetListenersTlsMode::Passthrough => GatewayListenersTlsMode::Passthrough,
        }),
        options: t.options.clone(),
    }
}
