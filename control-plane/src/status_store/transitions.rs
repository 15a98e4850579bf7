//! When each condition of each object last changed: kept per object and brought up to date
//! from the statuses that changed only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use crate::objects::ObjectRef;
use crate::translator::status::{
    Condition, GatewayClassStatus, GatewayStatus, ListenerSetStatus, ListenerStatus, ParentRef,
    PolicyStatus, RouteParentStatus, RouteStatus,
};

/// When each condition of each object last changed status or reason: by (kind, object), then
/// by (scope within the object, condition type).
pub(super) type Transitions =
    HashMap<(&'static str, ObjectRef), HashMap<(String, String), (String, String, SystemTime)>>;

/// An object's status, as the conditions it holds, each with where in the object it is.
pub(super) trait Scoped: PartialEq {
    fn scoped(&self) -> Vec<(String, &Condition)>;
}

fn unscoped(conditions: &[Condition]) -> impl Iterator<Item = (String, &Condition)> {
    conditions.iter().map(|c| (String::new(), c))
}

fn of_listeners(listeners: &[ListenerStatus]) -> impl Iterator<Item = (String, &Condition)> {
    listeners.iter().flat_map(|l| {
        let scope = format!("listener/{}", l.name);
        l.conditions.iter().map(move |c| (scope.clone(), c))
    })
}

fn of_parents(entries: &[RouteParentStatus]) -> impl Iterator<Item = (String, &Condition)> {
    entries.iter().flat_map(|p| {
        let scope = parent_scope(&p.parent_ref);
        p.conditions.iter().map(move |c| (scope.clone(), c))
    })
}

impl Scoped for GatewayClassStatus {
    fn scoped(&self) -> Vec<(String, &Condition)> {
        unscoped(&self.conditions).collect()
    }
}

impl Scoped for GatewayStatus {
    fn scoped(&self) -> Vec<(String, &Condition)> {
        let own = unscoped(&self.conditions);
        own.chain(of_listeners(&self.listeners)).collect()
    }
}

impl Scoped for ListenerSetStatus {
    fn scoped(&self) -> Vec<(String, &Condition)> {
        let own = unscoped(&self.conditions);
        own.chain(of_listeners(&self.listeners)).collect()
    }
}

impl Scoped for RouteStatus {
    fn scoped(&self) -> Vec<(String, &Condition)> {
        of_parents(&self.parents).collect()
    }
}

/// A shared status (routes'): equal by address first, as `Arc`'s equality is.
impl<S: Scoped> Scoped for Arc<S> {
    fn scoped(&self) -> Vec<(String, &Condition)> {
        (**self).scoped()
    }
}

impl Scoped for PolicyStatus {
    fn scoped(&self) -> Vec<(String, &Condition)> {
        of_parents(&self.ancestors).collect()
    }
}

/// Brings the transition times of one kind's objects up to `new` from `old`, looking only at
/// changed statuses (a condition keeps its time while its status and reason stay); adds the
/// objects whose status is new or changed to `changed`; says whether any changed or went.
pub(super) fn update_transitions<S: Scoped>(
    transitions: &mut Transitions,
    kind: &'static str,
    new: &BTreeMap<ObjectRef, S>,
    old: &BTreeMap<ObjectRef, S>,
    now: SystemTime,
    changed_objects: &mut Vec<(&'static str, ObjectRef)>,
) -> bool {
    let mut changed = false;
    // Both in key order: walked side by side, not searched (as costly as the comparisons).
    let mut old_entries = old.iter().peekable();
    for (key, status) in new {
        while let Some((gone, _)) = old_entries.next_if(|(k, _)| *k < key) {
            changed = true;
            transitions.remove(&(kind, gone.clone()));
        }
        let before = old_entries.next_if(|(k, _)| *k == key);
        if before.is_some_and(|(_, b)| b == status) {
            continue;
        }
        changed = true;
        changed_objects.push((kind, key.clone()));
        let object = (kind, key.clone());
        let previous = transitions.remove(&object).unwrap_or_default();
        let mut current = HashMap::new();
        for (scope, c) in status.scoped() {
            let at = match previous.get(&(scope.clone(), c.type_.clone())) {
                Some((s, reason, at)) if *s == c.status && *reason == c.reason => *at,
                _ => now,
            };
            let entry = (c.status.clone(), c.reason.clone(), at);
            current.insert((scope, c.type_.clone()), entry);
        }
        transitions.insert(object, current);
    }
    for (gone, _) in old_entries {
        changed = true;
        transitions.remove(&(kind, gone.clone()));
    }
    changed
}

/// Where a route-parent or policy-ancestor condition lives, for transition bookkeeping.
pub(super) fn parent_scope(r: &ParentRef) -> String {
    format!(
        "parent/{}/{}/{}/{:?}/{:?}",
        r.kind, r.namespace, r.name, r.section_name, r.port
    )
}
