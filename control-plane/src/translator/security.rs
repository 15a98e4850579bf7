//! A SecurityPolicy's authentication in its snapshot form: API keys from Secrets, sent to the
//! proxies as SHA-256 digests (the keys themselves never leave the controller); JSON Web
//! Tokens (`jwt`).

use rauta_common::api::v1::{ApiKeyAuth, ApiKeyCredential, RequestPolicies};

use super::authorization::authorization;
use super::backends::ResolvedBackend;
use super::basic_auth::basic_auth;
use super::ext_auth::ext_auth;
use super::jwt::{is_token, jwt_auth};
use super::references::secret_entries;
use crate::crds::security_policy::{self, SecurityPolicySpec};
use crate::objects::{ObjectRef, ObjectSet};

/// Default header an API key is looked for in.
const DEFAULT_KEY_HEADER: &str = "x-api-key";

/// A ConfigMap or Secret a policy names that does not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingRef {
    pub kind: &'static str,
    pub object: ObjectRef,
}

/// What a SecurityPolicy asks of requests, and the Secrets it names that do not exist
/// (their clients get no key: the policy fails closed).
pub struct Resolved {
    pub policies: RequestPolicies,
    pub missing: Vec<MissingRef>,
    /// The clusters it calls (an external authorization service).
    pub clusters: Vec<ResolvedBackend>,
}

pub fn policies(
    objects: &ObjectSet,
    key: &ObjectRef,
    spec: &SecurityPolicySpec,
) -> Result<Resolved, String> {
    let mut missing = Vec::new();
    let api_key_auth = match &spec.api_key_auth {
        None => None,
        Some(auth) => {
            if auth.credential_refs.is_empty()
                || auth.credential_refs.len() > security_policy::MAX_CREDENTIAL_REFS
            {
                return Err(format!(
                    "apiKeyAuth.credentialRefs must name 1 to {} Secrets",
                    security_policy::MAX_CREDENTIAL_REFS
                ));
            }
            let mut credentials = Vec::new();
            for r in &auth.credential_refs {
                let secret = ObjectRef::new(&key.namespace, r.name.as_str());
                let Some(entries) = secret_entries(objects, &secret) else {
                    missing.push(MissingRef {
                        kind: "Secret",
                        object: secret,
                    });
                    continue;
                };
                for (client_id, value) in entries {
                    // `kubectl create secret --from-file` keeps the file's final newline.
                    let value = value.trim_ascii();
                    if value.is_empty() {
                        continue;
                    }
                    // The id travels in a request header: printable ASCII only.
                    if !client_id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                        return Err(format!(
                            "Secret {secret}: client id {client_id:?} cannot be sent in a header"
                        ));
                    }
                    let digest = ring::digest::digest(&ring::digest::SHA256, value);
                    credentials.push(ApiKeyCredential {
                        client_id,
                        key_sha256: digest.as_ref().to_vec(),
                    });
                }
            }
            if credentials.len() > security_policy::MAX_API_KEYS {
                return Err(format!(
                    "apiKeyAuth: more than {} keys",
                    security_policy::MAX_API_KEYS
                ));
            }
            let mut headers = Vec::new();
            let mut query_params = Vec::new();
            for source in &auth.extract_from {
                for h in &source.headers {
                    if !is_token(h) {
                        return Err(format!(
                            "apiKeyAuth.extractFrom: {h:?} is not a header name"
                        ));
                    }
                    headers.push(h.to_ascii_lowercase());
                }
                query_params.extend(source.params.iter().cloned());
            }
            if headers.is_empty() && query_params.is_empty() {
                headers.push(DEFAULT_KEY_HEADER.to_owned());
            }
            let forward_client_id_header = match &auth.forward_client_id_header {
                Some(h) if !is_token(h) => {
                    return Err(format!(
                        "apiKeyAuth.forwardClientIDHeader: {h:?} is not a header name"
                    ));
                }
                Some(h) => h.to_ascii_lowercase(),
                None => String::new(),
            };
            Some(ApiKeyAuth {
                credentials,
                headers,
                query_params,
                forward_client_id_header,
                forward_credentials: auth.forward_credentials.unwrap_or(false),
                name: key.to_string(),
            })
        }
    };
    let jwt_auth = match &spec.jwt {
        Some(jwt) => Some(jwt_auth(objects, key, jwt, &mut missing)?),
        None => None,
    };
    let basic_auth = match &spec.basic_auth {
        Some(basic) => Some(basic_auth(objects, key, basic, &mut missing)?),
        None => None,
    };
    let authorization = match &spec.authorization {
        Some(a) => Some(authorization(key, a)?),
        None => None,
    };
    let mut clusters = Vec::new();
    let ext_auth = match &spec.ext_auth {
        Some(e) => {
            let (ext, cluster) = ext_auth(objects, key, e)?;
            clusters.push(cluster);
            Some(ext)
        }
        None => None,
    };
    Ok(Resolved {
        policies: RequestPolicies {
            api_key_auth,
            jwt_auth,
            basic_auth,
            authorization,
            ext_auth,
            ..Default::default()
        },
        missing,
        clusters,
    })
}

/// What an invalid SecurityPolicy applies: API keys with no valid key, so that its targets
/// refuse every request until it is fixed (fail closed, as Envoy Gateway does).
pub fn refusing_all(key: &ObjectRef) -> RequestPolicies {
    RequestPolicies {
        api_key_auth: Some(ApiKeyAuth {
            headers: vec![DEFAULT_KEY_HEADER.to_owned()],
            name: key.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
