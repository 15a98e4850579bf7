//! A SecurityPolicy's `extAuth` in its snapshot form: the service's cluster (resolved as a
//! route's backendRef is, ReferenceGrants included) and the call's settings. The cluster goes
//! into every Gateway whose tables name it (`PolicyIndex::add_clusters`).

use std::time::Duration;

use rauta_common::api::v1::ExtAuth;

use super::backends::{self, BackendRef, Referrer, ResolvedBackend};
use super::jwt::is_token;
use crate::crds::security_policy as crd;
use crate::objects::{ObjectRef, ObjectSet};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Request headers sent to the service unless the policy says.
const DEFAULT_HEADERS_TO_AUTH: &[&str] = &["authorization", "cookie"];

pub fn ext_auth(
    objects: &ObjectSet,
    key: &ObjectRef,
    e: &crd::ExtAuth,
) -> Result<(ExtAuth, ResolvedBackend), String> {
    let (r, grpc) = match (&e.http, &e.grpc) {
        (Some(http), None) => (&http.backend_ref, false),
        (None, Some(grpc)) => (&grpc.backend_ref, true),
        _ => return Err("extAuth: set exactly one of http and grpc".into()),
    };
    let backend = BackendRef {
        group: r.group.as_deref(),
        kind: r.kind.as_deref(),
        name: &r.name,
        namespace: r.namespace.as_deref(),
        port: Some(r.port),
    };
    let referrer = Referrer {
        kind: "SecurityPolicy",
        grpc,
    };
    let resolved = backends::resolve(objects, &key.namespace, referrer, backend)
        .map_err(|p| format!("extAuth backendRef: {}", p.message))?;
    let headers = |what: &str, names: &[String]| {
        names
            .iter()
            .map(|h| match is_token(h) && !h.eq_ignore_ascii_case("host") {
                true => Ok(h.to_ascii_lowercase()),
                false => Err(format!("{what}: {h:?} is not a header name it may name")),
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let to_auth = match &e.headers_to_ext_auth {
        // For gRPC an empty list is how "all" travels: saying none must not send all.
        Some(names) if grpc && names.is_empty() => {
            return Err(
                "extAuth.headersToExtAuth: an empty list with grpc; leave it out to send every header"
                    .into(),
            );
        }
        Some(names) => headers("extAuth.headersToExtAuth", names)?,
        // A gRPC service gets every header unless told otherwise (as Envoy Gateway sends).
        None if grpc => Vec::new(),
        None => DEFAULT_HEADERS_TO_AUTH
            .iter()
            .map(|h| (*h).to_owned())
            .collect(),
    };
    let http = e.http.clone().unwrap_or_default();
    let to_backend = headers("extAuth.http.headersToBackend", &http.headers_to_backend)?;
    let path_prefix = http.path.clone().unwrap_or_default();
    if !path_prefix.is_empty()
        && (!path_prefix.starts_with('/') || path_prefix.contains(['?', '#']))
    {
        return Err(format!(
            "extAuth.http.path {path_prefix:?} must start with / and hold no query"
        ));
    }
    let timeout = match &e.timeout {
        Some(t) => t
            .parse::<gateway_api::Duration>()
            .map_err(|err| format!("extAuth.timeout {t:?}: {err}"))
            .map(|d| Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err("extAuth.timeout must be > 0 and at most 60s".into());
    }
    let ext = ExtAuth {
        cluster: resolved.cluster.name.clone(),
        path_prefix,
        headers_to_auth: to_auth,
        headers_to_backend: to_backend,
        fail_open: e.fail_open.unwrap_or(false),
        timeout: prost_types::Duration::try_from(timeout).ok(),
        name: key.to_string(),
        grpc,
    };
    Ok((ext, resolved))
}
