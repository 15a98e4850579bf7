//! Route attachment: each parentRef of each route is matched to the listeners of one of our
//! Gateways (sectionName and port, allowedRoutes, hostname intersection), and the route's
//! parent status says whether and why not.
//!
//! A route attaches as it did in the previous translation when its object and compiled
//! form are the same and every parentRef reaches the same Gateway, whose listeners there
//! read the same to attachment (`OwnedListeners::attach_inputs`; and the route's Namespace,
//! where a listener selects namespaces by label). Then its view is not even read: the
//! previous attachment and the very same status allocation are handed on (`AttachMemo`),
//! so the status store compares it by address. One edit then attaches one route, not every
//! route.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;

use super::gateway::{GatewayView, OwnedListeners};
use super::hostnames;
use super::incremental::Compiler;
use super::listeners::AttachedRoute;
use super::references::GATEWAY_GROUP;
use super::route_view::{RouteEntry, RouteId, RouteKind, RouteObject, RouteView};
use super::routes::CompiledRoute;
use super::status::{
    Condition, ParentRef, RouteParentStatus, RouteStatus, StatusReport, set_condition,
};
use crate::objects::{ObjectRef, ObjectSet};

/// What a parentRef names, when it is a Gateway API parent kind.
#[derive(Clone, PartialEq, Eq)]
enum Target {
    Gateway(ObjectRef),
    ListenerSet(ObjectRef),
}

impl Target {
    fn of(parent: &ParentRef) -> Option<Target> {
        if parent.group != GATEWAY_GROUP {
            return None;
        }
        let key = ObjectRef::new(&parent.namespace, &parent.name);
        match parent.kind.as_str() {
            "Gateway" => Some(Target::Gateway(key)),
            "ListenerSet" => Some(Target::ListenerSet(key)),
            _ => None,
        }
    }

    /// The listener owner a parentRef to this reaches: the Gateway's own listeners, or only
    /// the ListenerSet's.
    fn owner(&self) -> Option<ObjectRef> {
        match self {
            Target::Gateway(_) => None,
            Target::ListenerSet(key) => Some(key.clone()),
        }
    }
}

/// Our Gateways, and the Gateway of each ListenerSet (thousands of routes may name thousands
/// of sets).
struct Parents<'g, 'a> {
    gateways: &'g mut BTreeMap<ObjectRef, GatewayView<'a>>,
    of_set: HashMap<ObjectRef, ObjectRef>,
}

impl<'a> Parents<'_, 'a> {
    /// The Gateway key a target reaches, if it is one of ours.
    fn gateway_key(&self, target: &Target) -> Option<&ObjectRef> {
        match target {
            Target::Gateway(key) => self.gateways.get_key_value(key).map(|(k, _)| k),
            Target::ListenerSet(key) => self.of_set.get(key),
        }
    }

    /// The Gateway a target reaches, and the listeners it reaches there (None: none).
    fn reach(&self, target: &Target) -> Option<(&ObjectRef, Option<&OwnedListeners>)> {
        let key = self.gateway_key(target)?;
        let (key, gateway) = self.gateways.get_key_value(key)?;
        Some((key, gateway.listeners_of.get(&target.owner())))
    }

    fn gateway_mut(&mut self, key: &ObjectRef) -> Option<&mut GatewayView<'a>> {
        self.gateways.get_mut(key)
    }
}

/// Where a parentRef reached, as attachment read it.
#[derive(Clone)]
struct Reached {
    gateway: ObjectRef,
    owner: Option<ObjectRef>,
    /// `OwnedListeners::attach_inputs` of the owner's listeners; None when it has none.
    inputs: Option<Arc<[u8]>>,
}

/// One parentRef of a route: what it names, and where it reached.
struct Slot {
    target: Option<Target>,
    reached: Option<Reached>,
}

/// How one route attached, kept for the next translation.
struct Attached {
    object: RouteObject,
    slots: Vec<Slot>,
    /// Compiled when a parentRef reached one of our Gateways.
    compiled: Option<Arc<CompiledRoute>>,
    /// Each listener the route attached to: (slot, position among the owner's listeners,
    /// the hostnames it serves there).
    listeners: Vec<(usize, usize, Arc<[String]>)>,
    status: Option<Arc<RouteStatus>>,
    /// The route's Namespace, when a listener it reached selects namespaces by label.
    namespace: Option<Option<Arc<Namespace>>>,
}

/// How each route attached in the previous translation, and in this one so far.
#[derive(Default)]
pub struct AttachMemo {
    /// In route order; an entry is taken when reused.
    previous: Vec<(RouteId, Option<Box<Attached>>)>,
    /// Where the previous translation's route order has been walked to.
    cursor: usize,
    next: Vec<(RouteId, Box<Attached>)>,
    /// Routes whose attachment the last translation reused.
    pub reused: usize,
}

impl AttachMemo {
    /// What this translation attached becomes what the next one may reuse.
    pub fn advance(&mut self) {
        self.previous = std::mem::take(&mut self.next)
            .into_iter()
            .map(|(id, a)| (id, Some(a)))
            .collect();
        self.cursor = 0;
    }

    /// Takes the previous translation's attachment of a route. Routes come in id order, so
    /// this steps along the previous ones instead of searching them.
    fn take(&mut self, kind: RouteKind, key: &ObjectRef) -> Option<Box<Attached>> {
        let before = |(k, name): &RouteId| (*k, name) < (kind, key);
        while self
            .previous
            .get(self.cursor)
            .is_some_and(|(id, _)| before(id))
        {
            self.cursor += 1;
        }
        let index = match self.previous.get(self.cursor) {
            Some(((k, name), _)) if *k == kind && name == key => self.cursor,
            _ => self
                .previous
                .binary_search_by(|((k, name), _)| (*k, name).cmp(&(kind, key)))
                .ok()?,
        };
        self.previous[index].1.take()
    }
}

/// Attaches every route to the Gateways its parentRefs name, records each route's status in
/// `status`, and returns the compiled routes (compiled once, whatever the number of parents).
/// `view` reads a route's view, for the routes whose previous attachment cannot be reused.
pub fn attach_routes<'a>(
    objects: &ObjectSet,
    controller_name: &str,
    routes: &[RouteEntry<'a>],
    view: impl Fn(&RouteEntry<'a>) -> RouteView<'a>,
    gateways: &mut BTreeMap<ObjectRef, GatewayView<'_>>,
    status: &mut StatusReport,
    compiler: &mut Compiler<'_>,
) -> BTreeMap<RouteId, Arc<CompiledRoute>> {
    let of_set = gateways
        .iter()
        .flat_map(|(key, g)| g.listener_sets.iter().map(|s| (s.key.clone(), key.clone())))
        .collect();
    let mut parents = Parents { gateways, of_set };
    let mut memo = std::mem::take(&mut compiler.attachments);
    memo.reused = 0;
    // Collected in route order, then built into maps in one pass each.
    let mut compiled = Vec::with_capacity(routes.len());
    let mut statuses: BTreeMap<RouteKind, Vec<(ObjectRef, Arc<RouteStatus>)>> = BTreeMap::new();
    for entry in routes {
        let id = entry.id();
        let previous = memo.take(entry.kind(), entry.key);
        let attached = match previous.filter(|p| still_holds(p, entry, objects, &parents, compiler))
        {
            Some(attached) => {
                memo.reused += 1;
                apply(&attached, &mut parents);
                attached
            }
            None => {
                let route = view(entry);
                Box::new(attach_route(
                    objects,
                    controller_name,
                    &route,
                    entry,
                    &mut parents,
                    compiler,
                ))
            }
        };
        if let Some(c) = &attached.compiled {
            compiled.push((id.clone(), Arc::clone(c)));
        }
        if let Some(s) = &attached.status {
            let list = statuses.entry(id.0).or_default();
            list.push((id.1.clone(), Arc::clone(s)));
        }
        memo.next.push((id, attached));
    }
    for (kind, list) in statuses {
        let map = match kind {
            RouteKind::Http => &mut status.http_routes,
            RouteKind::Tls => &mut status.tls_routes,
            RouteKind::Grpc => &mut status.grpc_routes,
            RouteKind::Tcp => &mut status.tcp_routes,
            RouteKind::Udp => &mut status.udp_routes,
        };
        map.append(&mut list.into_iter().collect());
    }
    compiler.attachments = memo;
    compiled.into_iter().collect()
}

/// Whether a route would attach now as it did then: the same object and compiled form, and
/// each parentRef reaching the same Gateway whose listeners there read the same.
fn still_holds(
    previous: &Attached,
    entry: &RouteEntry<'_>,
    objects: &ObjectSet,
    parents: &Parents<'_, '_>,
    compiler: &mut Compiler<'_>,
) -> bool {
    if !entry.is(&previous.object) {
        return false;
    }
    let slots_hold = previous.slots.iter().all(|slot| {
        let now = slot.target.as_ref().and_then(|t| parents.reach(t));
        match (&slot.reached, now) {
            (None, None) => true,
            (Some(then), Some((gateway, owned))) => {
                then.gateway == *gateway
                    && match (&then.inputs, owned) {
                        (None, None) => true,
                        (Some(a), Some(b)) => **a == *b.attach_inputs,
                        _ => false,
                    }
            }
            _ => false,
        }
    });
    if !slots_hold {
        return false;
    }
    if let Some(then) = &previous.namespace
        && !same_namespace(then.as_ref(), route_namespace(objects, entry.key))
    {
        return false;
    }
    match &previous.compiled {
        None => true,
        Some(then) => compiler
            .reuse(entry)
            .is_some_and(|now| Arc::ptr_eq(then, &now)),
    }
}

fn route_namespace<'o>(objects: &'o ObjectSet, key: &ObjectRef) -> Option<&'o Arc<Namespace>> {
    objects.namespaces.get(&ObjectRef::new("", &key.namespace))
}

fn same_namespace(a: Option<&Arc<Namespace>>, b: Option<&Arc<Namespace>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

/// Attaches a route again as it attached before.
fn apply(attached: &Attached, parents: &mut Parents<'_, '_>) {
    let Some(compiled) = &attached.compiled else {
        return;
    };
    for (slot, position, hosts) in &attached.listeners {
        let Some(reached) = &attached.slots[*slot].reached else {
            continue;
        };
        let Some(gateway) = parents.gateway_mut(&reached.gateway) else {
            continue;
        };
        let index = gateway
            .listeners_of
            .get(&reached.owner)
            .and_then(|o| o.indices.get(*position).copied());
        if let Some(listener) = index.and_then(|i| gateway.listeners.get_mut(i)) {
            listener.attached.push(AttachedRoute {
                hosts: Arc::clone(hosts),
                compiled: Arc::clone(compiled),
            });
        }
    }
}

/// Attaches a route from its view, recording how for the next translation.
fn attach_route(
    objects: &ObjectSet,
    controller_name: &str,
    route: &RouteView<'_>,
    entry: &RouteEntry<'_>,
    parents: &mut Parents<'_, '_>,
    compiler: &mut Compiler<'_>,
) -> Attached {
    let mut out = Attached {
        object: route.object.clone(),
        slots: Vec::with_capacity(route.parent_refs.len()),
        compiled: None,
        listeners: Vec::new(),
        status: None,
        namespace: None,
    };
    let mut statuses = Vec::new();
    for parent_ref in &route.parent_refs {
        let target = Target::of(parent_ref);
        let reached = target.as_ref().and_then(|t| {
            let (gateway, owned) = parents.reach(t)?;
            let inputs = owned.map(|o| Arc::clone(&o.attach_inputs));
            if owned.is_some_and(|o| o.selects_namespaces) {
                out.namespace = Some(route_namespace(objects, route.key).cloned());
            }
            Some(Reached {
                gateway: gateway.clone(),
                owner: t.owner(),
                inputs,
            })
        });
        let slot = out.slots.len();
        out.slots.push(Slot {
            target,
            reached: reached.clone(),
        });
        // Not a Gateway of ours: another controller writes this status.
        let Some(reached) = reached else { continue };
        let Some(gateway) = parents.gateway_mut(&reached.gateway) else {
            continue;
        };
        let compiled = out
            .compiled
            .get_or_insert_with(|| compiler.compile(entry, route));
        let (conditions, attached) = attach(objects, gateway, route, parent_ref, compiled);
        for (position, index, hosts) in attached {
            let hosts: Arc<[String]> = hosts.into();
            gateway.listeners[index].attached.push(AttachedRoute {
                hosts: Arc::clone(&hosts),
                compiled: Arc::clone(compiled),
            });
            out.listeners.push((slot, position, hosts));
        }
        statuses.push(RouteParentStatus {
            parent_ref: parent_ref.clone(),
            controller_name: controller_name.to_owned(),
            conditions,
        });
    }
    if !statuses.is_empty() {
        out.status = Some(Arc::new(RouteStatus {
            generation: route.generation,
            parents: statuses,
        }));
    }
    out
}

/// The listeners a route attaches to on one parent: (position among the owner's listeners,
/// index among the Gateway's, hostnames it serves there).
type Attachments = Vec<(usize, usize, Vec<String>)>;

/// Attaches a route to the matching listeners of one Gateway; returns the parent conditions
/// and the listeners it attached to.
fn attach(
    objects: &ObjectSet,
    gateway: &GatewayView<'_>,
    route: &RouteView<'_>,
    parent: &ParentRef,
    compiled: &CompiledRoute,
) -> (Vec<Condition>, Attachments) {
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
        return (conditions, Vec::new());
    }
    let attached = attach_to_listeners(objects, gateway, route, parent);
    match &attached {
        Err((reason, msg)) => conditions.push(accepted(false, reason, (*msg).to_owned())),
        Ok(_) => conditions.push(accepted(true, "Accepted", String::new())),
    }
    set_condition(&mut conditions, resolved);
    (conditions, attached.unwrap_or_default())
}

/// The listeners the parentRef reaches that admit the route and share a hostname with it;
/// or why there are none (Accepted=False reason and message).
fn attach_to_listeners(
    objects: &ObjectSet,
    gateway: &GatewayView<'_>,
    route: &RouteView<'_>,
    parent: &ParentRef,
) -> Result<Attachments, (&'static str, &'static str)> {
    // A Gateway parentRef reaches the Gateway's own listeners, a ListenerSet parentRef only
    // that set's.
    let owner =
        (parent.kind == "ListenerSet").then(|| ObjectRef::new(&parent.namespace, &parent.name));
    let owned = gateway.listeners_of.get(&owner);
    let candidates: Vec<(usize, usize)> = owned
        .into_iter()
        .flat_map(|o| o.indices.iter().copied().enumerate())
        .filter(|&(_, i)| {
            let l = &gateway.listeners[i];
            parent
                .section_name
                .as_deref()
                .is_none_or(|s| s == l.spec.name)
                && parent.port.is_none_or(|p| p == l.spec.port)
        })
        .collect();
    if candidates.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port",
        ));
    }
    let allowed: Vec<(usize, usize)> = candidates
        .into_iter()
        .filter(|&(_, i)| gateway.listeners[i].admits(objects, route.kind, &route.key.namespace))
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            "no matching listener allows routes from this namespace or of this kind",
        ));
    }
    let mut attached = Vec::new();
    for (position, i) in allowed {
        let listener = &gateway.listeners[i];
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
            attached.push((position, i, hosts));
        }
    }
    if attached.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            "no listener hostname intersects the route's hostnames",
        ));
    }
    Ok(attached)
}
