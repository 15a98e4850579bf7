//! Route attachment: each parentRef of each route is matched to the listeners of one of our
//! Gateways (sectionName and port, allowedRoutes, hostname intersection), and the route's
//! parent status says whether and why not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::gateway::GatewayView;
use super::hostnames;
use super::incremental::Compiler;
use super::references::GATEWAY_GROUP;
use super::route_view::{RouteId, RouteKind, RouteView};
use super::routes::CompiledRoute;
use super::status::{
    Condition, ParentRef, RouteParentStatus, RouteStatus, StatusReport, set_condition,
};
use crate::objects::{ObjectRef, ObjectSet};

/// Attaches every route to the Gateways its parentRefs name, records each route's status in
/// `status`, and returns the compiled routes (compiled once, whatever the number of parents).
pub fn attach_routes(
    objects: &ObjectSet,
    controller_name: &str,
    routes: &[RouteView<'_>],
    gateways: &mut BTreeMap<ObjectRef, GatewayView<'_>>,
    status: &mut StatusReport,
    compiler: &mut Compiler<'_>,
) -> BTreeMap<RouteId, Arc<CompiledRoute>> {
    let mut compiled: BTreeMap<RouteId, Arc<CompiledRoute>> = BTreeMap::new();
    // The Gateway of each ListenerSet: thousands of routes may name thousands of sets.
    let set_parents: HashMap<ObjectRef, ObjectRef> = gateways
        .iter()
        .flat_map(|(key, g)| g.listener_sets.iter().map(|s| (s.key.clone(), key.clone())))
        .collect();
    for route in routes {
        let mut parents = Vec::new();
        for parent_ref in &route.parent_refs {
            if parent_ref.group != GATEWAY_GROUP {
                continue;
            }
            let parent_key = ObjectRef::new(&parent_ref.namespace, &parent_ref.name);
            let gateway = match parent_ref.kind.as_str() {
                "Gateway" => gateways.get_mut(&parent_key),
                "ListenerSet" => set_parents
                    .get(&parent_key)
                    .and_then(|gateway| gateways.get_mut(gateway)),
                _ => continue,
            };
            let Some(gateway) = gateway else {
                continue; // Not a Gateway of ours: another controller writes this status.
            };
            let route_compiled = compiled
                .entry(route.id())
                .or_insert_with(|| compiler.compile(route));
            let conditions = attach(objects, gateway, route, parent_ref, route_compiled);
            parents.push(RouteParentStatus {
                parent_ref: parent_ref.clone(),
                controller_name: controller_name.to_owned(),
                conditions,
            });
        }
        if !parents.is_empty() {
            let statuses = match route.kind {
                RouteKind::Http => &mut status.http_routes,
                RouteKind::Tls => &mut status.tls_routes,
                RouteKind::Grpc => &mut status.grpc_routes,
                RouteKind::Tcp => &mut status.tcp_routes,
                RouteKind::Udp => &mut status.udp_routes,
            };
            statuses.insert(
                route.key.clone(),
                RouteStatus {
                    generation: route.generation,
                    parents,
                },
            );
        }
    }
    compiled
}

/// Attaches a route to the matching listeners of one Gateway; returns the parent conditions.
fn attach(
    objects: &ObjectSet,
    gateway: &mut GatewayView<'_>,
    route: &RouteView<'_>,
    parent: &ParentRef,
    compiled: &CompiledRoute,
) -> Vec<Condition> {
    let generation = route.generation;
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
    let reason = attach_to_listeners(objects, gateway, route, parent);
    match reason {
        Some((reason, msg)) => conditions.push(accepted(false, reason, msg.to_owned())),
        None => conditions.push(accepted(true, "Accepted", String::new())),
    }
    set_condition(&mut conditions, resolved);
    conditions
}

/// Attaches the route to every listener the parentRef reaches that admits it and shares a
/// hostname with it; returns why it attached to none (Accepted=False reason and message).
fn attach_to_listeners(
    objects: &ObjectSet,
    gateway: &mut GatewayView<'_>,
    route: &RouteView<'_>,
    parent: &ParentRef,
) -> Option<(&'static str, &'static str)> {
    // A Gateway parentRef reaches the Gateway's own listeners, a ListenerSet parentRef only
    // that set's.
    let owner =
        (parent.kind == "ListenerSet").then(|| ObjectRef::new(&parent.namespace, &parent.name));
    let owner = owner.as_ref();
    let owned = gateway.listeners_of.get(&owner.cloned());
    let candidates: Vec<usize> = owned
        .into_iter()
        .flatten()
        .map(|&i| (i, &gateway.listeners[i]))
        .filter(|(_, l)| {
            parent
                .section_name
                .as_deref()
                .is_none_or(|s| s == l.spec.name)
        })
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.spec.port))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return Some((
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port",
        ));
    }
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| gateway.listeners[i].admits(objects, route.kind, &route.key.namespace))
        .collect();
    if allowed.is_empty() {
        return Some((
            "NotAllowedByListeners",
            "no matching listener allows routes from this namespace or of this kind",
        ));
    }
    let mut attached_any = false;
    for i in allowed {
        let listener = &mut gateway.listeners[i];
        // Attachment depends on parentRefs, allowedRoutes and hostnames only: a listener that
        // cannot be served (say, its certificate Secret is missing) still counts the routes
        // attached to it in attachedRoutes, and serves none of them (gateway.rs adds only
        // listeners without a problem to the ports). A listener whose protocol RAUTA does not
        // serve supports no route kind, so nothing attaches to it.
        if listener
            .problem
            .as_ref()
            .is_some_and(|p| !p.routes_supported)
        {
            continue;
        }
        if let Some(hosts) =
            hostnames::intersect(listener.spec.hostname.as_deref(), route.hostnames)
        {
            listener.attached.push((hosts, route.id()));
            attached_any = true;
        }
    }
    (!attached_any).then_some((
        "NoMatchingListenerHostname",
        "no listener hostname intersects the route's hostnames",
    ))
}
