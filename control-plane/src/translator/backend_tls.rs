//! BackendTLSPolicy (GEP-1897): which Service ports the proxy reaches over TLS and how it
//! checks them, plus each policy's conditions.

use std::collections::BTreeSet;

use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType,
};
use rauta_common::api::v1::{SubjectAltName, UpstreamTls, subject_alt_name};

use super::references::{config_map_ca, is_core_group};
use super::status::Condition;
use crate::objects::{ObjectRef, ObjectSet};

/// A Service port as a policy targets it: the Service and the port's name (sectionName).
pub type ServicePortKey = (ObjectRef, Option<String>);

/// Precedence among policies for the same target: older first, then namespace/name.
pub type Precedence = (Option<k8s_openapi::jiff::Timestamp>, ObjectRef);

/// The precedence of the policy `key` with this metadata (any kind attached to Services).
pub fn precedence_of(
    key: &ObjectRef,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Precedence {
    (meta.creation_timestamp.as_ref().map(|t| t.0), key.clone())
}

fn precedence(key: &ObjectRef, policy: &BackendTlsPolicy) -> Precedence {
    precedence_of(key, &policy.metadata)
}

/// Whether a route uses the Service port a policy targets: one in `used` of that Service,
/// of the named port when the target names one.
pub fn port_used(used: &BTreeSet<ServicePortKey>, (service, section): &ServicePortKey) -> bool {
    used.iter().any(|(s, port)| {
        s == service
            && section
                .as_ref()
                .is_none_or(|sec| Some(sec) == port.as_ref())
    })
}

/// The (Service, sectionName) pairs a policy names. Targets of other kinds are ignored here and
/// reported by [`conditions`].
fn targets<'a>(
    key: &'a ObjectRef,
    policy: &'a BackendTlsPolicy,
) -> impl Iterator<Item = ServicePortKey> + 'a {
    policy
        .spec
        .target_refs
        .iter()
        .filter(|t| is_core_group(&t.group) && t.kind == "Service")
        .map(|t| {
            (
                ObjectRef::new(&key.namespace, &t.name),
                t.section_name.clone(),
            )
        })
}

/// The policy in effect for one Service port: a policy naming the port beats one for the whole
/// Service; among policies for the same target the oldest wins, then the first by name.
pub fn policy_for(
    objects: &ObjectSet,
    service: &ObjectRef,
    port_name: Option<&str>,
) -> Option<ObjectRef> {
    let winner = |section: Option<&str>| {
        objects
            .backend_tls_policies
            .iter()
            .filter(|(key, policy)| {
                targets(key, policy).any(|(s, sec)| s == *service && sec.as_deref() == section)
            })
            .min_by_key(|(key, policy)| precedence(key, policy))
            .map(|(key, _)| key.clone())
    };
    port_name
        .and_then(|n| winner(Some(n)))
        .or_else(|| winner(None))
}

/// What the proxy needs to originate TLS for a policy. A policy without any usable CA still
/// yields a config (with no trust anchors), so connections fail with a 5xx as the spec demands.
pub fn upstream_tls(objects: &ObjectSet, key: &ObjectRef) -> Option<UpstreamTls> {
    let policy = objects.backend_tls_policies.get(key)?;
    let validation = &policy.spec.validation;
    let mut bundle = String::new();
    for r in validation.ca_certificate_refs.iter().flatten() {
        if is_core_group(&r.group)
            && r.kind == "ConfigMap"
            && let Ok(pem) = config_map_ca(objects, &ObjectRef::new(&key.namespace, &r.name))
        {
            bundle.push_str(pem);
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
        }
    }
    let subject_alt_names = validation
        .subject_alt_names
        .iter()
        .flatten()
        .filter_map(|san| {
            let name = match san.r#type {
                BackendTlsPolicyValidationSubjectAltNamesType::Hostname => {
                    subject_alt_name::Name::Hostname(san.hostname.clone()?.to_ascii_lowercase())
                }
                BackendTlsPolicyValidationSubjectAltNamesType::Uri => {
                    subject_alt_name::Name::Uri(san.uri.clone()?)
                }
            };
            Some(SubjectAltName { name: Some(name) })
        })
        .collect();
    Some(UpstreamTls {
        server_name: validation.hostname.to_ascii_lowercase(),
        ca_certificates_pem: bundle,
        system_roots: validation.well_known_ca_certificates.as_deref() == Some("System"),
        subject_alt_names,
        client_certificate: None,
    })
}

/// A policy's Accepted and ResolvedRefs conditions, the same for every ancestor.
pub fn conditions(objects: &ObjectSet, key: &ObjectRef) -> Vec<Condition> {
    let Some(policy) = objects.backend_tls_policies.get(key) else {
        return Vec::new();
    };
    let g = policy.metadata.generation.unwrap_or(0);
    let validation = &policy.spec.validation;
    let mut unresolved: Option<(&'static str, String)> = None;
    let mut valid_cas = 0usize;
    for r in validation.ca_certificate_refs.iter().flatten() {
        if !(is_core_group(&r.group) && r.kind == "ConfigMap") {
            unresolved.get_or_insert((
                "InvalidKind",
                format!(
                    "caCertificateRef {}: kind {:?} in group {:?} is not supported",
                    r.name, r.kind, r.group
                ),
            ));
            continue;
        }
        match config_map_ca(objects, &ObjectRef::new(&key.namespace, &r.name)) {
            Ok(_) => valid_cas += 1,
            Err(problem) => {
                unresolved.get_or_insert(("InvalidCACertificateRef", problem.to_string()));
            }
        }
    }
    let system = validation.well_known_ca_certificates.as_deref();
    let accepted = if let Some(other) = system.filter(|s| *s != "System") {
        Condition::new(
            "Accepted",
            false,
            "Invalid",
            format!("wellKnownCACertificates {other:?} is not supported"),
            g,
        )
    } else if valid_cas == 0 && system.is_none() {
        let message = unresolved
            .as_ref()
            .map_or_else(|| "no caCertificateRefs".to_owned(), |(_, m)| m.clone());
        Condition::new("Accepted", false, "NoValidCACertificate", message, g)
    } else if let Some(winner) = conflict_winner(objects, key, policy) {
        Condition::new(
            "Accepted",
            false,
            "Conflicted",
            format!("BackendTLSPolicy {winner} targets the same Service port and takes precedence"),
            g,
        )
    } else {
        Condition::new("Accepted", true, "Accepted", "", g)
    };
    let resolved = match unresolved {
        Some((reason, message)) => Condition::new("ResolvedRefs", false, reason, message, g),
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", g),
    };
    vec![accepted, resolved]
}

/// The policy that takes precedence over `key` for one of its targets, if any.
fn conflict_winner(
    objects: &ObjectSet,
    key: &ObjectRef,
    policy: &BackendTlsPolicy,
) -> Option<ObjectRef> {
    let mine = precedence(key, policy);
    let my_targets: Vec<ServicePortKey> = targets(key, policy).collect();
    objects
        .backend_tls_policies
        .iter()
        .filter(|(other, _)| *other != key)
        .filter(|(other, p)| precedence(other, p) < mine)
        .find(|(other, p)| targets(other, p).any(|t| my_targets.contains(&t)))
        .map(|(other, _)| other.clone())
}

/// The policies that name a Service port in `used`, keyed by policy: whose ancestors the
/// Gateways using that port become.
pub fn policies_targeting<'a>(
    objects: &'a ObjectSet,
    used: &'a BTreeSet<ServicePortKey>,
) -> impl Iterator<Item = &'a ObjectRef> + 'a {
    objects
        .backend_tls_policies
        .iter()
        .filter(move |(key, policy)| targets(key, policy).any(|t| port_used(used, &t)))
        .map(|(key, _)| key)
}
