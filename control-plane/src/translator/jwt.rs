//! A SecurityPolicy's `jwt` in its snapshot form: providers with their public keys (a local
//! JWK Set, checked here; a remote one, which each proxy fetches), where tokens are looked for
//! and what their claims must hold. A JWK Set in a ConfigMap or Secret that does not exist
//! gives its provider no key (its tokens are refused; ResolvedRefs says so).

use std::time::Duration;

use rauta_common::api::v1::{
    ClaimToHeader, HeaderToken, JwtAuth, JwtProvider, RemoteJwks, RequiredClaim, TokenSource,
    jwt_provider, token_source,
};
use rauta_common::fields::CONNECTION_FIELDS;
use rauta_common::jwks::KeySet;

use super::references::secret_entries;
use super::security::MissingRef;
use crate::crds::security_policy::{self as crd, LocalJwks};
use crate::objects::{ObjectRef, ObjectSet};

/// How often proxies fetch a remote JWK Set again, unless the policy says.
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(300);
/// Clock skew allowed for `exp` and `nbf`, unless the policy says.
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// The ConfigMap or Secret entry a JWK Set is read from (or else its only entry).
const JWKS_ENTRY: &str = "jwks";

pub fn jwt_auth(
    objects: &ObjectSet,
    key: &ObjectRef,
    jwt: &crd::Jwt,
    missing: &mut Vec<MissingRef>,
) -> Result<JwtAuth, String> {
    if jwt.providers.is_empty() || jwt.providers.len() > 4 {
        return Err("jwt.providers: 1 to 4 providers".into());
    }
    let mut providers = Vec::new();
    for p in &jwt.providers {
        if providers.iter().any(|q: &JwtProvider| q.name == p.name) {
            return Err(format!("jwt.providers: name {:?} used twice", p.name));
        }
        let provider = provider(objects, key, p, missing)
            .map_err(|e| format!("jwt provider {:?}: {e}", p.name))?;
        providers.push(provider);
    }
    Ok(JwtAuth {
        providers,
        optional: jwt.optional.unwrap_or(false),
        name: key.to_string(),
    })
}

fn provider(
    objects: &ObjectSet,
    key: &ObjectRef,
    p: &crd::JwtProvider,
    missing: &mut Vec<MissingRef>,
) -> Result<JwtProvider, String> {
    let keys = match (&p.remote_jwks, &p.local_jwks) {
        (Some(remote), None) => jwt_provider::Keys::RemoteJwks(remote_jwks(remote)?),
        (None, Some(local)) => {
            jwt_provider::Keys::LocalJwks(local_jwks(objects, key, local, missing)?)
        }
        _ => return Err("set exactly one of remoteJWKS and localJWKS".into()),
    };
    let mut sources = Vec::new();
    if let Some(from) = &p.extract_from {
        for h in &from.headers {
            sources.push(token_source::Source::Header(HeaderToken {
                name: header_name(&h.name)?,
                value_prefix: h.value_prefix.clone().unwrap_or_default(),
            }));
        }
        for c in &from.cookies {
            if !is_token(c) {
                return Err(format!("extractFrom.cookies: {c:?} is not a cookie name"));
            }
            sources.push(token_source::Source::Cookie(c.clone()));
        }
        for q in &from.params {
            if q.is_empty() || q.contains(['&', '=', '#', ' ']) {
                return Err(format!("extractFrom.params: {q:?} is not a parameter name"));
            }
            sources.push(token_source::Source::QueryParam(q.clone()));
        }
    }
    let claim_to_headers = p
        .claim_to_headers
        .iter()
        .map(|c| {
            if c.claim.is_empty() {
                return Err("claimToHeaders: empty claim".to_owned());
            }
            Ok(ClaimToHeader {
                claim: c.claim.clone(),
                header: header_name(&c.header)?,
            })
        })
        .collect::<Result<_, _>>()?;
    let clock_skew = match &p.clock_skew {
        Some(d) => duration(d).map_err(|e| format!("clockSkew {d:?}: {e}"))?,
        None => DEFAULT_CLOCK_SKEW,
    };
    Ok(JwtProvider {
        name: p.name.clone(),
        issuer: p.issuer.clone().unwrap_or_default(),
        audiences: p.audiences.clone(),
        keys: Some(keys),
        sources: sources
            .into_iter()
            .map(|s| TokenSource { source: Some(s) })
            .collect(),
        claim_to_headers,
        required_claims: p
            .required_claims
            .iter()
            .map(|r| RequiredClaim {
                name: r.name.clone(),
                values: r.values.clone(),
            })
            .collect(),
        forward_token: p.forward_token.unwrap_or(false),
        clock_skew_seconds: u32::try_from(clock_skew.as_secs()).unwrap_or(u32::MAX),
    })
}

fn remote_jwks(remote: &crd::RemoteJwks) -> Result<RemoteJwks, String> {
    let uri: http::Uri = remote
        .uri
        .parse()
        .map_err(|_| format!("remoteJWKS.uri {:?} is not a URL", remote.uri))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "remoteJWKS.uri {:?} is not an http or https URL",
            remote.uri
        ));
    }
    let refresh = match &remote.cache_duration {
        Some(d) => duration(d).map_err(|e| format!("remoteJWKS.cacheDuration {d:?}: {e}"))?,
        None => DEFAULT_CACHE_DURATION,
    };
    if refresh < Duration::from_secs(1) {
        return Err("remoteJWKS.cacheDuration must be at least 1s".into());
    }
    Ok(RemoteJwks {
        uri: remote.uri.clone(),
        refresh_interval: prost_types::Duration::try_from(refresh).ok(),
    })
}

/// The JWK Set document, cut to its usable public keys (at least one); "" when the object it is in does not
/// exist (recorded in `missing`).
fn local_jwks(
    objects: &ObjectSet,
    key: &ObjectRef,
    local: &LocalJwks,
    missing: &mut Vec<MissingRef>,
) -> Result<String, String> {
    let kind = local.r#type.as_deref().unwrap_or(match local.value_ref {
        Some(_) => "ValueRef",
        None => "Inline",
    });
    let document = match (kind, &local.inline, &local.value_ref) {
        ("Inline", Some(inline), None) => inline.clone(),
        ("ValueRef", None, Some(r)) => {
            let object = ObjectRef::new(&key.namespace, r.name.as_str());
            let entries = match (r.group.as_str(), r.kind.as_str()) {
                ("", "ConfigMap") => objects.config_maps.get(&object).map(|cm| {
                    let data = cm.data.iter().flatten();
                    data.map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect::<Vec<_>>()
                }),
                ("", "Secret") => secret_entries(objects, &object),
                (g, k) => {
                    return Err(format!(
                        "localJWKS.valueRef: kind {k:?} in group {g:?} (ConfigMap or Secret)"
                    ));
                }
            };
            let Some(entries) = entries else {
                missing.push(MissingRef {
                    kind: if r.kind == "Secret" {
                        "Secret"
                    } else {
                        "ConfigMap"
                    },
                    object,
                });
                return Ok(String::new());
            };
            let value = match entries.iter().find(|(k, _)| k == JWKS_ENTRY) {
                Some((_, v)) => v,
                None if entries.len() == 1 => &entries[0].1,
                None => {
                    return Err(format!(
                        "localJWKS.valueRef: {} {object} has no {JWKS_ENTRY:?} entry",
                        r.kind
                    ));
                }
            };
            String::from_utf8(value.clone())
                .map_err(|_| format!("localJWKS.valueRef: {object} is not UTF-8"))?
        }
        _ => {
            return Err(
                "localJWKS: type Inline with inline, or type ValueRef with valueRef".into(),
            );
        }
    };
    // Only the usable public keys travel: a private member or a symmetric key pasted in by
    // mistake reaches no proxy and no dump.
    KeySet::public_document(document.as_bytes()).map_err(|e| format!("localJWKS: {e}"))
}

fn duration(value: &str) -> Result<Duration, String> {
    let d = value
        .parse::<gateway_api::Duration>()
        .map_err(|e| e.to_string())?;
    Ok(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// A header name in lower case, or why not. The fields that frame the request and the Host
/// are the gateway's own: a token is not taken from them nor written into them.
fn header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if !is_token(name) {
        return Err(format!("{name:?} is not a header name"));
    }
    if CONNECTION_FIELDS.contains(&lower.as_str()) || lower == "host" {
        return Err(format!("{name:?} is a header the gateway sets itself"));
    }
    Ok(lower)
}

/// An HTTP field name (RFC 9110 token).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
