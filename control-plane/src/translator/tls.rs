//! HTTPS listeners: resolves `tls.certificateRefs` to Secrets and validates their PEM.

use gateway_api::gateways::{GatewayListeners, GatewayListenersTlsMode};
use rauta_common::api::v1::{ClientCertificate, ClientValidation, ServerCertificate};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::backends::reference_granted;
use crate::objects::{ObjectRef, ObjectSet};

/// Why a listener's TLS settings cannot be served, as its conditions will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProblem {
    /// Some(reason): Accepted=False with that reason.
    pub not_accepted: Option<&'static str>,
    /// Some(reason): ResolvedRefs=False with that reason.
    pub unresolved: Option<&'static str>,
    pub message: String,
}

/// `accepted`: the listener stays Accepted and `reason` goes to ResolvedRefs; otherwise
/// `reason` goes to Accepted.
fn problem(accepted: bool, reason: &'static str, message: impl Into<String>) -> TlsProblem {
    if accepted {
        TlsProblem {
            not_accepted: None,
            unresolved: Some(reason),
            message: message.into(),
        }
    } else {
        TlsProblem {
            not_accepted: Some(reason),
            unresolved: None,
            message: message.into(),
        }
    }
}

/// A Gateway's reference to a core-group object (Secret, ConfigMap), as written.
struct CoreRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
}

/// Why a [`CoreRef`] cannot be followed; the caller picks the condition reason.
enum RefError {
    /// Not the expected group and kind.
    Kind(String),
    /// In another namespace without a ReferenceGrant.
    NotPermitted(String),
}

impl CoreRef<'_> {
    /// The referenced object's key, when it is a `kind` the Gateway may use. Existence is the
    /// caller's check.
    fn resolve(
        &self,
        objects: &ObjectSet,
        gateway_namespace: &str,
        kind: &str,
    ) -> Result<ObjectRef, RefError> {
        let group = self.group.unwrap_or("");
        let actual = self.kind.unwrap_or(kind);
        if !(group.is_empty() || group == "core") || actual != kind {
            return Err(RefError::Kind(format!(
                "reference {}: {actual} in group {group:?} is not a core {kind}",
                self.name
            )));
        }
        let namespace = self.namespace.unwrap_or(gateway_namespace);
        if namespace != gateway_namespace
            && !reference_granted(
                objects,
                "Gateway",
                gateway_namespace,
                "",
                kind,
                namespace,
                self.name,
            )
        {
            return Err(RefError::NotPermitted(format!(
                "{kind} {namespace}/{}: no ReferenceGrant allows it",
                self.name
            )));
        }
        Ok(ObjectRef::new(namespace, self.name))
    }
}

/// The validation settings of spec.tls.frontend (the default and per-port types share a shape).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FrontendValidation {
    #[serde(default)]
    ca_certificate_refs: Vec<CaRef>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct CaRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// The frontend validation that applies to `port`: its perPort entry, else the default. An
/// unreadable setting is an error, never "no validation" (fail closed).
fn validation_for(
    gateway: &gateway_api::gateways::Gateway,
    port: i32,
) -> Result<Option<FrontendValidation>, String> {
    let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return Ok(None);
    };
    let value = match frontend.per_port.iter().flatten().find(|p| p.port == port) {
        Some(p) => serde_json::to_value(&p.tls.validation),
        None => serde_json::to_value(&frontend.default.validation),
    };
    value
        .and_then(serde_json::from_value::<Option<FrontendValidation>>)
        .map_err(|e| format!("frontend validation for port {port}: {e}"))
}

/// Whether any port of the Gateway accepts connections without a valid client certificate.
pub fn insecure_fallback(gateway: &gateway_api::gateways::Gateway) -> bool {
    gateway.spec.listeners.iter().any(|l| {
        validation_for(gateway, l.port)
            .ok()
            .flatten()
            .is_some_and(|v| v.mode.as_deref() == Some("AllowInsecureFallback"))
    })
}

/// The client-certificate validation of an HTTPS listener, or why it cannot be served.
pub fn client_validation(
    objects: &ObjectSet,
    gateway: &gateway_api::gateways::Gateway,
    gateway_namespace: &str,
    listener: &GatewayListeners,
) -> Result<Option<ClientValidation>, TlsProblem> {
    let validation = validation_for(gateway, listener.port).map_err(|message| TlsProblem {
        not_accepted: Some("NoValidCACertificate"),
        unresolved: Some("InvalidCACertificateRef"),
        message,
    })?;
    let Some(validation) = validation else {
        return Ok(None);
    };
    if validation.ca_certificate_refs.is_empty() {
        return Ok(None);
    }
    let invalid = |reason, message: String| TlsProblem {
        not_accepted: Some("NoValidCACertificate"),
        unresolved: Some(reason),
        message,
    };
    let mut bundle = String::new();
    for r in &validation.ca_certificate_refs {
        let target = CoreRef {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
        };
        let key = match target.resolve(objects, gateway_namespace, "ConfigMap") {
            Ok(key) => key,
            Err(RefError::Kind(message)) => {
                return Err(invalid("InvalidCACertificateKind", message));
            }
            Err(RefError::NotPermitted(message)) => {
                return Err(invalid("RefNotPermitted", message));
            }
        };
        let pem = config_map_ca(objects, &key)
            .map_err(|message| invalid("InvalidCACertificateRef", message))?;
        bundle.push_str(pem);
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
    }
    Ok(Some(ClientValidation {
        ca_certificates_pem: bundle,
        allow_insecure_fallback: validation.mode.as_deref() == Some("AllowInsecureFallback"),
    }))
}

/// The PEM in a ConfigMap's `ca.crt`, when it holds at least one certificate.
pub fn config_map_ca<'a>(objects: &'a ObjectSet, key: &ObjectRef) -> Result<&'a str, String> {
    let pem = objects
        .config_maps
        .get(key)
        .and_then(|cm| cm.data.as_ref())
        .and_then(|d| d.get("ca.crt"))
        .ok_or_else(|| format!("ConfigMap {key} with ca.crt not found"))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    if !certs.is_ok_and(|c| !c.is_empty()) {
        return Err(format!("ConfigMap {key}: ca.crt holds no PEM certificate"));
    }
    Ok(pem)
}

/// The certificate a Gateway presents to TLS backends (spec.tls.backend.clientCertificateRef),
/// or the ResolvedRefs reason and message saying why it cannot be used.
pub fn backend_client_certificate(
    objects: &ObjectSet,
    gateway: &gateway_api::gateways::Gateway,
    gateway_namespace: &str,
) -> Result<Option<ClientCertificate>, (&'static str, String)> {
    let Some(r) = gateway
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
    else {
        return Ok(None);
    };
    let target = CoreRef {
        group: r.group.as_deref(),
        kind: r.kind.as_deref(),
        name: &r.name,
        namespace: r.namespace.as_deref(),
    };
    let invalid = |message: String| ("InvalidClientCertificateRef", message);
    let key = match target.resolve(objects, gateway_namespace, "Secret") {
        Ok(key) => key,
        Err(RefError::Kind(message)) => return Err(invalid(message)),
        Err(RefError::NotPermitted(message)) => return Err(("RefNotPermitted", message)),
    };
    let secret = objects
        .secrets
        .get(&key)
        .ok_or_else(|| invalid(format!("Secret {key} not found")))?;
    let (Some(chain), Some(private_key)) =
        (secret_key(secret, "tls.crt"), secret_key(secret, "tls.key"))
    else {
        return Err(invalid(format!("Secret {key} lacks tls.crt or tls.key")));
    };
    validate_pem(&chain, &private_key).map_err(|e| invalid(format!("Secret {key}: {e}")))?;
    Ok(Some(ClientCertificate {
        certificate_chain_pem: String::from_utf8_lossy(&chain).into_owned(),
        private_key_pem: String::from_utf8_lossy(&private_key).into_owned(),
    }))
}

fn secret_key<'a>(
    secret: &'a k8s_openapi::api::core::v1::Secret,
    key: &str,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(std::borrow::Cow::Borrowed(&v.0));
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| std::borrow::Cow::Borrowed(s.as_bytes()))
}

/// Checks that `chain` holds at least one PEM certificate and `key` one PEM private key.
pub fn validate_pem(chain: &[u8], key: &[u8]) -> Result<(), String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(())
}

/// The certificates of an HTTPS listener, or why it cannot be served.
pub fn listener_certificates(
    objects: &ObjectSet,
    gateway_namespace: &str,
    listener: &GatewayListeners,
) -> Result<Vec<ServerCertificate>, TlsProblem> {
    let tls = listener.tls.as_ref().ok_or_else(|| {
        problem(
            false,
            "InvalidTLSConfiguration",
            "an HTTPS listener needs tls.certificateRefs",
        )
    })?;
    if matches!(tls.mode, Some(GatewayListenersTlsMode::Passthrough)) {
        return Err(problem(
            false,
            "UnsupportedValue",
            "tls.mode Passthrough needs a TLSRoute listener (protocol TLS)",
        ));
    }
    let refs = tls.certificate_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        return Err(problem(
            true,
            "InvalidCertificateRef",
            "tls.certificateRefs is empty",
        ));
    }
    let server_names: Vec<String> = listener
        .hostname
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let mut out = Vec::new();
    for r in refs {
        let target = CoreRef {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
        };
        let key = match target.resolve(objects, gateway_namespace, "Secret") {
            Ok(key) => key,
            Err(RefError::Kind(message)) => {
                return Err(problem(true, "InvalidCertificateRef", message));
            }
            Err(RefError::NotPermitted(message)) => {
                return Err(problem(true, "RefNotPermitted", message));
            }
        };
        let secret = objects.secrets.get(&key).ok_or_else(|| {
            problem(
                true,
                "InvalidCertificateRef",
                format!("Secret {key} not found"),
            )
        })?;
        let (Some(chain), Some(private_key)) =
            (secret_key(secret, "tls.crt"), secret_key(secret, "tls.key"))
        else {
            return Err(problem(
                true,
                "InvalidCertificateRef",
                format!("Secret {key} lacks tls.crt or tls.key"),
            ));
        };
        validate_pem(&chain, &private_key)
            .map_err(|e| problem(true, "InvalidCertificateRef", format!("Secret {key}: {e}")))?;
        out.push(ServerCertificate {
            server_names: server_names.clone(),
            certificate_chain_pem: String::from_utf8_lossy(&chain).into_owned(),
            private_key_pem: String::from_utf8_lossy(&private_key).into_owned(),
        });
    }
    Ok(out)
}
