//! Status checks (`routes_must_be_accepted`, `status_expectations`) against the controller's
//! `ListStatuses`, or in Kubernetes mode against the status the controller wrote to the API
//! server, judged as upstream's helpers judge them.

use rauta_common::api::v1::{
    Condition, GatewayAddress, ListenerStatus, ObjectStatus, ParentReference, PolicyAncestorStatus,
    RouteGroupKind, RouteParentStatus,
};
use serde_json::Value;

use super::case::RouteAccepted;
use super::world::{CONTROLLER_NAME, World};

/// Every object status the controller reports, fetched once per poll.
pub struct StatusView {
    pub objects: Vec<ObjectStatus>,
}

impl StatusView {
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&ObjectStatus> {
        let namespace = if kind == "GatewayClass" {
            ""
        } else {
            namespace
        };
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.namespace == namespace && o.name == name)
    }
}

/// The kinds whose status RAUTA writes.
pub const STATUS_KINDS: [&str; 9] = [
    "GatewayClass",
    "Gateway",
    "ListenerSet",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "TCPRoute",
    "UDPRoute",
    "BackendTLSPolicy",
];

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn conditions_of(v: &Value) -> Vec<Condition> {
    list(v, "conditions")
        .map(|c| Condition {
            r#type: s(c, "type"),
            status: s(c, "status"),
            reason: s(c, "reason"),
            message: s(c, "message"),
            observed_generation: c["observedGeneration"].as_i64().unwrap_or_default(),
            last_transition_time: None,
        })
        .collect()
}

fn parent_ref_of(v: &Value) -> ParentReference {
    ParentReference {
        group: s(v, "group"),
        kind: s(v, "kind"),
        namespace: s(v, "namespace"),
        name: s(v, "name"),
        section_name: v["sectionName"].as_str().map(str::to_owned),
        port: v["port"].as_i64().and_then(|p| i32::try_from(p).ok()),
    }
}

impl StatusView {
    /// The status objects carry in an API server (what `kubectl get -o yaml` shows), in the
    /// shape of the admin API's, so the same checks judge both. Objects without a status are
    /// left out, as the admin API leaves out objects RAUTA does not own.
    pub fn from_objects(objects: &[Value]) -> StatusView {
        let objects = objects
            .iter()
            .filter(|o| o["status"].is_object())
            .map(|o| {
                let st = &o["status"];
                ObjectStatus {
                    kind: s(o, "kind"),
                    namespace: s(&o["metadata"], "namespace"),
                    name: s(&o["metadata"], "name"),
                    generation: o["metadata"]["generation"].as_i64().unwrap_or_default(),
                    conditions: conditions_of(st),
                    listeners: list(st, "listeners")
                        .map(|l| ListenerStatus {
                            name: s(l, "name"),
                            attached_routes: l["attachedRoutes"]
                                .as_i64()
                                .and_then(|n| i32::try_from(n).ok())
                                .unwrap_or_default(),
                            supported_kinds: list(l, "supportedKinds")
                                .map(|k| RouteGroupKind {
                                    group: s(k, "group"),
                                    kind: s(k, "kind"),
                                })
                                .collect(),
                            conditions: conditions_of(l),
                        })
                        .collect(),
                    addresses: list(st, "addresses")
                        .map(|a| GatewayAddress {
                            r#type: s(a, "type"),
                            value: s(a, "value"),
                        })
                        .collect(),
                    parents: list(st, "parents")
                        .map(|p| RouteParentStatus {
                            parent_ref: Some(parent_ref_of(&p["parentRef"])),
                            controller_name: s(p, "controllerName"),
                            conditions: conditions_of(p),
                        })
                        .collect(),
                    supported_features: list(st, "supportedFeatures")
                        .map(|f| s(f, "name"))
                        .collect(),
                    ancestors: list(st, "ancestors")
                        .map(|a| PolicyAncestorStatus {
                            ancestor_ref: Some(parent_ref_of(&a["ancestorRef"])),
                            controller_name: s(a, "controllerName"),
                            conditions: conditions_of(a),
                        })
                        .collect(),
                    attached_listener_sets: st["attachedListenerSets"]
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .unwrap_or_default(),
                }
            })
            .collect();
        StatusView { objects }
    }
}

fn s(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Checks that `have` contains each condition listed in `want` (type, status, reason; a null
/// reason matches any).
fn has_conditions(have: &[Condition], want: &Value, what: &str) -> Result<(), String> {
    for w in want.as_array().into_iter().flatten() {
        let ty = s(w, "type");
        let status = s(w, "status");
        let reason = w.get("reason").and_then(Value::as_str);
        let found = have.iter().find(|c| c.r#type == ty);
        match found {
            Some(c) if c.status == status && reason.is_none_or(|r| r == c.reason) => {}
            Some(c) => {
                return Err(format!(
                    "{what}: condition {ty} is {}/{} ({}), want {status}/{}",
                    c.status,
                    c.reason,
                    c.message,
                    reason.unwrap_or("any")
                ));
            }
            None => return Err(format!("{what}: no {ty} condition")),
        }
    }
    Ok(())
}

fn latest_generation(have: &[Condition], generation: i64, what: &str) -> Result<(), String> {
    match have.iter().find(|c| c.observed_generation != generation) {
        Some(c) => Err(format!(
            "{what}: condition {} has observedGeneration {}, want {generation}",
            c.r#type, c.observed_generation
        )),
        None => Ok(()),
    }
}

fn current_generation(world: &World, kind: &str, ns: &str, name: &str) -> Result<i64, String> {
    world
        .generation(kind, ns, name)
        .ok_or_else(|| format!("{kind} {ns}/{name} is not in the manifests"))
}

fn gateway<'a>(
    view: &'a StatusView,
    world: &World,
    ns: &str,
    name: &str,
) -> Result<(&'a ObjectStatus, i64), String> {
    let g = current_generation(world, "Gateway", ns, name)?;
    let status = view
        .get("Gateway", ns, name)
        .ok_or_else(|| format!("Gateway {ns}/{name} has no status"))?;
    Ok((status, g))
}

/// upstream `GatewayAndHTTPRoutesMustBeAccepted` (or its GRPCRoute/TLSRoute counterpart) for
/// one route.
pub fn route_accepted(
    entry: &RouteAccepted,
    view: &StatusView,
    world: &World,
) -> Result<(), String> {
    let parent = &entry.parent;
    let parent_kind = parent.kind.as_deref().unwrap_or("Gateway");
    let kind = entry.kind();
    if parent_kind == "Gateway" {
        let (gw, g) = gateway(view, world, &parent.namespace, &parent.name)?;
        if !gw.addresses.iter().any(|a| !a.r#type.is_empty()) {
            return Err(format!(
                "Gateway {}/{} has no address",
                parent.namespace, parent.name
            ));
        }
        latest_generation(&gw.conditions, g, "Gateway")?;
        for l in gw.listeners.iter().filter(|_| entry.check_listeners) {
            let want = serde_json::json!([
                {"type": "ResolvedRefs", "status": "True"}, {"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "True"}
            ]);
            has_conditions(&l.conditions, &want, &format!("listener {}", l.name))?;
        }
    }
    let rg = current_generation(world, kind, &entry.namespace, &entry.name)?;
    let route = view
        .get(kind, &entry.namespace, &entry.name)
        .ok_or_else(|| format!("{kind} {}/{} has no status", entry.namespace, entry.name))?;
    for p in route
        .parents
        .iter()
        .filter(|_| entry.check_route_generation)
    {
        latest_generation(&p.conditions, rg, &format!("{kind} parent"))?;
    }
    let found = route.parents.iter().find(|p| {
        let r = p.parent_ref.clone().unwrap_or_default();
        p.controller_name == CONTROLLER_NAME
            && r.group == "gateway.networking.k8s.io"
            && r.kind == parent_kind
            && r.name == parent.name
            && (r.namespace == parent.namespace
                || (r.namespace.is_empty() && entry.namespace == parent.namespace))
    });
    let p = found.ok_or_else(|| {
        format!(
            "{kind} {}/{} has no status for parent {}",
            entry.namespace, entry.name, parent.name
        )
    })?;
    has_conditions(
        &p.conditions,
        &serde_json::json!([{"type": "Accepted", "status": "True", "reason": "Accepted"}]),
        &format!("{kind} parent"),
    )
}

/// The route kind a status check names (`kind`), HTTPRoute when it names none.
fn route_kind(c: &Value) -> String {
    c["kind"]
        .as_str()
        .filter(|k| k.ends_with("Route"))
        .unwrap_or("HTTPRoute")
        .to_owned()
}

/// A route's status and its current generation.
fn route<'a>(
    view: &'a StatusView,
    world: &World,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<(&'a ObjectStatus, i64), String> {
    let g = current_generation(world, kind, ns, name)?;
    let status = view
        .get(kind, ns, name)
        .ok_or_else(|| format!("{kind} {ns}/{name} has no status"))?;
    Ok((status, g))
}

/// One entry of `status_expectations`.
pub fn check(c: &Value, view: &StatusView, world: &World) -> Result<(), String> {
    let (ns, name) = (s(c, "namespace"), s(c, "name"));
    let check = s(c, "check");
    match check.as_str() {
        "route_parent_conditions" => {
            let kind = route_kind(c);
            let (route, g) = route(view, world, &kind, &ns, &name)?;
            let (pns, pname) = (s(&c["parent"], "namespace"), s(&c["parent"], "name"));
            let entry = route.parents.iter().find(|p| {
                let r = p.parent_ref.clone().unwrap_or_default();
                r.name == pname && (r.namespace.is_empty() || r.namespace == pns)
            });
            let entry = entry.ok_or_else(|| {
                format!("{kind} {ns}/{name} has no status for parent {pns}/{pname}")
            })?;
            let what = format!("{kind} parent");
            has_conditions(&entry.conditions, &c["conditions"], &what)?;
            latest_generation(&entry.conditions, g, &what)
        }
        "route_no_accepted_parents" => {
            let kind = route_kind(c);
            match view.get(&kind, &ns, &name) {
                None => Ok(()),
                Some(r) if r.parents.is_empty() => Ok(()),
                Some(r)
                    if r.parents.len() == 1
                        && r.parents[0]
                            .conditions
                            .iter()
                            .any(|c| c.r#type == "Accepted" && c.status == "False") =>
                {
                    Ok(())
                }
                Some(r) => Err(format!(
                    "{kind} {ns}/{name} has accepted parents: {:?}",
                    r.parents
                )),
            }
        }
        "route_parents" => {
            let kind = route_kind(c);
            let (route, g) = route(view, world, &kind, &ns, &name)?;
            let namespace_required = c["namespace_required"].as_bool().unwrap_or(false);
            let what = format!("{kind} parent");
            for want in c["parents"].as_array().into_iter().flatten() {
                let wr = &want["parent_ref"];
                let found = route.parents.iter().find(|p| {
                    let r = p.parent_ref.clone().unwrap_or_default();
                    r.group == s(wr, "group")
                        && r.kind == s(wr, "kind")
                        && r.name == s(wr, "name")
                        && (r.namespace == s(wr, "namespace")
                            || (!namespace_required && r.namespace.is_empty()))
                });
                let p = found.ok_or_else(|| {
                    format!(
                        "{kind} {ns}/{name} has no status for parent {}",
                        s(wr, "name")
                    )
                })?;
                has_conditions(&p.conditions, &want["conditions"], &what)?;
                latest_generation(&p.conditions, g, &what)?;
            }
            Ok(())
        }
        "route_conditions_latest_generation" => {
            let kind = route_kind(c);
            let (route, g) = route(view, world, &kind, &ns, &name)?;
            let what = format!("{kind} parent");
            route
                .parents
                .iter()
                .try_for_each(|p| latest_generation(&p.conditions, g, &what))
        }
        "listenerset_conditions" | "listenerset_listener_conditions" => {
            let g = current_generation(world, "ListenerSet", &ns, &name)?;
            let set = view
                .get("ListenerSet", &ns, &name)
                .ok_or_else(|| format!("ListenerSet {ns}/{name} has no status"))?;
            if check == "listenerset_conditions" {
                has_conditions(&set.conditions, &c["conditions"], "ListenerSet")?;
            } else {
                let lname = s(c, "listener");
                let l = set
                    .listeners
                    .iter()
                    .find(|l| l.name == lname)
                    .ok_or_else(|| format!("ListenerSet {ns}/{name}: no listener {lname}"))?;
                has_conditions(
                    &l.conditions,
                    &c["conditions"],
                    &format!("ListenerSet listener {lname}"),
                )?;
            }
            latest_generation(&set.conditions, g, "ListenerSet")
        }
        "gateway_conditions" => {
            let (gw, g) = gateway(view, world, &ns, &name)?;
            has_conditions(&gw.conditions, &c["conditions"], "Gateway")?;
            latest_generation(&gw.conditions, g, "Gateway")
        }
        "gateway_conditions_latest_generation" => {
            let (gw, g) = gateway(view, world, &ns, &name)?;
            latest_generation(&gw.conditions, g, "Gateway")
        }
        "gateway_listeners_exact" | "listenerset_listeners_exact" => {
            let kind = if check == "gateway_listeners_exact" {
                "Gateway"
            } else {
                "ListenerSet"
            };
            let g = current_generation(world, kind, &ns, &name)?;
            let gw = view
                .get(kind, &ns, &name)
                .ok_or_else(|| format!("{kind} {ns}/{name} has no status"))?;
            let want = c["listeners"].as_array().cloned().unwrap_or_default();
            if gw.listeners.len() != want.len() {
                return Err(format!(
                    "{kind} {ns}/{name} has {} listener statuses, want {}",
                    gw.listeners.len(),
                    want.len()
                ));
            }
            for w in &want {
                let lname = s(w, "name");
                let l = gw
                    .listeners
                    .iter()
                    .find(|l| l.name == lname)
                    .ok_or_else(|| format!("no status for listener {lname}"))?;
                let kinds = w["supported_kinds"].as_array().cloned().unwrap_or_default();
                if kinds.is_empty() && !l.supported_kinds.is_empty() {
                    return Err(format!(
                        "listener {lname}: supportedKinds {:?}, want none",
                        l.supported_kinds
                    ));
                }
                for k in &kinds {
                    let group = k
                        .get("group")
                        .and_then(Value::as_str)
                        .unwrap_or("gateway.networking.k8s.io");
                    if !l
                        .supported_kinds
                        .iter()
                        .any(|h| h.kind == s(k, "kind") && h.group == group)
                    {
                        return Err(format!(
                            "listener {lname}: supportedKinds lacks {}",
                            s(k, "kind")
                        ));
                    }
                }
                if let Some(n) = w["attached_routes"].as_i64()
                    && i64::from(l.attached_routes) != n
                {
                    return Err(format!(
                        "listener {lname}: attachedRoutes {}, want {n}",
                        l.attached_routes
                    ));
                }
                has_conditions(
                    &l.conditions,
                    &w["conditions"],
                    &format!("listener {lname}"),
                )?;
                latest_generation(&l.conditions, g, &format!("listener {lname}"))?;
            }
            Ok(())
        }
        "gateway_status_addresses" => {
            let (gw, _) = gateway(view, world, &ns, &name)?;
            let count = c["count"].as_u64().unwrap_or(0) as usize;
            if gw.addresses.len() != count {
                return Err(format!(
                    "Gateway {ns}/{name} has {} status addresses, want {count}",
                    gw.addresses.len()
                ));
            }
            let values = |which: &str| match which {
                "usable" => world.usable_addresses.clone(),
                "unusable" => world.unusable_addresses.clone(),
                // The invalid entry's value, as the manifest wrote it.
                _ => vec!["fake address teehee!".to_owned()],
            };
            if let Some(which) = c["must_contain"].as_str() {
                for v in values(which) {
                    if !gw.addresses.iter().any(|a| a.value == v) {
                        return Err(format!("status addresses lack {which} {v}"));
                    }
                }
            }
            for which in c["must_not_contain"].as_array().into_iter().flatten() {
                for v in values(which.as_str().unwrap_or("")) {
                    if gw.addresses.iter().any(|a| a.value == v) {
                        return Err(format!("status addresses contain {v}"));
                    }
                }
            }
            if c["type_must_match_spec"] == true {
                let spec = world
                    .object("Gateway", &ns, &name)
                    .map(|g| g["spec"]["addresses"].clone())
                    .unwrap_or_default();
                for a in &gw.addresses {
                    let want = spec
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|s| s["value"] == a.value.as_str())
                        .and_then(|s| s["type"].as_str())
                        .unwrap_or("IPAddress");
                    if a.r#type != want {
                        return Err(format!(
                            "address {} has type {}, spec says {want}",
                            a.value, a.r#type
                        ));
                    }
                }
            }
            Ok(())
        }
        "gateway_attached_listener_sets" => {
            let (gw, _) = gateway(view, world, &ns, &name)?;
            let want = c["attached_listener_sets"].as_i64().unwrap_or(0);
            if i64::from(gw.attached_listener_sets) == want {
                Ok(())
            } else {
                Err(format!(
                    "Gateway {ns}/{name}: attachedListenerSets {}, want {want}",
                    gw.attached_listener_sets
                ))
            }
        }
        "gateway_listener_conditions" => {
            let (gw, _) = gateway(view, world, &ns, &name)?;
            let lname = s(c, "listener");
            let l = gw
                .listeners
                .iter()
                .find(|l| l.name == lname)
                .ok_or_else(|| format!("no status for listener {lname}"))?;
            has_conditions(
                &l.conditions,
                &c["conditions"],
                &format!("listener {lname}"),
            )
        }
        "gateway_zero_attached_routes" => {
            let (gw, _) = gateway(view, world, &ns, &name)?;
            match gw.listeners.as_slice() {
                [] => Ok(()),
                [l] if l.attached_routes == 0 => Ok(()),
                ls => Err(format!(
                    "Gateway {ns}/{name}: listeners {:?}",
                    ls.iter()
                        .map(|l| (&l.name, l.attached_routes))
                        .collect::<Vec<_>>()
                )),
            }
        }
        "gateway_has_address" => {
            let (gw, _) = gateway(view, world, &ns, &name)?;
            if gw.addresses.iter().any(|a| !a.r#type.is_empty()) {
                Ok(())
            } else {
                Err(format!("Gateway {ns}/{name} has no address"))
            }
        }
        "namespace_gateways_ready" => {
            for obj in world.objects_of("Gateway", &ns) {
                if obj["metadata"]["annotations"]["gateway-api/skip-this-for-readiness"].as_str()
                    == Some("true")
                {
                    continue;
                }
                let gname = s(&obj["metadata"], "name");
                let (gw, g) = gateway(view, world, &ns, &gname)?;
                let want = serde_json::json!([{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "True"}]);
                has_conditions(&gw.conditions, &want, &format!("Gateway {ns}/{gname}"))?;
                latest_generation(&gw.conditions, g, &format!("Gateway {ns}/{gname}"))?;
            }
            Ok(())
        }
        "gatewayclass_accepted_any" | "gatewayclass_conditions_latest_generation" => {
            let g = current_generation(world, "GatewayClass", "", &name)?;
            let class = view
                .get("GatewayClass", "", &name)
                .ok_or_else(|| format!("GatewayClass {name} has no status"))?;
            if check == "gatewayclass_accepted_any"
                && !class.conditions.iter().any(|c| c.r#type == "Accepted")
            {
                return Err(format!("GatewayClass {name} has no Accepted condition"));
            }
            latest_generation(&class.conditions, g, "GatewayClass")
        }
        "policy_ancestor_conditions" | "policy_conditions_latest_generation" => {
            let kind = s(c, "kind");
            let g = current_generation(world, &kind, &ns, &name)?;
            let policy = view
                .get(&kind, &ns, &name)
                .ok_or_else(|| format!("{kind} {ns}/{name} has no status"))?;
            if check == "policy_conditions_latest_generation" {
                if policy.ancestors.is_empty() {
                    return Err(format!("{kind} {ns}/{name} has no ancestors"));
                }
                for a in &policy.ancestors {
                    latest_generation(&a.conditions, g, &format!("{kind} ancestor"))?;
                }
                return Ok(());
            }
            let (ans, aname) = (s(&c["ancestor"], "namespace"), s(&c["ancestor"], "name"));
            let entry = policy
                .ancestors
                .iter()
                .find(|a| {
                    let r = a.ancestor_ref.clone().unwrap_or_default();
                    r.name == aname && (r.namespace.is_empty() || r.namespace == ans)
                })
                .ok_or_else(|| {
                    format!("{kind} {ns}/{name} has no status for ancestor {ans}/{aname}")
                })?;
            has_conditions(
                &entry.conditions,
                &c["conditions"],
                &format!("{kind} ancestor"),
            )?;
            latest_generation(&entry.conditions, g, &format!("{kind} ancestor"))
        }
        "generation_changed" => {
            let kind = s(c, "kind");
            let now = world.generation(&kind, &ns, &name);
            let before = world.generation_before_action(&kind, &ns, &name);
            if now.is_some() && now != before {
                Ok(())
            } else {
                Err(format!(
                    "{kind} {ns}/{name}: generation did not change ({before:?})"
                ))
            }
        }
        other => Err(format!(
            "status check {other:?} is not supported by this runner"
        )),
    }
}
