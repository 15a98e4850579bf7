//! The objects upstream's suite creates itself before the tests (README.md, "Objects the suite
//! creates itself"): TLS Secrets and CA ConfigMaps, generated fresh for every run.

use base64::Engine;
use serde_json::{Value, json};

/// A generated certificate authority.
pub struct Authority {
    pub cert: rcgen::Certificate,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn names(sans: &[&str]) -> Vec<rcgen::SanType> {
    sans.iter()
        .filter_map(|s| match s.strip_prefix("spiffe://") {
            Some(_) => rcgen::string::Ia5String::try_from(s.to_string())
                .ok()
                .map(rcgen::SanType::URI),
            None => rcgen::string::Ia5String::try_from(s.to_string())
                .ok()
                .map(rcgen::SanType::DnsName),
        })
        .collect()
}

/// A self-signed server certificate and its key, PEM.
pub fn self_signed(sans: &[&str]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = names(sans);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        sans.first().copied().unwrap_or("rauta-conformance"),
    );
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub fn authority(name: &str) -> Result<Authority, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let issuer = rcgen::Issuer::new(params, key);
    Ok(Authority { cert, issuer })
}

/// A certificate signed by `ca` (server or client), and its key, PEM.
pub fn signed(ca: &Authority, sans: &[&str], client: bool) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = names(sans);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        sans.first().copied().unwrap_or("client"),
    );
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub fn tls_secret(namespace: &str, name: &str, (cert, key): &(String, String)) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"tls.crt": b64(cert), "tls.key": b64(key)},
    })
}

pub fn ca_config_map(namespace: &str, name: &str, ca: &Authority) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"ca.crt": ca.cert.pem()},
    })
}

/// Every object the suite generates, as manifests.
pub fn generated_objects() -> Result<Vec<Value>, String> {
    const INFRA: &str = "gateway-conformance-infra";
    let mut out = vec![
        tls_secret(
            "gateway-conformance-web-backend",
            "certificate",
            &self_signed(&["*"])?,
        ),
        tls_secret(
            INFRA,
            "tls-validity-checks-certificate",
            &self_signed(&["*", "*.org", "*.wildcard.org"])?,
        ),
    ];
    out.push(ca_config_map(
        "gateway-conformance-web-backend",
        "web-backend-cm",
        &authority("web-backend-ca")?,
    ));
    let a = authority("tls-validity-checks-ca")?;
    out.push(ca_config_map(
        INFRA,
        "tls-validity-checks-ca-certificate",
        &a,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-validity-checks-client-certificate",
        &signed(&a, &["client-a"], true)?,
    ));
    let b = authority("tls-validity-checks-per-port-ca")?;
    out.push(ca_config_map(
        INFRA,
        "tls-validity-checks-per-port-ca-certificate",
        &b,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-validity-checks-per-port-client-certificate",
        &signed(&b, &["client-b"], true)?,
    ));
    let c = authority("tls-checks-ca")?;
    out.push(ca_config_map(INFRA, "tls-checks-ca-certificate", &c));
    let server_sans = [
        "abc.example.com",
        "spiffe://abc.example.com/test-identity",
        "other.example.com",
    ];
    out.push(tls_secret(
        INFRA,
        "tls-checks-certificate",
        &signed(&c, &server_sans, false)?,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-checks-client-certificate",
        &signed(&c, &["client-c"], true)?,
    ));
    let passthrough = signed(&c, &["abc.example.com"], false)?;
    out.push(tls_secret(
        INFRA,
        "tls-passthrough-checks-certificate",
        &passthrough,
    ));
    out.push(tls_secret(
        "gateway-conformance-app-backend",
        "tls-passthrough-checks-certificate",
        &passthrough,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-terminate-checks-certificate",
        &signed(&c, &["tls.example.com"], false)?,
    ));
    out.push(ca_config_map(
        INFRA,
        "mismatch-ca-certificate",
        &authority("mismatch-ca")?,
    ));
    Ok(out)
}
