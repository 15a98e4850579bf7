//! Admin output (controller and proxy) never shows private keys or session signing keys.

use crate::api::v1::Resource;
use crate::api::v1::resource::Payload;

/// A copy of a resource without private key material or session keys: admin output is for
/// people and logs.
pub fn redacted(resource: &Resource) -> Resource {
    let mut r = resource.clone();
    match &mut r.payload {
        Some(Payload::Listener(l)) => {
            for c in &mut l.certificates {
                c.private_key_pem = REDACTED.to_owned();
            }
        }
        Some(Payload::RouteTable(t)) => {
            for key in &mut t.session_keys {
                *key = REDACTED.to_owned();
            }
        }
        Some(Payload::Cluster(c)) => {
            if let Some(cert) = c.tls.as_mut().and_then(|t| t.client_certificate.as_mut()) {
                cert.private_key_pem = REDACTED.to_owned();
            }
        }
        _ => {}
    }
    r
}

/// What the admin service shows instead of a private key.
pub const REDACTED: &str = "[redacted]";
