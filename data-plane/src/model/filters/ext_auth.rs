//! External authorization (SecurityPolicy `extAuth`): the settings of the call each request
//! waits for (`serve::ext_auth` makes it). The service is a cluster of the snapshot, linked
//! like a mirror's, so the call has the cluster's pools, balancing and health.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use rauta_common::api::v1::ExtAuth;

use crate::model::cluster::ClusterRt;

/// Why an ExtAuth is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ExtAuthError {
    #[error("ext auth: invalid header name {0:?}")]
    Header(Box<str>),
    #[error("ext auth: timeout must be > 0 and at most 60 s")]
    Timeout,
    #[error("ext auth: path_prefix {0:?} must start with / and hold no query")]
    PathPrefix(Box<str>),
}

#[derive(Debug)]
pub struct ExtAuthRt {
    pub cluster_name: Box<str>,
    /// Set by `Filters::link`; `None`: no such cluster (the request fails open or closed).
    pub cluster: Option<Arc<ClusterRt>>,
    pub path_prefix: Box<str>,
    pub headers_to_auth: Box<[HeaderName]>,
    pub headers_to_backend: Box<[HeaderName]>,
    pub fail_open: bool,
    pub timeout: Duration,
    /// The service speaks Envoy's gRPC ext_authz API.
    pub grpc: bool,
    /// The policy, for metrics.
    pub name: Box<str>,
}

impl ExtAuthRt {
    pub fn build(e: &ExtAuth) -> Result<ExtAuthRt, ExtAuthError> {
        let headers = |names: &[String]| {
            names
                .iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| ExtAuthError::Header(h.as_str().into()))
                })
                .collect::<Result<Box<[_]>, _>>()
        };
        let timeout = e
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .filter(|t| !t.is_zero() && *t <= Duration::from_secs(60))
            .ok_or(ExtAuthError::Timeout)?;
        let prefix = e.path_prefix.trim_end_matches('/');
        if !e.path_prefix.is_empty()
            && (!e.path_prefix.starts_with('/') || prefix.contains(['?', '#']))
        {
            return Err(ExtAuthError::PathPrefix(e.path_prefix.as_str().into()));
        }
        Ok(ExtAuthRt {
            cluster_name: e.cluster.as_str().into(),
            cluster: None,
            path_prefix: prefix.into(),
            headers_to_auth: headers(&e.headers_to_auth)?,
            headers_to_backend: headers(&e.headers_to_backend)?,
            fail_open: e.fail_open,
            timeout,
            grpc: e.grpc,
            name: e.name.as_str().into(),
        })
    }
}
