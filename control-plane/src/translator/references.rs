//! Reference resolution, in one place: whether a ReferenceGrant lets an object refer across
//! namespaces, and the core objects (Secrets, ConfigMaps) that listeners, Gateways and
//! BackendTLSPolicies name. Backends (`backends.rs`), listener TLS (`tls.rs`) and
//! BackendTLSPolicy (`backend_tls.rs`) all read references through here; this module depends
//! on none of them.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::objects::{ObjectRef, ObjectSet};

/// The API group of Gateway API objects (the default group of parentRefs and route kinds).
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Whether a group names the core API group (written empty or "core").
pub fn is_core_group(group: &str) -> bool {
    group.is_empty() || group == "core"
}

/// The object a reference may reach: group, kind, namespace and name.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Whether a ReferenceGrant in the target's namespace lets `from_kind` objects (of the Gateway
/// API group, or ours for our policies) in `from_namespace` refer to the target.
pub fn reference_granted(
    objects: &ObjectSet,
    from_kind: &str,
    from_namespace: &str,
    to: Target<'_>,
) -> bool {
    let from_group = match from_kind {
        "SecurityPolicy" | "RateLimitPolicy" | "BackendPolicy" | "TrafficPolicy" => {
            crate::crds::GROUP
        }
        _ => GATEWAY_GROUP,
    };
    objects
        .reference_grants
        .iter()
        .filter(|(key, _)| *key.namespace == *to.namespace)
        .any(|(_, grant)| {
            let from_ok = grant.spec.from.iter().any(|f| {
                f.group == from_group && f.kind == from_kind && f.namespace == from_namespace
            });
            let to_ok = grant.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|n| n == to.name)
            });
            from_ok && to_ok
        })
}

/// A Gateway's reference to a core-group object (Secret, ConfigMap), as written.
pub struct CoreRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
}

/// Why a [`CoreRef`] cannot be followed; the caller picks the condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreRefError {
    /// Not the expected group and kind.
    #[error("reference {name}: {kind} in group {group:?} is not a core {expected}")]
    Kind {
        name: String,
        kind: String,
        group: String,
        expected: String,
    },
    /// In another namespace without a ReferenceGrant.
    #[error("{kind} {namespace}/{name}: no ReferenceGrant allows it")]
    NotPermitted {
        kind: String,
        namespace: String,
        name: String,
    },
}

impl CoreRef<'_> {
    /// The referenced object's key, when it is a `kind` that the object referring to it (a
    /// `from_kind` of the Gateway API group in `from_namespace`: a Gateway, or a ListenerSet
    /// for its listeners' certificates) may use. Existence is the caller's check.
    pub fn resolve(
        &self,
        objects: &ObjectSet,
        (from_kind, from_namespace): (&str, &str),
        kind: &str,
    ) -> Result<ObjectRef, CoreRefError> {
        let group = self.group.unwrap_or("");
        let actual = self.kind.unwrap_or(kind);
        if !is_core_group(group) || actual != kind {
            return Err(CoreRefError::Kind {
                name: self.name.to_owned(),
                kind: actual.to_owned(),
                group: group.to_owned(),
                expected: kind.to_owned(),
            });
        }
        let namespace = self.namespace.unwrap_or(from_namespace);
        let target = Target {
            group: "",
            kind,
            namespace,
            name: self.name,
        };
        if namespace != from_namespace
            && !reference_granted(objects, from_kind, from_namespace, target)
        {
            return Err(CoreRefError::NotPermitted {
                kind: kind.to_owned(),
                namespace: namespace.to_owned(),
                name: self.name.to_owned(),
            });
        }
        Ok(ObjectRef::new(namespace, self.name))
    }
}

/// Why a ConfigMap cannot serve as a CA bundle; the message is what conditions carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleError {
    #[error("ConfigMap {0} with ca.crt not found")]
    NotFound(ObjectRef),
    #[error("ConfigMap {0}: ca.crt holds no PEM certificate")]
    NoCertificate(ObjectRef),
}

/// The PEM in a ConfigMap's `ca.crt`, when it holds at least one certificate.
pub fn config_map_ca<'a>(
    objects: &'a ObjectSet,
    key: &ObjectRef,
) -> Result<&'a str, CaBundleError> {
    let pem = objects
        .config_maps
        .get(key)
        .and_then(|cm| cm.data.as_ref())
        .and_then(|d| d.get("ca.crt"))
        .ok_or_else(|| CaBundleError::NotFound(key.clone()))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    if !certs.is_ok_and(|c| !c.is_empty()) {
        return Err(CaBundleError::NoCertificate(key.clone()));
    }
    Ok(pem)
}

/// A certificate chain and its private key, as PEM, from a `kubernetes.io/tls`-shaped Secret.
pub struct TlsPair {
    pub chain_pem: String,
    pub key_pem: String,
}

/// The certificate and key of Secret `key`, checked to be PEM; else why not (the message a
/// condition carries; it never quotes the Secret's content).
pub fn secret_tls_pair(objects: &ObjectSet, key: &ObjectRef) -> Result<TlsPair, String> {
    let secret = objects
        .secrets
        .get(key)
        .ok_or_else(|| format!("Secret {key} not found"))?;
    let (Some(chain), Some(private_key)) = (
        secret_value(secret, "tls.crt"),
        secret_value(secret, "tls.key"),
    ) else {
        return Err(format!("Secret {key} lacks tls.crt or tls.key"));
    };
    validate_pem(&chain, &private_key).map_err(|e| format!("Secret {key}: {e}"))?;
    Ok(TlsPair {
        chain_pem: String::from_utf8_lossy(&chain).into_owned(),
        key_pem: String::from_utf8_lossy(&private_key).into_owned(),
    })
}

/// Every entry of Secret `key` (from `data`, and `stringData` for names `data` lacks), in name
/// order; `None` when there is no such Secret.
pub fn secret_entries(objects: &ObjectSet, key: &ObjectRef) -> Option<Vec<(String, Vec<u8>)>> {
    let secret = objects.secrets.get(key)?;
    let mut entries: std::collections::BTreeMap<String, Vec<u8>> =
        std::collections::BTreeMap::new();
    for (name, value) in secret.string_data.iter().flatten() {
        entries.insert(name.clone(), value.as_bytes().to_vec());
    }
    for (name, value) in secret.data.iter().flatten() {
        entries.insert(name.clone(), value.0.clone());
    }
    Some(entries.into_iter().collect())
}

/// One value of a Secret, from `data` or else `stringData`.
fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<Cow<'a, [u8]>> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(Cow::Borrowed(&v.0));
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| Cow::Borrowed(s.as_bytes()))
}

/// Checks that `chain` holds at least one PEM certificate and `key` one PEM private key.
fn validate_pem(chain: &[u8], key: &[u8]) -> Result<(), String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(())
}
