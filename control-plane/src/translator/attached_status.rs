//! Status of RAUTA's attached policies (GEP-713): one ancestor entry per Gateway of ours a
//! policy takes effect through, with Accepted True; or False with the reason: Conflicted (an
//! older policy of the kind targets the same thing), Invalid (the policy, or a target kind
//! policies cannot name), TargetNotFound (no such Gateway, listener, route or rule). A target
//! that exists but belongs to no Gateway of ours gets no entry: another controller owns it.
//! Kinds that name Secrets (SecurityPolicy) also carry ResolvedRefs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::gateway::GatewayView;
use super::policies::{Outcome, PolicyEntry, PolicyIndex, Target};
use super::references::GATEWAY_GROUP;
use super::route_view::{RouteId, RouteKind};
use super::status::{Condition, ParentRef, PolicyStatus, RouteParentStatus, StatusReport};
use crate::objects::{ObjectRef, ObjectSet};

/// Records the status of every attached policy.
pub fn report(
    objects: &ObjectSet,
    controller_name: &str,
    gateways: &BTreeMap<ObjectRef, GatewayView<'_>>,
    index: &PolicyIndex,
    out: &mut StatusReport,
) {
    if index.entries.is_empty() {
        return;
    }
    // The Gateways of ours each route is attached to.
    let mut parents: BTreeMap<RouteId, BTreeSet<&ObjectRef>> = BTreeMap::new();
    for (key, gateway) in gateways {
        for attached in gateway.listeners.iter().flat_map(|l| &l.attached) {
            parents
                .entry(attached.compiled.id.clone())
                .or_default()
                .insert(key);
        }
    }
    let view = Ours {
        objects,
        gateways,
        parents,
    };
    for ((kind, key), entry) in &index.entries {
        let ancestors = view.ancestors(key, entry, controller_name);
        if ancestors.is_empty() {
            continue;
        }
        let status = PolicyStatus {
            generation: entry.generation,
            ancestors,
        };
        match *kind {
            "RateLimitPolicy" => out.rate_limit_policies.insert(key.clone(), status),
            "SecurityPolicy" => out.security_policies.insert(key.clone(), status),
            "TrafficPolicy" => out.traffic_policies.insert(key.clone(), status),
            _ => None,
        };
    }
}

struct Ours<'a> {
    objects: &'a ObjectSet,
    gateways: &'a BTreeMap<ObjectRef, GatewayView<'a>>,
    parents: BTreeMap<RouteId, BTreeSet<&'a ObjectRef>>,
}

/// Where one target reference leads: the Gateways of ours it reaches (with sectionName for a
/// listener), or that it names nothing, or that it is not ours to report.
enum Reach {
    Gateways(Vec<ParentRef>),
    NotFound(ParentRef, String),
    NotOurs,
}

fn gateway_ref(key: &ObjectRef, section: Option<&str>) -> ParentRef {
    ParentRef {
        group: GATEWAY_GROUP.to_owned(),
        kind: "Gateway".to_owned(),
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
        section_name: section.map(str::to_owned),
        port: None,
    }
}

impl Ours<'_> {
    fn ancestors(
        &self,
        key: &ObjectRef,
        entry: &PolicyEntry,
        controller_name: &str,
    ) -> Vec<RouteParentStatus> {
        let g = entry.generation;
        let mut out: Vec<RouteParentStatus> = Vec::new();
        // Kinds that name Secrets say whether they all exist. A missing one gives no key: the
        // policy still applies, and refuses that Secret's clients.
        let resolved = entry.missing.as_ref().map(|missing| match missing.first() {
            None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g),
            Some(m) => Condition::new(
                "ResolvedRefs",
                false,
                "InvalidCredentialRef",
                format!(
                    "{} {} not found: the credentials or keys it holds are missing, so the \
                     requests that need them are refused",
                    m.kind, m.object
                ),
                g,
            ),
        });
        let mut push = |parent_ref: ParentRef, condition: Condition| {
            if out.iter().any(|a| a.parent_ref == parent_ref) {
                return; // Another target reached the same ancestor first.
            }
            out.push(RouteParentStatus {
                parent_ref,
                controller_name: controller_name.to_owned(),
                conditions: [Some(condition), resolved.clone()]
                    .into_iter()
                    .flatten()
                    .collect(),
            });
        };
        for outcome in &entry.outcomes {
            let (target, conflict) = match outcome {
                Outcome::Applied(t) => (t, None),
                Outcome::Conflicted(t, winner) => (t, Some(winner)),
                Outcome::Unsupported(t) => {
                    let message = format!(
                        "targetRef {:?} {:?} {}: a policy can target a Gateway, an HTTPRoute or \
                         a GRPCRoute of group {GATEWAY_GROUP}",
                        t.group, t.kind, t.name
                    );
                    let parent = ParentRef {
                        group: t.group.clone(),
                        kind: t.kind.clone(),
                        namespace: key.namespace.to_string(),
                        name: t.name.clone(),
                        section_name: t.section_name.clone(),
                        port: None,
                    };
                    push(
                        parent,
                        Condition::new("Accepted", false, "Invalid", message, g),
                    );
                    continue;
                }
            };
            match self.reach(target) {
                Reach::NotOurs => {}
                Reach::NotFound(parent, message) => {
                    push(
                        parent,
                        Condition::new("Accepted", false, "TargetNotFound", message, g),
                    );
                }
                Reach::Gateways(parents) => {
                    let condition = match (&entry.invalid, conflict) {
                        (Some(why), _) => {
                            let message = match entry.kind {
                                "SecurityPolicy" => format!(
                                    "{why}: its targets refuse every request until it is fixed"
                                ),
                                _ => why.clone(),
                            };
                            Condition::new("Accepted", false, "Invalid", message, g)
                        }
                        (None, Some(winner)) => Condition::new(
                            "Accepted",
                            false,
                            "Conflicted",
                            format!("{} {winner}, older, targets the same", entry.kind),
                            g,
                        ),
                        (None, None) => {
                            Condition::new("Accepted", true, "Accepted", "Policy accepted", g)
                        }
                    };
                    for parent in parents {
                        push(parent, condition.clone());
                    }
                }
            }
        }
        out
    }

    fn reach(&self, target: &Target) -> Reach {
        match target {
            Target::Gateway(key, section) => {
                let parent = gateway_ref(key, section.as_deref());
                let Some(gateway) = self.gateways.get(key) else {
                    return match self.objects.gateways.get(key) {
                        Some(_) => Reach::NotOurs,
                        None => Reach::NotFound(parent, format!("Gateway {key} not found")),
                    };
                };
                let listener_found = section.as_deref().is_none_or(|s| {
                    (gateway.listeners.iter()).any(|l| l.owner.is_none() && l.spec.name == s)
                });
                match listener_found {
                    true => Reach::Gateways(vec![parent]),
                    false => Reach::NotFound(
                        parent,
                        format!(
                            "Gateway {key} has no listener {:?}",
                            section.as_deref().unwrap_or("")
                        ),
                    ),
                }
            }
            Target::Route(kind, key, section) => {
                let route_ref = ParentRef {
                    group: GATEWAY_GROUP.to_owned(),
                    kind: kind.name().to_owned(),
                    namespace: key.namespace.to_string(),
                    name: key.name.to_string(),
                    section_name: section.clone(),
                    port: None,
                };
                let Some(rule_names) = self.rule_names(*kind, key) else {
                    let message = format!("{} {key} not found", kind.name());
                    return Reach::NotFound(route_ref, message);
                };
                let Some(parents) = self.parents.get(&(*kind, key.clone())) else {
                    return Reach::NotOurs;
                };
                if let Some(s) = section
                    && !rule_names.iter().any(|n| n == s)
                {
                    let message = format!("{} {key} has no rule named {s:?}", kind.name());
                    return Reach::NotFound(route_ref, message);
                }
                Reach::Gateways(parents.iter().map(|g| gateway_ref(g, None)).collect())
            }
        }
    }

    /// The names of a route's rules, or `None` when there is no such route.
    fn rule_names(&self, kind: RouteKind, key: &ObjectRef) -> Option<Vec<String>> {
        fn names<'r>(rules: impl Iterator<Item = &'r Option<String>>) -> Vec<String> {
            rules.flatten().cloned().collect()
        }
        match kind {
            RouteKind::Http => {
                let route: &Arc<_> = self.objects.http_routes.get(key)?;
                Some(names(route.spec.rules.iter().flatten().map(|r| &r.name)))
            }
            RouteKind::Grpc => {
                let route: &Arc<_> = self.objects.grpc_routes.get(key)?;
                Some(names(route.spec.rules.iter().flatten().map(|r| &r.name)))
            }
            _ => None,
        }
    }
}
