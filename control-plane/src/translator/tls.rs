//! HTTPS listeners: resolves `tls.certificateRefs` to Secrets and validates their PEM.

use gateway_api::gateways::{GatewayListeners, GatewayListenersTlsMode};
use rauta_common::api::v1::ServerCertificate;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::backends::reference_granted;
use crate::objects::{ObjectRef, ObjectSet};

/// Why a listener's TLS settings cannot be served: the condition reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProblem {
    /// True when the listener is still Accepted (a reference problem, not a bad spec).
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
}

fn problem(accepted: bool, reason: &'static str, message: impl Into<String>) -> TlsProblem {
    TlsProblem {
        accepted,
        reason,
        message: message.into(),
    }
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
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        if !(group.is_empty() || group == "core") || kind != "Secret" {
            return Err(problem(
                true,
                "InvalidCertificateRef",
                format!("certificateRef {}: only core Secrets are supported", r.name),
            ));
        }
        let namespace = r.namespace.as_deref().unwrap_or(gateway_namespace);
        if namespace != gateway_namespace
            && !reference_granted(
                objects,
                "Gateway",
                gateway_namespace,
                "",
                "Secret",
                namespace,
                &r.name,
            )
        {
            return Err(problem(
                true,
                "RefNotPermitted",
                format!("Secret {namespace}/{}: no ReferenceGrant allows it", r.name),
            ));
        }
        let key = ObjectRef::new(namespace, &r.name);
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
