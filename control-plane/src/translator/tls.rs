//! HTTPS listeners: resolves `tls.certificateRefs` to Secrets and validates their PEM.

use gateway_api::gateways::{GatewayListeners, GatewayListenersTlsMode};
use rauta_common::api::v1::{ClientCertificate, ClientValidation, ServerCertificate};

use super::references::{CoreRef, CoreRefError, config_map_ca, secret_tls_pair};
use crate::objects::ObjectSet;

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
        let key = target
            .resolve(objects, ("Gateway", gateway_namespace), "ConfigMap")
            .map_err(|e| match e {
                CoreRefError::Kind { .. } => invalid("InvalidCACertificateKind", e.to_string()),
                CoreRefError::NotPermitted { .. } => invalid("RefNotPermitted", e.to_string()),
            })?;
        let pem = config_map_ca(objects, &key)
            .map_err(|e| invalid("InvalidCACertificateRef", e.to_string()))?;
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
    let key = target
        .resolve(objects, ("Gateway", gateway_namespace), "Secret")
        .map_err(|e| match e {
            CoreRefError::Kind { .. } => ("InvalidClientCertificateRef", e.to_string()),
            CoreRefError::NotPermitted { .. } => ("RefNotPermitted", e.to_string()),
        })?;
    let pair = secret_tls_pair(objects, &key)
        .map_err(|e| ("InvalidClientCertificateRef", e.to_string()))?;
    Ok(Some(ClientCertificate {
        certificate_chain_pem: pair.chain_pem,
        private_key_pem: pair.key_pem,
    }))
}

/// The certificates of an HTTPS listener, or why it cannot be served.
/// `owner` is the kind and namespace of the object the listener belongs to (a Gateway or a
/// ListenerSet): ReferenceGrants must name that kind for Secrets in other namespaces.
pub fn listener_certificates(
    objects: &ObjectSet,
    owner: (&str, &str),
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
        let key = target
            .resolve(objects, owner, "Secret")
            .map_err(|e| match e {
                CoreRefError::Kind { .. } => problem(true, "InvalidCertificateRef", e.to_string()),
                CoreRefError::NotPermitted { .. } => {
                    problem(true, "RefNotPermitted", e.to_string())
                }
            })?;
        let pair = secret_tls_pair(objects, &key)
            .map_err(|e| problem(true, "InvalidCertificateRef", e.to_string()))?;
        out.push(ServerCertificate {
            server_names: server_names.clone(),
            certificate_chain_pem: pair.chain_pem,
            private_key_pem: pair.key_pem,
        });
    }
    Ok(out)
}
