//! Admin output (controller and proxy) never shows private keys, session signing keys, API
//! key digests or password hashes.

use crate::api::v1::resource::Payload;
use crate::api::v1::{RequestPolicies, Resource};

/// A copy of a resource without private key material or session keys: admin output is for
/// people and logs.
pub fn redacted(resource: &Resource) -> Resource {
    let mut r = resource.clone();
    let mut digests = false;
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
            for l in &mut t.listener_policies {
                digests |= redact_policies(l.policies.as_mut());
            }
            for rule in t.virtual_hosts.iter_mut().flat_map(|v| &mut v.rules) {
                digests |= redact_policies(rule.policies.as_deref_mut());
            }
        }
        Some(Payload::RouteRules(r)) => {
            for ranked in &mut r.rules {
                let rule = ranked.rule.as_deref_mut();
                digests |= redact_policies(rule.and_then(|r| r.policies.as_deref_mut()));
            }
        }
        Some(Payload::Cluster(c)) => {
            if let Some(cert) = c.tls.as_mut().and_then(|t| t.client_certificate.as_mut()) {
                cert.private_key_pem = REDACTED.to_owned();
            }
        }
        _ => {}
    }
    // The version is a hash of the resource as sent: with the digests taken out, it would
    // let a guessed key be checked against it.
    if digests {
        r.version = REDACTED.to_owned();
    }
    r
}

/// API key digests and password hashes: a digest of a short key or password can be searched
/// for. Whether there were any.
fn redact_policies(policies: Option<&mut RequestPolicies>) -> bool {
    let Some(policies) = policies else {
        return false;
    };
    let mut any = false;
    for c in policies
        .api_key_auth
        .iter_mut()
        .flat_map(|a| &mut a.credentials)
    {
        c.key_sha256 = REDACTED.as_bytes().to_vec();
        any = true;
    }
    for u in policies.basic_auth.iter_mut().flat_map(|b| &mut b.users) {
        u.password_hash = REDACTED.to_owned();
        any = true;
    }
    any
}

/// What the admin service shows instead of a private key.
pub const REDACTED: &str = "[redacted]";
