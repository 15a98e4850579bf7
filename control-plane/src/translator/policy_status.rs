//! Status of the policies that act on backends: BackendTLSPolicies and BackendPolicies (one
//! ancestor entry per Gateway whose routes use a targeted Service port) and the `rauta.dev/*`
//! Service annotations that could not be used.

use std::collections::{BTreeMap, BTreeSet};

use super::backend_policy;
use super::backend_tls::{self, ServicePortKey};
use super::backend_traffic;
use super::gateway::GatewayView;
use super::references::GATEWAY_GROUP;
use super::route_view::RouteId;
use super::routes::CompiledRoute;
use super::status::Condition;
use super::status::{ParentRef, PolicyStatus, RouteParentStatus, StatusReport, generation_of};
use crate::objects::{ObjectRef, ObjectSet};

/// Records the status of every BackendTLSPolicy and annotated Service that a route attached
/// to one of our Gateways uses.
pub fn report(
    objects: &ObjectSet,
    controller_name: &str,
    gateways: &BTreeMap<ObjectRef, GatewayView<'_>>,
    compiled: &BTreeMap<RouteId, std::sync::Arc<CompiledRoute>>,
    out: &mut StatusReport,
) {
    service_annotations(compiled, out);
    if objects.backend_tls_policies.is_empty()
        && objects.backend_policies.is_empty()
        && objects.x_backend_traffic_policies.is_empty()
    {
        return; // The common case: no pass over every Gateway's routes.
    }
    for (gw_key, gateway) in gateways {
        let used: BTreeSet<ServicePortKey> = gateway
            .listeners
            .iter()
            // Routes attached to a listener that is not served use no backend through it.
            .filter(|l| l.problem.is_none())
            .flat_map(|l| &l.attached)
            .flat_map(|a| &a.compiled.backends)
            .map(|b| b.service_port.clone())
            .collect();
        let ancestor = |conditions: Vec<Condition>| RouteParentStatus {
            parent_ref: ParentRef {
                group: GATEWAY_GROUP.to_owned(),
                kind: "Gateway".to_owned(),
                namespace: gw_key.namespace.to_string(),
                name: gw_key.name.to_string(),
                section_name: None,
                port: None,
            },
            controller_name: controller_name.to_owned(),
            conditions,
        };
        for policy in backend_tls::policies_targeting(objects, &used) {
            let generation = objects
                .backend_tls_policies
                .get(policy)
                .map_or(0, |p| generation_of(&p.metadata));
            entry(&mut out.backend_tls_policies, policy, generation)
                .ancestors
                .push(ancestor(backend_tls::conditions(objects, policy)));
        }
        for policy in backend_policy::policies_targeting(objects, &used) {
            let generation = objects
                .backend_policies
                .get(policy)
                .map_or(0, |p| generation_of(&p.metadata));
            entry(&mut out.backend_policies, policy, generation)
                .ancestors
                .push(ancestor(backend_policy::conditions(objects, policy)));
        }
        for policy in backend_traffic::policies_targeting(objects, &used) {
            let generation = objects
                .x_backend_traffic_policies
                .get(policy)
                .map_or(0, |p| generation_of(&p.metadata));
            entry(&mut out.x_backend_traffic_policies, policy, generation)
                .ancestors
                .push(ancestor(backend_traffic::conditions(objects, policy)));
        }
    }
}

fn entry<'a>(
    statuses: &'a mut BTreeMap<ObjectRef, PolicyStatus>,
    policy: &ObjectRef,
    generation: i64,
) -> &'a mut PolicyStatus {
    statuses
        .entry(policy.clone())
        .or_insert_with(|| PolicyStatus {
            generation,
            ancestors: Vec::new(),
        })
}

/// The annotation problems of every Service a compiled route uses.
fn service_annotations(
    compiled: &BTreeMap<RouteId, std::sync::Arc<CompiledRoute>>,
    out: &mut StatusReport,
) {
    for backend in compiled.values().flat_map(|c| &c.backends) {
        if !backend.annotation_problems.is_empty() {
            let service = &backend.service_port.0;
            out.service_annotations
                .insert(service.clone(), backend.annotation_problems.clone());
        }
    }
}
