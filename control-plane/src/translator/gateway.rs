//! One Gateway: its view (listeners, its ListenerSets' listeners, addresses, TLS settings),
//! and once routes are attached, its resources and the status of the Gateway and of its
//! ListenerSets.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_api::gateways::Gateway;
use rauta_common::api::v1::ClientCertificate;

use super::backends::{EndpointIndex, EndpointsMemo};
use super::gateway_resources::Ports;
use super::listener_sets::{self, ListenerSetView};
use super::listeners::{self, ListenerView};
use super::output::ResourceSet;
use super::policies::PolicyIndex;
use super::route_rules::RulesMemo;
use super::status::{Condition, GatewayStatus, ListenerSetStatus, ListenerStatus, generation_of};
use super::{addresses, tls};
use crate::objects::{ObjectRef, ObjectSet};

pub struct GatewayView<'a> {
    pub generation: i64,
    /// spec.addresses: the requested (type, value) pairs, or why one cannot be honoured.
    pub addresses: Result<Vec<(String, String)>, addresses::UnsupportedAddress>,
    /// Where the Gateway's Service (if it has one) makes it reachable.
    pub service_addresses: Vec<String>,
    /// Why spec.infrastructure.parametersRef cannot be used, if it is set.
    pub invalid_parameters: Option<String>,
    /// Some port uses frontend validation mode AllowInsecureFallback.
    pub insecure_frontend_validation: bool,
    /// spec.tls.backend.clientCertificateRef: None when unset, else the certificate or why it
    /// cannot be used (the Gateway's ResolvedRefs reason and message).
    pub backend_client_certificate: Option<Result<ClientCertificate, (&'static str, String)>>,
    pub listeners: Vec<ListenerView<'a>>,
    /// The listeners of each owner: `None` for the Gateway's own, else the ListenerSet.
    pub listeners_of: BTreeMap<Option<ObjectRef>, OwnedListeners>,
    /// ListenerSets naming this Gateway as parent, allowed or not.
    pub listener_sets: Vec<ListenerSetView<'a>>,
}

/// The listeners of one owner (the Gateway, or one of its ListenerSets): those a parentRef
/// to that owner reaches.
pub struct OwnedListeners {
    /// Indexes into `GatewayView::listeners`.
    pub indices: Vec<usize>,
    /// Everything attachment reads of them (`ListenerView::attach_inputs`): a route whose
    /// parentRef reaches them attaches as it did while this stays equal.
    pub attach_inputs: Arc<[u8]>,
    /// One of them selects route namespaces by label: attachment reads Namespaces too.
    pub selects_namespaces: bool,
}

/// What one Gateway produces: its resources, its status and its ListenerSets' statuses.
pub struct GatewayOutput {
    pub resources: ResourceSet,
    pub status: GatewayStatus,
    pub listener_sets: BTreeMap<ObjectRef, ListenerSetStatus>,
}

impl<'a> GatewayView<'a> {
    pub fn new(objects: &'a ObjectSet, key: &ObjectRef, gw: &'a Gateway) -> GatewayView<'a> {
        let mut listeners: Vec<ListenerView<'a>> = gw
            .spec
            .listeners
            .iter()
            .map(|spec| {
                listeners::listener_view(objects, gw, Cow::Borrowed(spec), None, &key.namespace)
            })
            .collect();
        let sets = listener_sets::of_gateway(objects, key, gw);
        for set in sets.iter().filter(|s| s.allowed.is_ok()) {
            for spec in listener_sets::as_gateway_listeners(set.set) {
                listeners.push(listeners::listener_view(
                    objects,
                    gw,
                    Cow::Owned(spec),
                    Some(set.key.clone()),
                    &set.key.namespace,
                ));
            }
        }
        listeners::mark_hostname_conflicts(&mut listeners);
        let mut owned: BTreeMap<Option<ObjectRef>, (Vec<usize>, Vec<u8>, bool)> = BTreeMap::new();
        for (i, l) in listeners.iter().enumerate() {
            let (indices, inputs, selects) = owned.entry(l.owner.clone()).or_default();
            indices.push(i);
            *selects |= l.attach_inputs(inputs);
        }
        let listeners_of = owned
            .into_iter()
            .map(|(owner, (indices, inputs, selects_namespaces))| {
                let owned = OwnedListeners {
                    indices,
                    attach_inputs: inputs.into(),
                    selects_namespaces,
                };
                (owner, owned)
            })
            .collect();
        // RAUTA defines no parameters kind yet, so any parametersRef is one it cannot resolve.
        let invalid_parameters = gw
            .spec
            .infrastructure
            .as_ref()
            .and_then(|i| i.parameters_ref.as_ref())
            .map(|p| {
                format!(
                    "parametersRef {}/{} {} is not supported",
                    p.group, p.kind, p.name
                )
            });
        GatewayView {
            generation: generation_of(&gw.metadata),
            invalid_parameters,
            insecure_frontend_validation: tls::insecure_fallback(gw),
            addresses: addresses::requested(gw),
            service_addresses: addresses::of_services(objects, key),
            listener_sets: sets,
            backend_client_certificate: tls::backend_client_certificate(
                objects,
                gw,
                &key.namespace,
            )
            .transpose(),
            listeners,
            listeners_of,
        }
    }

    /// Builds the Gateway's resources from its attached routes, and its status.
    pub fn build(
        &self,
        key: &ObjectRef,
        policies: &PolicyIndex,
        endpoints: &EndpointIndex<'_>,
        memo: &mut RulesMemo,
        endpoints_memo: &mut EndpointsMemo,
    ) -> GatewayOutput {
        let g = self.generation;
        let mut resources = ResourceSet::new();
        let client_certificate = match &self.backend_client_certificate {
            Some(Ok(cert)) => Some(cert),
            _ => None,
        };
        let mut ports = Ports::default();
        // Listener statuses, in listener order, with the ListenerSet they belong to.
        let mut listener_statuses: Vec<(Option<&ObjectRef>, ListenerStatus)> = Vec::new();
        for listener in &self.listeners {
            let owner = listener.owner.as_ref();
            if let Some(problem) = &listener.problem {
                listener_statuses.push((owner, listener.problem_status(problem, g)));
                continue;
            }
            let port = u32::try_from(listener.spec.port)
                .ok()
                .filter(|p| (1..=65535).contains(p));
            let Some(port) = port else { continue };
            // Gateway policies reach a ListenerSet's listeners too; sectionName names the
            // Gateway's own.
            let section = owner.is_none().then_some(listener.spec.name.as_str());
            let attached = policies.for_listener(key, section);
            let status =
                match ports.add(listener, port, client_certificate, attached, &mut resources) {
                    Ok(()) => listener.serving_status(g),
                    Err(_) => listener.protocol_conflict_status(port, g),
                };
            listener_statuses.push((owner, status));
        }
        ports.into_resources(&mut resources, memo);
        policies.add_clusters(&mut resources);
        endpoints.fill(&mut resources, endpoints_memo);

        let mut set_statuses = self.listener_set_statuses(&listener_statuses);
        let (conditions, programmed) = self.conditions();
        let status = GatewayStatus {
            generation: g,
            conditions,
            listeners: listener_statuses
                .into_iter()
                .filter(|(owner, _)| owner.is_none())
                .map(|(_, l)| l)
                .collect(),
            // Attached: allowed by the Gateway and with at least one valid listener (a set
            // whose listeners all conflict or fail is ListenersNotValid, and not attached).
            attached_listener_sets: i32::try_from(
                set_statuses
                    .values()
                    .filter(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Accepted" && c.is_true())
                    })
                    .count(),
            )
            .unwrap_or(i32::MAX),
            requested_addresses: self.addresses.clone().unwrap_or_default(),
            service_addresses: self.service_addresses.clone(),
        };
        if !programmed {
            // A Gateway that is not programmed serves nothing, its ListenerSets included.
            resources.clear();
            for set in set_statuses.values_mut() {
                for c in &mut set.conditions {
                    if c.type_ == "Programmed" {
                        *c = Condition::new(
                            "Programmed",
                            false,
                            "Invalid",
                            "the parent Gateway is not programmed",
                            c.observed_generation,
                        );
                    }
                }
            }
        }
        GatewayOutput {
            resources,
            status,
            listener_sets: set_statuses,
        }
    }

    /// The Gateway's own conditions, and whether it is programmed.
    fn conditions(&self) -> (Vec<Condition>, bool) {
        let g = self.generation;
        let accepted_listener =
            |l: &&ListenerView<'_>| l.problem.as_ref().is_none_or(|p| p.not_accepted.is_none());
        // The Gateway's own listeners decide its Accepted; a ListenerSet's decide the set's.
        let own = || self.listeners.iter().filter(|l| l.owner.is_none());
        let any_valid = own().any(|l| accepted_listener(&l));
        let all_valid = own().all(|l| accepted_listener(&l));
        let accepted = if let Some(reason) = &self.invalid_parameters {
            Condition::new("Accepted", false, "InvalidParameters", reason.clone(), g)
        } else if let Err(problem) = &self.addresses {
            Condition::new(
                "Accepted",
                false,
                "UnsupportedAddress",
                problem.to_string(),
                g,
            )
        } else if !any_valid {
            let message = "no listener is valid";
            Condition::new("Accepted", false, "ListenersNotValid", message, g)
        } else if !all_valid {
            let message = "some listeners are invalid";
            Condition::new("Accepted", true, "ListenersNotValid", message, g)
        } else {
            Condition::new("Accepted", true, "Accepted", "", g)
        };
        let programmed = accepted.is_true() && self.listeners.iter().any(|l| l.valid);
        let mut conditions = Vec::new();
        if self.insecure_frontend_validation {
            conditions.push(Condition::new(
                "InsecureFrontendValidationMode",
                true,
                "ConfigurationChanged",
                "some ports accept clients without a valid certificate (AllowInsecureFallback)",
                g,
            ));
        }
        conditions.push(accepted);
        match &self.backend_client_certificate {
            Some(Err((reason, message))) => {
                conditions.push(Condition::new(
                    "ResolvedRefs",
                    false,
                    reason,
                    message.clone(),
                    g,
                ));
            }
            Some(Ok(_)) => {
                conditions.push(Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g));
            }
            None => {}
        }
        conditions.push(if programmed {
            Condition::new("Programmed", true, "Programmed", "", g)
        } else {
            let message = "the Gateway is not accepted";
            Condition::new("Programmed", false, "Invalid", message, g)
        });
        (conditions, programmed)
    }

    /// The status of each ListenerSet of the Gateway, from its listeners' statuses.
    fn listener_set_statuses(
        &self,
        listeners: &[(Option<&ObjectRef>, ListenerStatus)],
    ) -> BTreeMap<ObjectRef, ListenerSetStatus> {
        let mut by_owner: BTreeMap<&ObjectRef, Vec<ListenerStatus>> = BTreeMap::new();
        for (owner, l) in listeners {
            if let Some(owner) = owner {
                by_owner.entry(owner).or_default().push(l.clone());
            }
        }
        let mut out = BTreeMap::new();
        for set in &self.listener_sets {
            let mine = by_owner.remove(&set.key).unwrap_or_default();
            let conditions = listener_set_conditions(set, &mine);
            out.insert(
                set.key.clone(),
                ListenerSetStatus {
                    generation: set.generation,
                    conditions,
                    listeners: mine,
                },
            );
        }
        out
    }
}

/// A ListenerSet's Accepted and Programmed: NotAllowed when its Gateway does not take it, else
/// from how many of its listeners are accepted.
fn listener_set_conditions(
    set: &ListenerSetView<'_>,
    listeners: &[ListenerStatus],
) -> Vec<Condition> {
    let g = set.generation;
    if let Err(not_allowed) = &set.allowed {
        let message = not_allowed.to_string();
        return vec![
            Condition::new("Accepted", false, "NotAllowed", message.clone(), g),
            Condition::new("Programmed", false, "NotAllowed", message, g),
        ];
    }
    // A listener counts when it is served: one that is accepted but cannot be programmed
    // (say, a certificate no ReferenceGrant lets the set use) makes the set no better.
    let accepted = |l: &ListenerStatus| {
        l.conditions
            .iter()
            .any(|c| c.type_ == "Programmed" && c.is_true())
    };
    if listeners.iter().all(accepted) {
        vec![
            Condition::new("Accepted", true, "Accepted", "", g),
            Condition::new("Programmed", true, "Programmed", "", g),
        ]
    } else if listeners.iter().any(accepted) {
        let message = "some listeners are invalid";
        vec![
            Condition::new("Accepted", true, "ListenersNotValid", message, g),
            Condition::new("Programmed", true, "Programmed", "", g),
        ]
    } else {
        let message = "no listener is valid";
        vec![
            Condition::new("Accepted", false, "ListenersNotValid", message, g),
            Condition::new("Programmed", false, "ListenersNotValid", message, g),
        ]
    }
}
