//! TLS for the discovery channel without anyone handing out certificates (Kubernetes mode):
//! the controller keeps a CA in a Secret of its own namespace (created by whichever replica
//! comes first; the others read what won), issues its own serving certificate from it, and
//! publishes the CA certificate in a ConfigMap that proxies mount as `--controller-ca`, so
//! they trust that CA and nothing else. The same Secret holds the session key.
//!
//! The serving certificate lives 90 days and is issued anew every 30. The CA lives ten years;
//! to replace it, delete the Secret and restart the controllers (docs/operations.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use rauta_common::credentials::{self, CredentialError, ReloadingIdentity};
use tracing::{info, warn};

use crate::session_keys;

/// Keys of the Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const SESSION_KEY_KEY: &str = "session.key";

/// How long an issued serving certificate is valid, and how often a new one is issued.
const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
const REISSUE_EVERY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Attempts at converging on the Secret and ConfigMap when other replicas write them too.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ManagedTlsError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    Credential(#[from] CredentialError),
    #[error(
        "Secret {namespace}/{name} exists but holds no usable CA ({problem}); delete it to have a new one made"
    )]
    BadSecret {
        namespace: String,
        name: String,
        problem: String,
    },
    #[error("{what} {namespace}/{name} kept changing under us; giving up")]
    NoConvergence {
        what: &'static str,
        namespace: String,
        name: String,
    },
    #[error("session key: {0}")]
    SessionKey(#[from] session_keys::SessionKeyError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Where the controller keeps its CA, and the names its certificate must carry.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    /// Secret holding ca.crt, ca.key and session.key.
    pub secret: String,
    /// ConfigMap the CA certificate is published in (key ca.crt).
    pub config_map: String,
    /// DNS names of the serving certificate (the controller Service's names).
    pub server_names: Vec<String>,
}

/// What the Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub session_key: Vec<u8>,
}

fn offset(from_now: Duration, back: bool) -> time::OffsetDateTime {
    let d = time::Duration::try_from(from_now).unwrap_or(time::Duration::ZERO);
    let now = time::OffsetDateTime::now_utc();
    if back { now - d } else { now + d }
}

/// A new CA and session key.
pub fn new_material() -> Result<Material, ManagedTlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rauta-controller CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = offset(Duration::from_secs(3600), true);
    params.not_after = offset(CA_VALIDITY, false);
    let cert = params.self_signed(&key)?;
    Ok(Material {
        ca_cert_pem: cert.pem(),
        ca_key_pem: key.serialize_pem(),
        session_key: new_session_key()?,
    })
}

fn new_session_key() -> Result<Vec<u8>, ManagedTlsError> {
    let bytes = session_keys::random_key()?;
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes())
}

/// A serving certificate for `names`, signed by the CA, as (chain PEM, key PEM).
pub fn issue(material: &Material, names: &[String]) -> Result<(String, String), ManagedTlsError> {
    let ca_key = rcgen::KeyPair::from_pem(&material.ca_key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&material.ca_cert_pem, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("rauta-controller", String::as_str),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = offset(Duration::from_secs(3600), true);
    params.not_after = offset(SERVING_VALIDITY, false);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

/// The material of a Secret, or what is wrong with it. A Secret without a session key is
/// usable: one is added.
fn material_of(secret: &Secret) -> Result<(Material, bool), String> {
    let data = secret.data.clone().unwrap_or_default();
    let cert = text(&data, CA_CERT_KEY).ok_or(format!("no {CA_CERT_KEY}"))?;
    let key = text(&data, CA_KEY_KEY).ok_or(format!("no {CA_KEY_KEY}"))?;
    let ca_key = rcgen::KeyPair::from_pem(&key).map_err(|e| format!("{CA_KEY_KEY}: {e}"))?;
    rcgen::Issuer::from_ca_cert_pem(&cert, ca_key).map_err(|e| format!("{CA_CERT_KEY}: {e}"))?;
    let session = data
        .get(SESSION_KEY_KEY)
        .map(|v| v.0.trim_ascii().to_vec())
        .filter(|k| k.len() >= session_keys::MIN_MASTER_KEY);
    let complete = session.is_some();
    Ok((
        Material {
            ca_cert_pem: cert,
            ca_key_pem: key,
            session_key: session.unwrap_or_default(),
        },
        complete,
    ))
}

fn secret_of(settings: &Settings, material: &Material) -> Secret {
    let bytes = |s: &[u8]| ByteString(s.to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "rauta-controller".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                CA_CERT_KEY.to_owned(),
                bytes(material.ca_cert_pem.as_bytes()),
            ),
            (CA_KEY_KEY.to_owned(), bytes(material.ca_key_pem.as_bytes())),
            (SESSION_KEY_KEY.to_owned(), bytes(&material.session_key)),
        ])),
        ..Secret::default()
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The CA and session key in the Secret, which is created if absent (the first replica's
/// wins) and completed with a session key if it has none.
pub async fn secret_material(
    client: &kube::Client,
    settings: &Settings,
) -> Result<Material, ManagedTlsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    for _ in 0..ATTEMPTS {
        match api.get_opt(&settings.secret).await? {
            None => {
                let material = new_material()?;
                match api
                    .create(&PostParams::default(), &secret_of(settings, &material))
                    .await
                {
                    Ok(_) => {
                        info!(namespace = %settings.namespace, secret = %settings.secret, "created a CA for the discovery channel");
                        return Ok(material);
                    }
                    // Another replica made one first: read it.
                    Err(e) if conflict(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(mut secret) => {
                let (mut material, complete) =
                    material_of(&secret).map_err(|problem| ManagedTlsError::BadSecret {
                        namespace: settings.namespace.clone(),
                        name: settings.secret.clone(),
                        problem,
                    })?;
                if complete {
                    return Ok(material);
                }
                material.session_key = new_session_key()?;
                secret.data.get_or_insert_with(BTreeMap::new).insert(
                    SESSION_KEY_KEY.to_owned(),
                    ByteString(material.session_key.clone()),
                );
                // The resource version read makes this a compare-and-swap.
                match api
                    .replace(&settings.secret, &PostParams::default(), &secret)
                    .await
                {
                    Ok(_) => return Ok(material),
                    Err(e) if conflict(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(ManagedTlsError::NoConvergence {
        what: "Secret",
        namespace: settings.namespace.clone(),
        name: settings.secret.clone(),
    })
}

/// Makes the ConfigMap hold `ca_pem` under ca.crt (other keys are left alone).
pub async fn publish_ca(
    client: &kube::Client,
    settings: &Settings,
    ca_pem: &str,
) -> Result<(), ManagedTlsError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &settings.namespace);
    for _ in 0..ATTEMPTS {
        let result = match api.get_opt(&settings.config_map).await? {
            Some(cm)
                if cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(CA_CERT_KEY))
                    .is_some_and(|v| v == ca_pem) =>
            {
                return Ok(());
            }
            Some(mut cm) => {
                cm.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(CA_CERT_KEY.to_owned(), ca_pem.to_owned());
                api.replace(&settings.config_map, &PostParams::default(), &cm)
                    .await
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(settings.config_map.clone()),
                        namespace: Some(settings.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "rauta-controller".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(
                        CA_CERT_KEY.to_owned(),
                        ca_pem.to_owned(),
                    )])),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &cm).await
            }
        };
        match result {
            Ok(_) => {
                info!(namespace = %settings.namespace, config_map = %settings.config_map, "published the discovery channel's CA certificate");
                return Ok(());
            }
            Err(e) if conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ManagedTlsError::NoConvergence {
        what: "ConfigMap",
        namespace: settings.namespace.clone(),
        name: settings.config_map.clone(),
    })
}

/// The controller's own TLS: the CA and session key from the Secret, the CA published, a
/// serving certificate issued. The returned task issues a new certificate every 30 days.
pub async fn start(
    client: &kube::Client,
    settings: &Settings,
) -> Result<
    (
        Arc<rustls::ServerConfig>,
        Material,
        impl Future<Output = ()> + use<>,
    ),
    ManagedTlsError,
> {
    let material = secret_material(client, settings).await?;
    publish_ca(client, settings, &material.ca_cert_pem).await?;
    let (cert, key) = issue(&material, &settings.server_names)?;
    let identity = ReloadingIdentity::fixed(credentials::identity_from_pem(
        "issued certificate",
        &cert,
        &key,
    )?);
    info!(names = ?settings.server_names, "serving TLS with a certificate from the controller's CA");
    let config = Arc::new(credentials::server_config(Arc::clone(&identity), None)?);
    let (again, names) = (material.clone(), settings.server_names.clone());
    let reissue = async move {
        loop {
            tokio::time::sleep(REISSUE_EVERY).await;
            let issued = issue(&again, &names).and_then(|(cert, key)| {
                Ok(credentials::identity_from_pem(
                    "issued certificate",
                    &cert,
                    &key,
                )?)
            });
            match issued {
                Ok(key) => {
                    identity.replace(key);
                    info!("issued a new serving certificate");
                }
                Err(e) => {
                    warn!(error = %e, "cannot issue a new serving certificate; keeping the current one")
                }
            }
        }
    };
    Ok((config, material, reissue))
}

/// Follows the session key in the Secret (checked every minute), for rotation by editing it.
pub async fn follow_session_key(
    client: kube::Client,
    settings: Settings,
    cache: Arc<crate::cache::SnapshotCache>,
    keys: session_keys::MasterKeys,
) {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    session_keys::follow(
        cache,
        keys,
        Duration::from_secs(60),
        "controller Secret",
        move || {
            let (api, name) = (api.clone(), settings.secret.clone());
            async move {
                match api.get_opt(&name).await {
                    Ok(Some(secret)) => secret
                        .data
                        .and_then(|d| d.get(SESSION_KEY_KEY).map(|v| v.0.trim_ascii().to_vec()))
                        .filter(|k| k.len() >= session_keys::MIN_MASTER_KEY),
                    Ok(None) => None,
                    Err(e) => {
                        warn!(error = %e, "cannot read the session key from the controller's Secret");
                        None
                    }
                }
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_chains_to_the_ca_for_its_names() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
        let material = new_material().unwrap();
        assert_eq!(material.session_key.len(), 64);
        let names = vec!["rauta-controller.rauta-system.svc".to_owned()];
        let (cert, key) = issue(&material, &names).unwrap();
        credentials::identity_from_pem("test", &cert, &key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(material.ca_cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            credentials::provider(),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let verify = |name: &str| {
            verifier.verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        assert!(verify("rauta-controller.rauta-system.svc").is_ok());
        assert!(verify("elsewhere.example").is_err());
        // Another CA's material signs certificates that do not chain.
        let (other, _) = issue(&new_material().unwrap(), &names).unwrap();
        let other = CertificateDer::from_pem_slice(other.as_bytes()).unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &other,
                    &[],
                    &ServerName::try_from(names[0].clone()).unwrap(),
                    &[],
                    UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn a_secret_without_a_usable_ca_is_refused_and_one_without_a_session_key_completed() {
        let settings = Settings {
            namespace: "rauta-system".into(),
            secret: "s".into(),
            config_map: "c".into(),
            server_names: vec![],
        };
        let material = new_material().unwrap();
        let mut secret = secret_of(&settings, &material);
        assert_eq!(material_of(&secret), Ok((material.clone(), true)));
        secret.data.as_mut().unwrap().remove(SESSION_KEY_KEY);
        assert!(matches!(material_of(&secret), Ok((_, false))));
        secret
            .data
            .as_mut()
            .unwrap()
            .insert(CA_KEY_KEY.into(), ByteString(b"not a key".to_vec()));
        assert!(material_of(&secret).unwrap_err().contains(CA_KEY_KEY));
        secret.data = None;
        assert!(material_of(&secret).is_err());
    }
}
