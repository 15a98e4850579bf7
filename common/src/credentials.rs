//! Credentials of the discovery channel, read from files and reloaded when the files change
//! (certificate and token rotation without restarts): the controller's server certificate and
//! client CA, the proxy's client certificate and controller CA, and the bearer token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tracing::{info, warn};

/// How often credential files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

fn file_error(path: &Path, message: impl ToString) -> CredentialError {
    CredentialError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|e| file_error(path, e))
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_identity(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CredentialError> {
    let chain = certificate_chain(&read(cert)?).map_err(|e| file_error(cert, e))?;
    let signing = signing_key(&read(key)?).map_err(|e| file_error(key, e))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn certificate_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(chain)
}

fn signing_key(pem: &[u8]) -> Result<Arc<dyn rustls::sign::SigningKey>, String> {
    let key_der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())
}

/// A certificate chain and its key from PEM text (a certificate the program made itself).
pub fn identity_from_pem(
    what: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>, CredentialError> {
    let error = |message| CredentialError::File {
        path: PathBuf::from(what),
        message,
    };
    let chain = certificate_chain(cert_pem.as_bytes()).map_err(error)?;
    let signing = signing_key(key_pem.as_bytes()).map_err(error)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn load_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, CredentialError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(path)?) {
        roots
            .add(cert.map_err(|e| file_error(path, e))?)
            .map_err(|e| file_error(path, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(path, "no PEM certificate"));
    }
    Ok(Arc::new(roots))
}

/// Calls `reload` whenever one of `paths` changes (modification time or size), until the
/// returned task is dropped with the runtime. A failed reload keeps the previous credentials.
fn watch_files(
    paths: Vec<PathBuf>,
    what: &'static str,
    reload: impl Fn() -> Result<(), CredentialError> + Send + 'static,
) {
    let stamp = move || -> Vec<Option<(SystemTime, u64)>> {
        paths
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    };
    let mut last = stamp();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let now = stamp();
            if now == last {
                continue;
            }
            last = now;
            match reload() {
                Ok(()) => info!(what, "reloaded"),
                Err(e) => warn!(what, error = %e, "reload failed; keeping the previous one"),
            }
        }
    });
}

/// A certificate and key from PEM files: the controller's server identity or the proxy's
/// client identity.
#[derive(Debug)]
pub struct ReloadingIdentity {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingIdentity {
    /// Loads the files now (an error here is a startup error) and reloads them on change.
    /// Must be called inside a Tokio runtime.
    pub fn start(cert: &Path, key: &Path) -> Result<Arc<Self>, CredentialError> {
        let this = Arc::new(ReloadingIdentity {
            current: ArcSwap::new(load_identity(cert, key)?),
        });
        let (weak, cert, key) = (Arc::downgrade(&this), cert.to_owned(), key.to_owned());
        watch_files(vec![cert.clone(), key.clone()], "certificate", move || {
            if let Some(this) = weak.upgrade() {
                this.current.store(load_identity(&cert, &key)?);
            }
            Ok(())
        });
        Ok(this)
    }
}

impl ReloadingIdentity {
    /// An identity held in memory rather than read from files; [`ReloadingIdentity::replace`]
    /// rotates it.
    pub fn fixed(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(ReloadingIdentity {
            current: ArcSwap::new(key),
        })
    }

    /// Serves `key` from now on (connections already open keep their session).
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for ReloadingIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for ReloadingIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Trust anchors from a PEM file, as a verifier of the peer's certificate (client certificates
/// on the controller, the controller's certificate on the proxy).
#[derive(Debug)]
pub struct ReloadingRoots {
    client: ArcSwap<Arc<dyn ClientCertVerifier>>,
    server: ArcSwap<Arc<WebPkiServerVerifier>>,
}

fn verifiers(
    path: &Path,
) -> Result<(Arc<dyn ClientCertVerifier>, Arc<WebPkiServerVerifier>), CredentialError> {
    let roots = load_roots(path)?;
    let client = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
        .build()
        .map_err(|e| file_error(path, e))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| file_error(path, e))?;
    Ok((client, server))
}

impl ReloadingRoots {
    /// Loads the CA file now and reloads it on change. Must be called inside a Tokio runtime.
    pub fn start(path: &Path) -> Result<Arc<Self>, CredentialError> {
        let (client, server) = verifiers(path)?;
        let this = Arc::new(ReloadingRoots {
            client: ArcSwap::from_pointee(client),
            server: ArcSwap::from_pointee(server),
        });
        let (weak, path) = (Arc::downgrade(&this), path.to_owned());
        watch_files(vec![path.clone()], "CA bundle", move || {
            if let Some(this) = weak.upgrade() {
                let (client, server) = verifiers(&path)?;
                this.client.store(Arc::new(client));
                this.server.store(Arc::new(server));
            }
            Ok(())
        });
        Ok(this)
    }
}

impl ClientCertVerifier for ReloadingRoots {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from a verifier that may be swapped; they are optional.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.client
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.client
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.client
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.client.load().supported_verify_schemes()
    }
}

impl ServerCertVerifier for ReloadingRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.server.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        ServerCertVerifier::verify_tls12_signature(&***self.server.load(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        ServerCertVerifier::verify_tls13_signature(&***self.server.load(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(&***self.server.load())
    }
}

/// A bearer token from a file (surrounding whitespace ignored), reloaded on change.
#[derive(Debug)]
pub struct ReloadingToken {
    current: ArcSwap<String>,
}

fn load_token(path: &Path) -> Result<String, CredentialError> {
    let text = String::from_utf8(read(path)?).map_err(|e| file_error(path, e))?;
    let token = text.trim().to_owned();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(file_error(
            path,
            "the token must be one line of visible ASCII",
        ));
    }
    Ok(token)
}

impl ReloadingToken {
    /// Loads the token now and reloads it on change. Must be called inside a Tokio runtime.
    pub fn start(path: &Path) -> Result<Arc<Self>, CredentialError> {
        let this = Arc::new(ReloadingToken {
            current: ArcSwap::from_pointee(load_token(path)?),
        });
        let (weak, path) = (Arc::downgrade(&this), path.to_owned());
        watch_files(vec![path.clone()], "token", move || {
            if let Some(this) = weak.upgrade() {
                this.current.store(Arc::new(load_token(&path)?));
            }
            Ok(())
        });
        Ok(this)
    }

    /// The `authorization` header value carrying the token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.current.load())
    }

    /// Whether an `authorization` header value carries the current token: the scheme is
    /// matched without regard to case (RFC 9110 section 11.1), and the comparison takes the
    /// same time wherever the first difference is and whatever the lengths (both sides are
    /// compared as SHA-256 digests).
    pub fn accepts(&self, header: &[u8]) -> bool {
        let Some(space) = header.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, token) = (&header[..space], header[space + 1..].trim_ascii());
        let expected = self.current.load();
        scheme.eq_ignore_ascii_case(b"bearer") && same_secret(token, expected.as_bytes())
    }
}

/// Compares two secrets in time that depends on neither their contents nor their lengths.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use ring::digest::{SHA256, digest};
    let (a, b) = (digest(&SHA256, a), digest(&SHA256, b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The rustls server configuration of the controller's gRPC port: its certificate, and when
/// `client_ca` is given, mandatory client certificates signed by it (mTLS).
pub fn server_config(
    identity: Arc<ReloadingIdentity>,
    client_ca: Option<Arc<ReloadingRoots>>,
) -> Result<rustls::ServerConfig, Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(roots) => builder.with_client_cert_verifier(roots),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The rustls client configuration of a proxy's discovery connection.
pub fn client_config(
    roots: Arc<ReloadingRoots>,
    identity: Option<Arc<ReloadingIdentity>>,
) -> Result<rustls::ClientConfig, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(roots);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bearer_scheme_is_matched_without_case_and_tokens_exactly() {
        let path = std::env::temp_dir().join(format!("rauta-token-{}", std::process::id()));
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let token = ReloadingToken::start(&path).unwrap();
        for good in [
            "Bearer s3cret-token",
            "bearer s3cret-token",
            "BEARER s3cret-token",
        ] {
            assert!(token.accepts(good.as_bytes()), "{good}");
        }
        for bad in [
            "Bearer s3cret-toke",
            "Bearer s3cret-token2",
            "Bearer ",
            "Basic s3cret-token",
            "s3cret-token",
            "",
        ] {
            assert!(!token.accepts(bad.as_bytes()), "{bad}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
