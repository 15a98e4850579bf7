//! ListenerSet (GEP-1713): listeners that other teams add to a Gateway. Their listeners join
//! the Gateway's (same sockets, same conflict rules); routes attach to them through a
//! ListenerSet parentRef, and "Same" namespace means the ListenerSet's namespace.

use gateway_api::gateways::{Gateway, GatewayAllowedListenersNamespacesFrom, GatewayListeners};
use gateway_api::listenersets::ListenerSet;

use super::labels_match;
use crate::objects::{ObjectRef, ObjectSet};

/// A ListenerSet that names a Gateway as its parent.
pub struct ListenerSetView<'a> {
    pub key: ObjectRef,
    pub generation: i64,
    pub set: &'a ListenerSet,
    /// Err: why the Gateway does not take it (Accepted=False, NotAllowed).
    pub allowed: Result<(), String>,
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
            p.group.as_deref().unwrap_or(super::GATEWAY_GROUP) == super::GATEWAY_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                && p.name == gateway_key.name
                && p.namespace.as_deref().unwrap_or(&key.namespace) == gateway_key.namespace
        })
        .map(|(key, set)| ListenerSetView {
            key: key.clone(),
            generation: set.metadata.generation.unwrap_or(0),
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
) -> Result<(), String> {
    let namespaces = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let ok = match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayAllowedListenersNamespacesFrom::None) => false,
        Some(GatewayAllowedListenersNamespacesFrom::Same) => namespace == gateway_key.namespace,
        Some(GatewayAllowedListenersNamespacesFrom::All) => true,
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => namespaces
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
                labels_match(objects, namespace, s.match_labels.as_ref(), &expressions)
            }),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Gateway {gateway_key} does not allow ListenerSets from namespace {namespace}"
        ))
    }
}

/// A ListenerSet listener in the Gateway listener shape (the two types share their fields).
pub fn as_gateway_listeners(set: &ListenerSet) -> Result<Vec<GatewayListeners>, String> {
    serde_json::to_value(&set.spec.listeners)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("listeners: {e}"))
}
