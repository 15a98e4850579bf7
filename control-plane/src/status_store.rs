//! The status of every owned object: the translator's latest report, merged with what only
//! the running system knows (Gateway addresses from connected proxies, transition times).
//! Read by the admin service, the status-file writer and the Kubernetes status writer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rauta_common::api::v1 as api;
use tokio::sync::watch;

use crate::objects::ObjectRef;
use crate::registry::ProxyRegistry;
use crate::translator::status::{
    Condition, GatewayStatus, ListenerStatus, RouteParentStatus, StatusReport,
};
use transitions::{Transitions, parent_scope, update_transitions};

mod transitions;

#[derive(Debug)]
struct Inner {
    report: Arc<StatusReport>,
    transitions: Transitions,
}

#[derive(Debug)]
pub struct StatusStore {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Default for StatusStore {
    fn default() -> Self {
        StatusStore {
            inner: Mutex::new(Inner {
                report: Arc::default(),
                transitions: HashMap::new(),
            }),
            changed: watch::Sender::new(0),
        }
    }
}

impl StatusStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes a new report; returns which objects' status is new or changed, or None (and
    /// notifies nobody) if nothing changed.
    pub fn publish(&self, report: StatusReport) -> Option<StatusChanges> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Object by object: with tens of thousands of routes, a change touches a few.
        let old = Arc::clone(&inner.report);
        let (new, old) = (&report, &*old);
        let now = SystemTime::now();
        let t = &mut inner.transitions;
        let mut objects = Vec::new();
        let o = &mut objects;
        let changed = [
            update_transitions(
                t,
                "GatewayClass",
                &new.gateway_classes,
                &old.gateway_classes,
                now,
                o,
            ),
            update_transitions(t, "Gateway", &new.gateways, &old.gateways, now, o),
            update_transitions(
                t,
                "ListenerSet",
                &new.listener_sets,
                &old.listener_sets,
                now,
                o,
            ),
            update_transitions(t, "HTTPRoute", &new.http_routes, &old.http_routes, now, o),
            update_transitions(t, "TLSRoute", &new.tls_routes, &old.tls_routes, now, o),
            update_transitions(t, "GRPCRoute", &new.grpc_routes, &old.grpc_routes, now, o),
            update_transitions(t, "TCPRoute", &new.tcp_routes, &old.tcp_routes, now, o),
            update_transitions(t, "UDPRoute", &new.udp_routes, &old.udp_routes, now, o),
            new.service_annotations != old.service_annotations,
        ];
        let old_policies = old.policies();
        let policies_changed = new
            .policies()
            .into_iter()
            .zip(old_policies)
            .map(|((kind, new), (_, old))| update_transitions(t, kind, new, old, now, o))
            .fold(false, |any, changed| any | changed);
        if !changed.contains(&true) && !policies_changed {
            return None;
        }
        let report = Arc::new(report);
        inner.report = Arc::clone(&report);
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        Some(StatusChanges { report, objects })
    }

    pub fn report(&self) -> Arc<StatusReport> {
        Arc::clone(
            &self
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .report,
        )
    }

    /// Follows published changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every object's status as the admin API shows it, ordered by kind, namespace, name.
    pub fn render(&self, registry: &ProxyRegistry) -> Vec<api::ObjectStatus> {
        self.render_changes(registry, None).changed
    }

    /// The statuses that differ from those of `since` (a report an earlier call returned),
    /// or every status when `since` is None. With tens of thousands of routes, a change renders
    /// a few statuses instead of all. Gateways are always rendered: their status also carries
    /// what the connected proxies report. An object whose entry is equal in both reports is
    /// left out even if its conditions changed and changed back in between (a new transition
    /// time nobody saw a transition for).
    pub fn render_changes(
        &self,
        registry: &ProxyRegistry,
        since: Option<&StatusReport>,
    ) -> RenderedChanges {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let render = Render {
            transitions: &inner.transitions,
        };
        let report = &inner.report;
        let mut out = Changes {
            changed: Vec::new(),
            removed: Vec::new(),
        };
        out.section(
            "GatewayClass",
            &report.gateway_classes,
            since.map(|r| &r.gateway_classes),
            |key, s| api::ObjectStatus {
                kind: "GatewayClass".into(),
                namespace: String::new(),
                name: key.name.to_string(),
                generation: s.generation,
                conditions: render.conditions("GatewayClass", key, "", &s.conditions),
                supported_features: s.supported_features.clone(),
                ..Default::default()
            },
        );
        out.section(
            "ListenerSet",
            &report.listener_sets,
            since.map(|r| &r.listener_sets),
            |key, s| api::ObjectStatus {
                kind: "ListenerSet".into(),
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
                generation: s.generation,
                conditions: render.conditions("ListenerSet", key, "", &s.conditions),
                listeners: render.listeners("ListenerSet", key, &s.listeners),
                ..Default::default()
            },
        );
        out.section("Gateway", &report.gateways, None, |key, s| {
            render.gateway(key, s, registry)
        });
        if let Some(since) = since {
            let gone = since
                .gateways
                .keys()
                .filter(|k| !report.gateways.contains_key(*k));
            out.removed.extend(gone.map(|k| ("Gateway", k.clone())));
        }
        let routes = [
            (
                "HTTPRoute",
                &report.http_routes,
                since.map(|r| &r.http_routes),
            ),
            ("TLSRoute", &report.tls_routes, since.map(|r| &r.tls_routes)),
            (
                "GRPCRoute",
                &report.grpc_routes,
                since.map(|r| &r.grpc_routes),
            ),
            ("TCPRoute", &report.tcp_routes, since.map(|r| &r.tcp_routes)),
            ("UDPRoute", &report.udp_routes, since.map(|r| &r.udp_routes)),
        ];
        for (kind, new, old) in routes {
            out.section(kind, new, old, |key, s| api::ObjectStatus {
                kind: kind.into(),
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
                generation: s.generation,
                parents: render.parent_entries(kind, key, &s.parents),
                ..Default::default()
            });
        }
        let before = since.map(|r| r.policies());
        for (i, (kind, new)) in report.policies().into_iter().enumerate() {
            let old = before.map(|b| b[i].1);
            out.section(kind, new, old, |key, s| api::ObjectStatus {
                kind: kind.into(),
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
                generation: s.generation,
                ancestors: render
                    .parent_entries(kind, key, &s.ancestors)
                    .into_iter()
                    .map(|p| api::PolicyAncestorStatus {
                        ancestor_ref: p.parent_ref,
                        controller_name: p.controller_name,
                        conditions: p.conditions,
                    })
                    .collect(),
                ..Default::default()
            });
        }
        RenderedChanges {
            report: Arc::clone(report),
            changed: out.changed,
            removed: out.removed,
        }
    }
}

/// What a [`StatusStore::publish`] changed.
pub struct StatusChanges {
    /// The report published.
    pub report: Arc<StatusReport>,
    /// Objects whose status is new or changed, as (kind, object).
    pub objects: Vec<(&'static str, ObjectRef)>,
}

/// What [`StatusStore::render_changes`] found.
pub struct RenderedChanges {
    /// The report rendered: give it as `since` next time.
    pub report: Arc<StatusReport>,
    /// Statuses new or different since the earlier report, ordered by kind, namespace, name.
    pub changed: Vec<api::ObjectStatus>,
    /// Objects the earlier report had a status for and this one has not (kind, object).
    pub removed: Vec<(&'static str, ObjectRef)>,
}

struct Changes {
    changed: Vec<api::ObjectStatus>,
    removed: Vec<(&'static str, ObjectRef)>,
}

impl Changes {
    /// Renders the entries of `new` that are not in `old` as they are (every entry without
    /// `old`), and notes those only `old` has.
    fn section<S: PartialEq>(
        &mut self,
        kind: &'static str,
        new: &BTreeMap<ObjectRef, S>,
        old: Option<&BTreeMap<ObjectRef, S>>,
        render: impl Fn(&ObjectRef, &S) -> api::ObjectStatus,
    ) {
        for (key, s) in new {
            if old.is_some_and(|old| old.get(key) == Some(s)) {
                continue;
            }
            self.changed.push(render(key, s));
        }
        if let Some(old) = old {
            let gone = old.keys().filter(|k| !new.contains_key(*k));
            self.removed.extend(gone.map(|k| (kind, k.clone())));
        }
    }
}

/// Renders the translator's status as the API's messages, with the transition times the store
/// keeps.
struct Render<'a> {
    transitions: &'a Transitions,
}

impl Render<'_> {
    fn conditions(
        &self,
        kind: &'static str,
        key: &ObjectRef,
        scope: &str,
        conditions: &[Condition],
    ) -> Vec<api::Condition> {
        let object = self.transitions.get(&(kind, key.clone()));
        conditions
            .iter()
            .map(|c| {
                let at = object
                    .and_then(|times| times.get(&(scope.to_owned(), c.type_.clone())))
                    .map_or(SystemTime::UNIX_EPOCH, |t| t.2);
                api::Condition {
                    r#type: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    observed_generation: c.observed_generation,
                    last_transition_time: Some(prost_types::Timestamp::from(at)),
                }
            })
            .collect()
    }

    fn listeners(
        &self,
        kind: &'static str,
        key: &ObjectRef,
        listeners: &[ListenerStatus],
    ) -> Vec<api::ListenerStatus> {
        listeners
            .iter()
            .map(|l| api::ListenerStatus {
                name: l.name.clone(),
                attached_routes: l.attached_routes,
                supported_kinds: l
                    .supported_kinds
                    .iter()
                    .map(|k| api::RouteGroupKind {
                        group: "gateway.networking.k8s.io".into(),
                        kind: k.clone(),
                    })
                    .collect(),
                conditions: self.conditions(
                    kind,
                    key,
                    &format!("listener/{}", l.name),
                    &l.conditions,
                ),
            })
            .collect()
    }

    fn parent_entries(
        &self,
        kind: &'static str,
        key: &ObjectRef,
        entries: &[RouteParentStatus],
    ) -> Vec<api::RouteParentStatus> {
        entries
            .iter()
            .map(|p| {
                let r = &p.parent_ref;
                api::RouteParentStatus {
                    parent_ref: Some(api::ParentReference {
                        group: r.group.clone(),
                        kind: r.kind.clone(),
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        section_name: r.section_name.clone(),
                        port: r.port,
                    }),
                    controller_name: p.controller_name.clone(),
                    conditions: self.conditions(kind, key, &parent_scope(r), &p.conditions),
                }
            })
            .collect()
    }

    /// A Gateway's status, completed with what the connected proxies report: their addresses
    /// (unless its Service has some) and their rejections.
    fn gateway(
        &self,
        key: &ObjectRef,
        s: &GatewayStatus,
        registry: &ProxyRegistry,
    ) -> api::ObjectStatus {
        let served = match s.service_addresses.is_empty() {
            true => registry.addresses(key),
            false => s.service_addresses.clone(),
        };
        let mut conditions = self.conditions("Gateway", key, "", &s.conditions);
        // A proxy that rejects the Gateway's config: not programmed, with its reason.
        let rejections = registry.rejections(key);
        if !rejections.is_empty()
            && let Some(c) = conditions.iter_mut().find(|c| c.r#type == "Programmed")
        {
            c.status = "False".into();
            c.reason = "Invalid".into();
            c.message = rejection_message(&rejections);
        }
        let addresses = status_addresses(s, &served, &mut conditions);
        api::ObjectStatus {
            kind: "Gateway".into(),
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            generation: s.generation,
            conditions,
            listeners: self.listeners("Gateway", key, &s.listeners),
            attached_listener_sets: s.attached_listener_sets,
            addresses,
            ..Default::default()
        }
    }
}

/// A Gateway's status addresses. Requested addresses: status lists those the Gateway's proxies
/// serve, and the Gateway is not programmed until they serve all of them.
fn status_addresses(
    s: &GatewayStatus,
    served: &[String],
    conditions: &mut [api::Condition],
) -> Vec<api::GatewayAddress> {
    if s.requested_addresses.is_empty() {
        let typed = |value: &String| api::GatewayAddress {
            r#type: if value.parse::<std::net::IpAddr>().is_ok() {
                "IPAddress"
            } else {
                "Hostname"
            }
            .into(),
            value: value.clone(),
        };
        // The Gateway API allows 16 status addresses; a larger fleet shows 16 of its own.
        return served
            .iter()
            .take(MAX_STATUS_ADDRESSES)
            .map(typed)
            .collect();
    }
    let missing: Vec<&str> = s
        .requested_addresses
        .iter()
        .filter(|(_, v)| !served.contains(v))
        .map(|(_, v)| v.as_str())
        .collect();
    if !missing.is_empty()
        && let Some(c) = conditions.iter_mut().find(|c| c.r#type == "Programmed")
        && c.status == "True"
    {
        c.status = "False".into();
        c.reason = "AddressNotUsable".into();
        c.message = format!(
            "no connected proxy of this Gateway serves {}",
            missing.join(", ")
        );
    }
    s.requested_addresses
        .iter()
        .filter(|(_, v)| served.contains(v))
        .map(|(ty, value)| api::GatewayAddress {
            r#type: ty.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Most entries in a Gateway's status.addresses (the Gateway API's limit).
const MAX_STATUS_ADDRESSES: usize = 16;

/// Longest Programmed message made of proxies' rejections: each proxy's message is already
/// bounded, but a fleet's would add up past what the API server takes (32768 bytes).
const MAX_REJECTION_MESSAGE: usize = 8192;

/// The proxies' rejections as one condition message, within [`MAX_REJECTION_MESSAGE`]: as
/// many whole lines as fit, then how many more there are.
fn rejection_message(rejections: &[String]) -> String {
    let mut out = String::new();
    for (i, r) in rejections.iter().enumerate() {
        let separator = if out.is_empty() { "" } else { "; " };
        // Room for the line and, should more follow, the count of the rest.
        if out.len() + separator.len() + r.len() + 32 > MAX_REJECTION_MESSAGE {
            let more = rejections.len() - i;
            if out.is_empty() {
                out = crate::proxy_report::clean_text(r, MAX_REJECTION_MESSAGE - 32);
                if more > 1 {
                    out.push_str(&format!("; and {} more", more - 1));
                }
            } else {
                out.push_str(&format!("; and {more} more"));
            }
            return out;
        }
        out.push_str(separator);
        out.push_str(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::status::{GatewayClassStatus, RouteStatus};

    fn report(reason: &str) -> StatusReport {
        let mut r = StatusReport::default();
        r.gateway_classes.insert(
            ObjectRef::new("", "c"),
            GatewayClassStatus {
                generation: 1,
                conditions: vec![Condition::new("Accepted", true, reason, "", 1)],
                supported_features: vec![],
            },
        );
        r
    }

    #[test]
    fn rejections_are_bounded_in_the_condition_message() {
        assert_eq!(rejection_message(&["a".into(), "b".into()]), "a; b");
        let many: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    "proxy p{i} rejected route_table version 3: {}",
                    "x".repeat(1000)
                )
            })
            .collect();
        let message = rejection_message(&many);
        assert!(message.len() <= MAX_REJECTION_MESSAGE, "{}", message.len());
        assert!(message.starts_with("proxy p0 rejected"), "{message}");
        assert!(message.ends_with(" more"), "{message}");
        let huge = rejection_message(&["y".repeat(100_000), "z".into()]);
        assert!(huge.len() <= MAX_REJECTION_MESSAGE && huge.ends_with("; and 1 more"));
    }

    #[test]
    fn requested_addresses_must_be_served_by_a_proxy() {
        use crate::registry::ProxyRecord;
        use crate::translator::status::GatewayStatus;
        let gw = ObjectRef::new("infra", "gw");
        let mut r = StatusReport::default();
        r.gateways.insert(
            gw.clone(),
            GatewayStatus {
                generation: 1,
                conditions: vec![Condition::new("Programmed", true, "Programmed", "", 1)],
                requested_addresses: vec![
                    ("IPAddress".into(), "10.0.0.1".into()),
                    ("IPAddress".into(), "10.0.0.2".into()),
                ],
                ..Default::default()
            },
        );
        let store = StatusStore::new();
        store.publish(r);
        let registry = std::sync::Arc::new(ProxyRegistry::default());
        let proxy = |addresses: &[&str]| ProxyRecord {
            id: "p".into(),
            gateway: gw.clone(),
            peer: None,
            connected_since: SystemTime::now(),
            build_version: String::new(),
            identity: String::new(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            types: Default::default(),
        };
        let _first = registry.register(proxy(&["10.0.0.1", "10.0.0.9"]));
        let status = &store.render(&registry)[0];
        let values: Vec<&str> = status.addresses.iter().map(|a| a.value.as_str()).collect();
        assert_eq!(
            values,
            ["10.0.0.1"],
            "only requested addresses that are served"
        );
        assert_eq!(status.conditions[0].reason, "AddressNotUsable");
        let _second = registry.register(proxy(&["10.0.0.2"]));
        let status = &store.render(&registry)[0];
        assert_eq!(status.addresses.len(), 2);
        assert_eq!(status.conditions[0].reason, "Programmed");
    }

    #[test]
    fn transition_time_moves_only_when_status_or_reason_changes() {
        let store = StatusStore::new();
        let registry = ProxyRegistry::default();
        assert!(store.publish(report("Accepted")).is_some());
        let t1 = store.render(&registry)[0].conditions[0].last_transition_time;
        assert!(
            store.publish(report("Accepted")).is_none(),
            "same report: no change"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut with_message = report("Accepted");
        with_message
            .gateway_classes
            .values_mut()
            .for_each(|s| s.conditions[0].message = "m".into());
        assert!(store.publish(with_message).is_some());
        assert_eq!(
            store.render(&registry)[0].conditions[0].last_transition_time,
            t1
        );
        assert!(store.publish(report("Other")).is_some());
        assert_ne!(
            store.render(&registry)[0].conditions[0].last_transition_time,
            t1
        );
    }

    #[test]
    fn changes_are_rendered_against_an_earlier_report() {
        let route = |generation| RouteStatus {
            generation,
            parents: vec![],
        };
        let mut r = report("Accepted");
        r.gateways
            .insert(ObjectRef::new("infra", "gw"), GatewayStatus::default());
        for name in ["a", "b", "c"] {
            r.http_routes
                .insert(ObjectRef::new("apps", name), route(1).into());
        }
        let store = StatusStore::new();
        store.publish(r.clone());
        let registry = ProxyRegistry::default();
        let all = store.render_changes(&registry, None);
        let names = |c: &RenderedChanges| {
            let names = c.changed.iter().map(|o| format!("{}/{}", o.kind, o.name));
            names.collect::<Vec<_>>()
        };
        assert_eq!(
            names(&all),
            [
                "GatewayClass/c",
                "Gateway/gw",
                "HTTPRoute/a",
                "HTTPRoute/b",
                "HTTPRoute/c"
            ]
        );
        assert!(all.removed.is_empty());
        assert_eq!(
            store.render(&registry),
            all.changed,
            "render is every status"
        );

        // Nothing published since: only the Gateway (what proxies report may have changed).
        let none = store.render_changes(&registry, Some(&all.report));
        assert_eq!(names(&none), ["Gateway/gw"]);

        r.http_routes
            .insert(ObjectRef::new("apps", "b"), route(2).into());
        r.http_routes.remove(&ObjectRef::new("apps", "c"));
        let published = store.publish(r).expect("changed");
        assert_eq!(
            published.objects,
            [("HTTPRoute", ObjectRef::new("apps", "b"))],
            "changed, not removed or unchanged"
        );
        let some = store.render_changes(&registry, Some(&all.report));
        assert_eq!(names(&some), ["Gateway/gw", "HTTPRoute/b"]);
        assert_eq!(some.changed[1].generation, 2);
        assert_eq!(some.removed, [("HTTPRoute", ObjectRef::new("apps", "c"))]);
    }
}
