//! TLS termination: a rustls server configuration per HTTPS listener, choosing the certificate
//! by SNI (exact name, then the longest wildcard, then the default certificate).

use std::collections::HashMap;
use std::sync::Arc;

use rauta_common::api::v1::{ClientValidation, ServerCertificate};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix with its leading dot, key), longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        self.exact
            .get(&name)
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| {
                        name.len() > suffix.len() && name.ends_with(suffix.as_str())
                    })
                    .map(|(_, k)| k)
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Why a listener's TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("an HTTPS listener needs at least one certificate")]
    NoCertificate,
    /// A PEM field that does not load (certificate chain, private key, client CA).
    #[error("{field}: {reason}")]
    Pem { field: &'static str, reason: String },
    #[error("certificate chain holds no certificate")]
    EmptyChain,
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("{0}")]
    Versions(String),
}

fn pem(field: &'static str) -> impl Fn(&dyn std::fmt::Display) -> TlsError {
    move |e| TlsError::Pem {
        field,
        reason: e.to_string(),
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    provider: &CryptoProvider,
    cert: &ServerCertificate,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.certificate_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| pem("certificate chain")(&e))?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain);
    }
    let key = PrivateKeyDer::from_pem_slice(cert.private_key_pem.as_bytes())
        .map_err(|e| pem("private key")(&e))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| pem("private key")(&e))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Which Gateway listener a name belongs to on an HTTPS socket: the listener whose hostname is
/// the exact name, else the longest wildcard, else the listener without hostname. Used to
/// refuse requests whose Host belongs to another listener than their SNI (421).
#[derive(Debug, Default)]
pub struct ListenerNames {
    exact: std::collections::HashSet<String>,
    /// Wildcard suffixes with their leading dot, longest first.
    wildcards: Vec<String>,
    has_default: bool,
}

impl ListenerNames {
    pub fn from_certificates(certificates: &[ServerCertificate]) -> ListenerNames {
        let mut names = ListenerNames::default();
        for c in certificates {
            names.has_default |= c.server_names.is_empty();
            for n in &c.server_names {
                let n = n.to_ascii_lowercase();
                match n.strip_prefix('*') {
                    Some(suffix) => names.wildcards.push(suffix.to_owned()),
                    None => {
                        names.exact.insert(n);
                    }
                }
            }
        }
        names.wildcards.sort_by_key(|s| std::cmp::Reverse(s.len()));
        names.wildcards.dedup();
        names
    }

    /// The listener hostname `name` falls under ("" for the listener without hostname).
    pub fn listener_for<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if let Some(exact) = self.exact.get(name) {
            return Some(exact);
        }
        if let Some(w) = self
            .wildcards
            .iter()
            .find(|w| name.len() > w.len() && name.ends_with(w.as_str()))
        {
            return Some(w);
        }
        self.has_default.then_some("")
    }
}

/// Verifies client certificates against the listener's CAs; with AllowInsecureFallback it still
/// asks for a certificate but lets every client in.
fn client_verifier(
    provider: &Arc<CryptoProvider>,
    v: &ClientValidation,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(v.ca_certificates_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| pem("client CA")(&e))?)
            .map_err(|e| pem("client CA")(&e))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .build()
            .map_err(|e| pem("client CA")(&e))?;
    if v.allow_insecure_fallback {
        Ok(Arc::new(InsecureFallback(verifier)))
    } else {
        Ok(verifier)
    }
}

/// AllowInsecureFallback: offer client authentication, accept whatever comes (or nothing).
#[derive(Debug)]
struct InsecureFallback(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A server configuration for an HTTPS listener (TLS 1.2 and 1.3, ALPN h2 and http/1.1).
pub fn server_config(
    certificates: &[ServerCertificate],
    validation: Option<&ClientValidation>,
) -> Result<Arc<ServerConfig>, TlsError> {
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let provider = provider();
    let mut resolver = SniResolver::default();
    for cert in certificates {
        let key = certified_key(&provider, cert)?;
        if cert.server_names.is_empty() {
            resolver.default.get_or_insert_with(|| Arc::clone(&key));
        }
        for name in &cert.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => resolver
                    .wildcard
                    .push((suffix.to_owned(), Arc::clone(&key))),
                Some(_) => return Err(TlsError::ServerName(name)),
                None => {
                    resolver
                        .exact
                        .entry(name)
                        .or_insert_with(|| Arc::clone(&key));
                }
            }
        }
    }
    resolver
        .wildcard
        .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Versions(e.to_string()))?;
    let builder = match validation {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(client_verifier(&provider, v)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], sans: &[&str]) -> ServerCertificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        ServerCertificate {
            server_names: names.iter().map(|s| s.to_string()).collect(),
            certificate_chain_pem: c.pem(),
            private_key_pem: key.serialize_pem(),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let provider = provider();
        let mut r = SniResolver::default();
        let a = certified_key(&provider, &cert(&["a.example.com"], &["a.example.com"])).unwrap();
        let w = certified_key(&provider, &cert(&["*.example.com"], &["*.example.com"])).unwrap();
        let d = certified_key(&provider, &cert(&[], &["default"])).unwrap();
        r.exact.insert("a.example.com".into(), Arc::clone(&a));
        r.wildcard.push((".example.com".into(), Arc::clone(&w)));
        r.default = Some(Arc::clone(&d));
        assert!(Arc::ptr_eq(&r.pick(Some("A.example.com")).unwrap(), &a));
        assert!(Arc::ptr_eq(&r.pick(Some("b.example.com")).unwrap(), &w));
        assert!(Arc::ptr_eq(&r.pick(Some("example.com")).unwrap(), &d));
        assert!(Arc::ptr_eq(&r.pick(None).unwrap(), &d));
    }

    #[test]
    fn names_resolve_to_their_listener() {
        let names = ListenerNames::from_certificates(&[
            cert(&[], &["d"]),
            cert(&["second.example.org"], &["x"]),
            cert(&["*.wildcard.org"], &["x"]),
            cert(&["fourth.wildcard.org"], &["x"]),
        ]);
        assert_eq!(names.listener_for("example.org"), Some(""));
        assert_eq!(
            names.listener_for("second.example.org"),
            Some("second.example.org")
        );
        assert_eq!(
            names.listener_for("third.wildcard.org"),
            Some(".wildcard.org")
        );
        assert_eq!(
            names.listener_for("fourth.wildcard.org"),
            Some("fourth.wildcard.org")
        );
        assert_eq!(
            ListenerNames::from_certificates(&[cert(&["a.b"], &["a.b"])]).listener_for("c.d"),
            None
        );
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        let mut c = cert(&[], &["x"]);
        c.private_key_pem = "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n".into();
        assert!(server_config(&[c], None).is_err());
        assert!(server_config(&[], None).is_err());
        assert!(server_config(&[cert(&["*bad"], &["x"])], None).is_err());
        assert!(server_config(&[cert(&["ok.example"], &["ok.example"])], None).is_ok());
    }
}
