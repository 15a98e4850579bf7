//! TLS to upstream endpoints (BackendTLSPolicy): the rustls client configuration of a cluster,
//! with the policy's trust anchors and name checks.

use std::sync::Arc;

use rauta_common::api::v1::{UpstreamTls, subject_alt_name};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Why a cluster's TLS settings are unusable (the snapshot is NACKed with this text).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("server_name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    /// A PEM field (CA certificates, client certificate or key) that does not load.
    #[error("{field}: {reason}")]
    Pem { field: &'static str, reason: String },
    #[error("trust anchors: {0}")]
    TrustAnchors(String),
    #[error("subject_alt_names {name:?}: {reason}")]
    SubjectAltName { name: String, reason: String },
    #[error("subject_alt_names: empty entry")]
    EmptySubjectAltName,
    #[error("TLS versions: {0}")]
    Versions(String),
}

fn pem(field: &'static str) -> impl Fn(&dyn std::fmt::Display) -> UpstreamTlsError {
    move |e| UpstreamTlsError::Pem {
        field,
        reason: e.to_string(),
    }
}

/// The name the upstream's certificate is checked against (and sent as SNI).
pub fn server_name(name: &str) -> Result<ServerName<'static>, UpstreamTlsError> {
    ServerName::try_from(name.to_owned()).map_err(|e| UpstreamTlsError::ServerName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Builds the client configuration for a cluster's `tls` (ALPN is the connector's business).
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, UpstreamTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    server_name(&tls.server_name)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_certificates_pem.as_bytes()) {
        let cert = cert.map_err(|e| pem("ca_certificates_pem")(&e))?;
        roots
            .add(cert)
            .map_err(|e| pem("ca_certificates_pem")(&e))?;
    }
    if tls.system_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    // No trust anchors (every CA reference of the policy is invalid): the spec wants these
    // connections to fail, so the verifier refuses every certificate.
    let chain = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| UpstreamTlsError::TrustAnchors(e.to_string()))?,
        )
    };
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    for san in &tls.subject_alt_names {
        match &san.name {
            Some(subject_alt_name::Name::Hostname(h)) => {
                dns.push(ServerName::try_from(h.clone()).map_err(|e| {
                    UpstreamTlsError::SubjectAltName {
                        name: h.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
            Some(subject_alt_name::Name::Uri(u)) => uris.push(u.clone()),
            None => return Err(UpstreamTlsError::EmptySubjectAltName),
        }
    }
    let verifier = Arc::new(BackendVerifier {
        chain,
        dns,
        uris,
        provider: Arc::clone(&provider),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamTlsError::Versions(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client_certificate {
        Some(cert) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.certificate_chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| pem("client certificate")(&e))?;
            let key = PrivateKeyDer::from_pem_slice(cert.private_key_pem.as_bytes())
                .map_err(|e| pem("client key")(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| pem("client certificate")(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Checks the chain against the policy's anchors, then the name: the SNI name when the policy
/// lists no subjectAltNames, otherwise any one of those (DNS or URI).
#[derive(Debug)]
struct BackendVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    dns: Vec<ServerName<'static>>,
    uris: Vec<String>,
    provider: Arc<CryptoProvider>,
}

fn is_name_mismatch(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// The URI subject alternative names of a certificate.
fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for BackendVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else {
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        };
        if self.dns.is_empty() && self.uris.is_empty() {
            return chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        for name in &self.dns {
            match chain.verify_server_cert(end_entity, intermediates, name, ocsp_response, now) {
                Ok(ok) => return Ok(ok),
                Err(e) if is_name_mismatch(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.uris.is_empty() {
            // webpki checks the chain before the name, so a name mismatch means a good chain.
            match chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => {}
                Err(e) if is_name_mismatch(&e) => {}
                Err(e) => return Err(e),
            }
            let presented = uri_sans(end_entity);
            if self.uris.iter().any(|u| presented.contains(u)) {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(Error::InvalidCertificate(CertificateError::NotValidForName))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
