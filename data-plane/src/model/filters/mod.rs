//! A rule's features as a list of runtime filters, each validated when the snapshot is built
//! so that applying it per request cannot fail (as linkerd2-proxy's filters: an enum in a list,
//! one file each).
//!
//! Which filters the fast paths implement is decided here, once per rule, by an exhaustive
//! `match`: a new filter does not compile until it says whether the fast paths handle it, so
//! a rule can never reach a fast path that would silently skip one of its filters.

pub mod access_log;
pub mod api_key;
pub mod authorization;
pub mod basic_auth;
pub mod cache;
pub mod compression;
pub mod cors;
pub mod ext_auth;
mod fields;
pub mod global_rate_limit;
pub mod header_ops;
pub mod jwt;
pub mod mirror;
pub mod rate_limit;
pub mod request_limits;
pub mod retry;
pub mod rewrite;
pub mod session;

use std::sync::Arc;

use rauta_common::api::v1::{RequestPolicies, RouteRule, WeightedCluster};
use rauta_common::fields::CONNECTION_FIELDS;

use crate::observe::log_format::LogFormat;

use super::cluster::ClusterRt;
use super::clusters::Clusters;
use super::global_limit::GlobalLimiter;
use super::kept::RuleStores;
use super::rate_limit::{Limiter, RateLimitError};
use super::response_store::{CacheConfig, CacheError, ResponseStore};
use cache::CacheRt;
use compression::CompressionRt;
use cors::CorsError;
use header_ops::HeaderOpsError;
use request_limits::RequestLimitsRt;
use retry::RetryError;
use rewrite::RewriteError;
use session::{SessionError, SessionKeys};

/// Why a filter is invalid (the text is the filter's own).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    HeaderOps(#[from] HeaderOpsError),
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    #[error(transparent)]
    Cors(#[from] CorsError),
    #[error(transparent)]
    Retry(#[from] RetryError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error(transparent)]
    ApiKey(#[from] ApiKeyError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error(transparent)]
    BasicAuth(#[from] BasicAuthError),
    #[error(transparent)]
    Authorization(#[from] AuthorizationError),
    #[error(transparent)]
    ExtAuth(#[from] ExtAuthError),
    #[error("compression: {0}")]
    Compression(String),
    #[error("request limits: {0}")]
    RequestLimits(String),
    #[error("access log: {0}")]
    AccessLog(String),
}

pub use api_key::ApiKeyAuthRt;
use api_key::ApiKeyError;
use authorization::AuthorizationError;
pub use authorization::AuthorizationRt;
use basic_auth::BasicAuthError;
pub use basic_auth::BasicAuthRt;
pub use cors::CorsRt;
use ext_auth::ExtAuthError;
pub use ext_auth::ExtAuthRt;
pub use fields::remove_field;
pub use global_rate_limit::GlobalRateLimitRt;
pub use header_ops::HeaderOps;
pub use jwt::JwtAuthRt;
use jwt::{JwtError, JwtVerifier};
pub use mirror::MirrorRt;
pub use rate_limit::RateLimitRt;
pub use retry::RetryRt;
pub use rewrite::Rewrite;
pub use session::SessionRt;

/// Request fields the gateway itself sets or reads, besides the connection fields: header
/// modifiers that touch any of them are left to the general path, where the order of those
/// steps is defined.
const GATEWAY_REQUEST_FIELDS: &[&str] = &[
    "host",
    "expect",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "traceparent",
];

/// A part of the routing state a built rule holds on to (see [`Filters::shared_parts`]).
pub enum SharedPart<'a> {
    /// A cluster, by name, as linked (`None`: the snapshot had no such cluster).
    Cluster(&'a str, Option<&'a Arc<ClusterRt>>),
    /// A response store.
    Cache(&'a Arc<ResponseStore>),
    /// A rate limiter, by its name in the kept stores.
    Limiter(&'a str, &'a Arc<Limiter>),
    /// A global rate limit's local state, the same way.
    GlobalLimiter(&'a str, &'a Arc<GlobalLimiter>),
    /// A JWT policy's verifier, by policy.
    Jwt(&'a str, &'a Arc<JwtVerifier>),
    /// A basic auth policy's users and remembered passwords, by policy.
    BasicAuth(&'a str, &'a Arc<BasicAuthRt>),
}

/// What a rule takes from where it is placed: its listener's policies, under its own, and
/// the route it belongs to (limits counted per route are counted per this name).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inherited<'a> {
    pub policies: Option<&'a RequestPolicies>,
    pub route: &'a str,
}

/// One filter of a rule (or of one of its backends).
#[derive(Debug)]
pub enum FilterRt {
    /// RequestHeaderModifier.
    RequestHeaders(HeaderOps),
    /// ResponseHeaderModifier.
    ResponseHeaders(HeaderOps),
    /// URLRewrite.
    UrlRewrite(Rewrite),
    /// RequestMirror, one per mirrored cluster.
    Mirror(MirrorRt),
    /// CORS.
    Cors(CorsRt),
    /// The rule's retry policy.
    Retry(RetryRt),
    /// The rule's sessionPersistence.
    Session(SessionRt),
    /// A ResponseCache: backend answers kept and served while fresh.
    Cache(CacheRt),
    /// Local rate limits (RateLimitPolicy).
    RateLimit(RateLimitRt),
    /// Global rate limits (RateLimitPolicy), counted in Redis.
    GlobalRateLimit(GlobalRateLimitRt),
    /// API keys (SecurityPolicy).
    ApiKeyAuth(ApiKeyAuthRt),
    /// JSON Web Tokens (SecurityPolicy).
    JwtAuth(JwtAuthRt),
    /// HTTP Basic users (SecurityPolicy), shared by every rule under the policy.
    BasicAuth(Arc<BasicAuthRt>),
    /// Allow and deny rules (SecurityPolicy).
    Authorization(AuthorizationRt),
    /// A call to an authorization service (SecurityPolicy).
    ExtAuth(ExtAuthRt),
    /// Response compression (TrafficPolicy).
    Compression(CompressionRt),
    /// Body and head limits, and default timeouts (TrafficPolicy).
    RequestLimits(RequestLimitsRt),
    /// The access log line's own format (TrafficPolicy).
    AccessLog(Arc<LogFormat>),
}

impl FilterRt {
    /// Whether the fast paths (which write the upstream request head straight from the
    /// client's fields, and relay the response head the same way) implement this filter.
    fn on_fast_path(&self) -> bool {
        match self {
            FilterRt::RequestHeaders(ops) => {
                !ops.touches(CONNECTION_FIELDS) && !ops.touches(GATEWAY_REQUEST_FIELDS)
            }
            FilterRt::ResponseHeaders(ops) => !ops.touches(CONNECTION_FIELDS),
            // Counted once the fast path commits to the request, refused with its own 429.
            FilterRt::RateLimit(_) => true,
            // Timeouts reach the fast paths through the rule; they check no per-route size.
            FilterRt::RequestLimits(l) => l.only_timeouts(),
            // The fast paths relay response bodies as they come.
            FilterRt::Compression(_) => false,
            // The fast paths log the fields they have; request headers they do not keep.
            FilterRt::AccessLog(format) => format.headers().next().is_none(),
            FilterRt::UrlRewrite(_)
            | FilterRt::Mirror(_)
            | FilterRt::Cors(_)
            | FilterRt::Retry(_)
            | FilterRt::Session(_)
            | FilterRt::Cache(_)
            // May wait for Redis: the fast paths do not wait.
            | FilterRt::GlobalRateLimit(_)
            // Remove the credentials and set the client's headers before forwarding.
            | FilterRt::ApiKeyAuth(_)
            | FilterRt::JwtAuth(_)
            | FilterRt::BasicAuth(_)
            // Reads the request's client, claims, method and path.
            | FilterRt::Authorization(_)
            // Waits for the authorization service.
            | FilterRt::ExtAuth(_) => false,
        }
    }

    /// Whether an answer the kernel sends (rendered by user space once, sent for every
    /// request of the key) can do what this filter does. Those that depend on the request's
    /// other fields or must act per request cannot.
    fn on_kernel_path(&self) -> bool {
        match self {
            // Rendered into the answer, or applied to the request that filled the cache.
            FilterRt::RequestHeaders(_)
            | FilterRt::ResponseHeaders(_)
            | FilterRt::UrlRewrite(_)
            | FilterRt::Retry(_)
            | FilterRt::Cache(_) => true,
            // A copy per request; an answer per Origin; a token per client; a count per
            // request.
            FilterRt::Mirror(_)
            | FilterRt::Cors(_)
            | FilterRt::Session(_)
            | FilterRt::RateLimit(_)
            | FilterRt::GlobalRateLimit(_)
            | FilterRt::ApiKeyAuth(_)
            | FilterRt::JwtAuth(_)
            | FilterRt::BasicAuth(_)
            // Reads the request's client, claims, method and path.
            | FilterRt::Authorization(_)
            // Waits for the authorization service.
            | FilterRt::ExtAuth(_)
            // A coding per client's Accept-Encoding; a size check per request; a log line.
            | FilterRt::Compression(_)
            | FilterRt::RequestLimits(_)
            | FilterRt::AccessLog(_) => false,
        }
    }
}

/// The filters of a rule or a backend, in the order the snapshot lists them.
#[derive(Debug)]
pub struct Filters {
    list: Box<[FilterRt]>,
    /// Every filter is one the fast paths implement.
    fast_path: bool,
    /// Every filter is one a kernel answer can do.
    kernel: bool,
}

impl Default for Filters {
    /// No filters, which the fast paths serve.
    fn default() -> Self {
        Filters::new(Vec::new())
    }
}

/// A rule's own policies over its listener's.
struct Layers<'p>(Option<&'p RequestPolicies>, Option<&'p RequestPolicies>);

impl<'p> Layers<'p> {
    /// A concern the rule's own policies set, else its listener's.
    fn concern<T>(&self, field: impl Fn(&'p RequestPolicies) -> Option<&'p T>) -> Option<&'p T> {
        self.0.and_then(&field).or_else(|| self.1.and_then(&field))
    }
}

/// The first filter of a kind.
macro_rules! first {
    ($list:expr, $kind:ident) => {
        $list.iter().find_map(|f| match f {
            FilterRt::$kind(inner) => Some(inner),
            _ => None,
        })
    };
}

impl Filters {
    /// A rule's filters, from the fields of its snapshot form. Mirrors name their clusters;
    /// [`Filters::link`] finds them once the snapshot's clusters exist.
    pub fn of_rule(
        rule: &RouteRule,
        session_keys: &SessionKeys,
        stores: &mut RuleStores,
        inherited: Inherited<'_>,
    ) -> Result<Filters, FilterError> {
        let mut list = Vec::new();
        // Refusals first: a request refused costs nothing more.
        let own = rule.policies.as_deref();
        let layers = Layers(own, inherited.policies);
        let api_keys = layers.concern(|p| p.api_key_auth.as_ref());
        if let Some(auth) = api_keys {
            list.push(FilterRt::ApiKeyAuth(ApiKeyAuthRt::build(auth)?));
        }
        let basic = layers.concern(|p| p.basic_auth.as_ref());
        if let Some(auth) = basic {
            let users = stores
                .basic_auth
                .try_store_for(&auth.name, auth.clone(), |c| BasicAuthRt::build(&c))?;
            list.push(FilterRt::BasicAuth(users));
        }
        let jwt = layers.concern(|p| p.jwt_auth.as_ref());
        if let Some(auth) = jwt {
            let verifier =
                stores
                    .jwt
                    .try_store_for(&auth.name, auth.clone(), JwtVerifier::build)?;
            list.push(FilterRt::JwtAuth(JwtAuthRt { verifier }));
        }
        let authorization = layers.concern(|p| p.authorization.as_ref());
        if let Some(a) = authorization {
            list.push(FilterRt::Authorization(AuthorizationRt::build(a)?));
        }
        let ext_auth = layers.concern(|p| p.ext_auth.as_ref());
        if let Some(e) = ext_auth {
            list.push(FilterRt::ExtAuth(ExtAuthRt::build(e)?));
        }
        let limits = layers.concern(|p| p.local_rate_limits.as_ref());
        if let Some(limits) = limits {
            let rt = RateLimitRt::build(limits, inherited.route, &mut stores.limiters)?;
            list.push(FilterRt::RateLimit(rt));
        }
        let global = layers.concern(|p| p.global_rate_limits.as_ref());
        if let Some(limits) = global {
            let rt =
                GlobalRateLimitRt::build(limits, inherited.route, &mut stores.global_limiters)?;
            list.push(FilterRt::GlobalRateLimit(rt));
        }
        // Each limit on its own: the rule's, else its listener's.
        let limits = match (
            own.and_then(|p| p.request_limits.as_ref()),
            inherited.policies.and_then(|p| p.request_limits.as_ref()),
        ) {
            (Some(rule), Some(listener)) => {
                let mut merged = *rule;
                merged.fill_from(listener);
                Some(merged)
            }
            (rule, listener) => rule.or(listener).copied(),
        };
        if let Some(l) = &limits {
            list.push(FilterRt::RequestLimits(RequestLimitsRt::build(l)?));
        }
        if let Some(c) = layers.concern(|p| p.compression.as_ref()) {
            list.push(FilterRt::Compression(CompressionRt::build(c)?));
        }
        if let Some(f) = layers.concern(|p| p.access_log.as_ref()) {
            list.push(FilterRt::AccessLog(access_log::build(f)?));
        }
        if let Some(m) = &rule.request_headers {
            list.push(FilterRt::RequestHeaders(HeaderOps::build(m)?));
        }
        if let Some(m) = &rule.response_headers {
            list.push(FilterRt::ResponseHeaders(HeaderOps::build(m)?));
        }
        if let Some(r) = &rule.url_rewrite {
            list.push(FilterRt::UrlRewrite(Rewrite::build(r)?));
        }
        for m in &rule.mirrors {
            list.push(FilterRt::Mirror(MirrorRt {
                cluster_name: m.cluster.as_str().into(),
                cluster: None,
                numerator: m.numerator,
                denominator: m.denominator,
            }));
        }
        if let Some(c) = &rule.cors {
            list.push(FilterRt::Cors(CorsRt::build(c)?));
        }
        if let Some(r) = &rule.retry {
            list.push(FilterRt::Retry(RetryRt::build(r)?));
        }
        if let Some(p) = &rule.session_persistence {
            list.push(FilterRt::Session(SessionRt::build(p, session_keys)?));
        }
        if let Some(c) = &rule.cache {
            let config = CacheConfig::try_from(&**c)?;
            let store = stores.caches.store_for(&rule.name, config);
            list.push(FilterRt::Cache(CacheRt { store }));
        }
        Ok(Filters::new(list))
    }

    /// A backend's filters (backendRef filters: header modifiers only).
    pub fn of_backend(backend: &WeightedCluster) -> Result<Filters, FilterError> {
        let mut list = Vec::new();
        if let Some(m) = &backend.request_headers {
            list.push(FilterRt::RequestHeaders(HeaderOps::build(m)?));
        }
        if let Some(m) = &backend.response_headers {
            list.push(FilterRt::ResponseHeaders(HeaderOps::build(m)?));
        }
        Ok(Filters::new(list))
    }

    /// Points the filters that name clusters (mirrors) at the snapshot's clusters.
    pub fn link(&mut self, clusters: &Clusters) {
        for filter in self.list.iter_mut() {
            match filter {
                FilterRt::Mirror(m) => m.cluster = clusters.get(&m.cluster_name),
                FilterRt::ExtAuth(e) => e.cluster = clusters.get(&e.cluster_name),
                FilterRt::RequestHeaders(_)
                | FilterRt::ResponseHeaders(_)
                | FilterRt::UrlRewrite(_)
                | FilterRt::Cors(_)
                | FilterRt::Retry(_)
                | FilterRt::Session(_)
                | FilterRt::Cache(_)
                | FilterRt::RateLimit(_)
                | FilterRt::GlobalRateLimit(_)
                | FilterRt::ApiKeyAuth(_)
                | FilterRt::JwtAuth(_)
                | FilterRt::BasicAuth(_)
                | FilterRt::Authorization(_)
                | FilterRt::Compression(_)
                | FilterRt::RequestLimits(_)
                | FilterRt::AccessLog(_) => {}
            }
        }
    }

    /// What the filters hold of the routing state around them: the clusters they are linked
    /// to (mirrors) and the response stores they share. A rule is reused in the next state
    /// only if these are still the same there.
    pub fn shared_parts<'a>(&'a self, f: &mut impl FnMut(SharedPart<'a>)) {
        for filter in self.list.iter() {
            match filter {
                FilterRt::Mirror(m) => f(SharedPart::Cluster(&m.cluster_name, m.cluster.as_ref())),
                FilterRt::ExtAuth(e) => f(SharedPart::Cluster(&e.cluster_name, e.cluster.as_ref())),
                FilterRt::Cache(c) => f(SharedPart::Cache(&c.store)),
                FilterRt::RateLimit(r) => {
                    for l in r.limiters.iter() {
                        f(SharedPart::Limiter(l.kept_name(), l));
                    }
                }
                FilterRt::GlobalRateLimit(r) => {
                    for l in r.limiters.iter() {
                        f(SharedPart::GlobalLimiter(l.kept_name(), l));
                    }
                }
                FilterRt::JwtAuth(j) => f(SharedPart::Jwt(&j.verifier.name, &j.verifier)),
                FilterRt::BasicAuth(b) => f(SharedPart::BasicAuth(&b.name, b)),
                FilterRt::RequestHeaders(_)
                | FilterRt::ResponseHeaders(_)
                | FilterRt::UrlRewrite(_)
                | FilterRt::Cors(_)
                | FilterRt::Retry(_)
                | FilterRt::Session(_)
                | FilterRt::ApiKeyAuth(_)
                | FilterRt::Authorization(_)
                | FilterRt::Compression(_)
                | FilterRt::RequestLimits(_)
                | FilterRt::AccessLog(_) => {}
            }
        }
    }

    pub fn new(list: Vec<FilterRt>) -> Filters {
        let fast_path = list.iter().all(FilterRt::on_fast_path);
        let kernel = list.iter().all(FilterRt::on_kernel_path);
        Filters {
            list: list.into_boxed_slice(),
            fast_path,
            kernel,
        }
    }

    /// Whether the fast paths may serve requests with these filters.
    #[inline]
    pub fn fast_path(&self) -> bool {
        self.fast_path
    }

    /// Whether a kernel answer can do what these filters do.
    pub fn kernel(&self) -> bool {
        self.kernel
    }

    pub fn iter(&self) -> impl Iterator<Item = &FilterRt> {
        self.list.iter()
    }

    #[inline]
    pub fn request_headers(&self) -> Option<&HeaderOps> {
        first!(self.list, RequestHeaders)
    }

    #[inline]
    pub fn response_headers(&self) -> Option<&HeaderOps> {
        first!(self.list, ResponseHeaders)
    }

    #[inline]
    pub fn rewrite(&self) -> Option<&Rewrite> {
        first!(self.list, UrlRewrite)
    }

    #[inline]
    pub fn compression(&self) -> Option<&CompressionRt> {
        first!(self.list, Compression)
    }

    #[inline]
    pub fn access_log(&self) -> Option<&Arc<LogFormat>> {
        first!(self.list, AccessLog)
    }

    #[inline]
    pub fn request_limits(&self) -> Option<&RequestLimitsRt> {
        first!(self.list, RequestLimits)
    }

    #[inline]
    pub fn cors(&self) -> Option<&CorsRt> {
        first!(self.list, Cors)
    }

    #[inline]
    pub fn retry(&self) -> Option<&RetryRt> {
        first!(self.list, Retry)
    }

    #[inline]
    pub fn session(&self) -> Option<&SessionRt> {
        first!(self.list, Session)
    }

    #[inline]
    pub fn cache(&self) -> Option<&CacheRt> {
        first!(self.list, Cache)
    }

    #[inline]
    pub fn rate_limit(&self) -> Option<&RateLimitRt> {
        first!(self.list, RateLimit)
    }

    #[inline]
    pub fn global_rate_limit(&self) -> Option<&GlobalRateLimitRt> {
        first!(self.list, GlobalRateLimit)
    }

    #[inline]
    pub fn api_key_auth(&self) -> Option<&ApiKeyAuthRt> {
        first!(self.list, ApiKeyAuth)
    }

    #[inline]
    pub fn jwt_auth(&self) -> Option<&JwtAuthRt> {
        first!(self.list, JwtAuth)
    }

    #[inline]
    pub fn ext_auth(&self) -> Option<&ExtAuthRt> {
        first!(self.list, ExtAuth)
    }

    #[inline]
    pub fn authorization(&self) -> Option<&AuthorizationRt> {
        first!(self.list, Authorization)
    }

    #[inline]
    pub fn basic_auth(&self) -> Option<&BasicAuthRt> {
        first!(self.list, BasicAuth).map(|b| &**b)
    }

    /// Every mirror, in order.
    pub fn mirrors(&self) -> impl Iterator<Item = &MirrorRt> {
        self.list.iter().filter_map(|f| match f {
            FilterRt::Mirror(m) => Some(m),
            _ => None,
        })
    }

    #[inline]
    pub fn has_mirrors(&self) -> bool {
        self.mirrors().next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use rauta_common::api::v1::{HeaderModifier, HeaderValue};

    use super::*;

    fn setting(name: &str) -> HeaderOps {
        HeaderOps::build(&HeaderModifier {
            set: vec![HeaderValue {
                name: name.into(),
                value: "v".into(),
            }],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn an_identity_header_and_its_twins_go_and_connection_cannot_drop_it() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from_static("forged"));
        h.insert("x_user", http::HeaderValue::from_static("forged"));
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, X-User"),
        );
        remove_field(&mut h, &http::HeaderName::from_static("x-user"));
        assert!(!h.contains_key("x-user") && !h.contains_key("x_user"));
        assert_eq!(h[http::header::CONNECTION], "keep-alive");
    }

    #[test]
    fn the_fast_paths_take_only_filters_they_implement() {
        assert!(Filters::default().fast_path());
        assert!(Filters::new(vec![FilterRt::RequestHeaders(setting("x-a"))]).fast_path());
        assert!(Filters::new(vec![FilterRt::ResponseHeaders(setting("x-a"))]).fast_path());
        for gateway_field in ["host", "x-forwarded-for", "connection", "transfer-encoding"] {
            assert!(
                !Filters::new(vec![FilterRt::RequestHeaders(setting(gateway_field))]).fast_path(),
                "{gateway_field}"
            );
        }
        let with_rewrite = Filters::new(vec![
            FilterRt::RequestHeaders(setting("x-a")),
            FilterRt::UrlRewrite(Rewrite::default()),
        ]);
        assert!(!with_rewrite.fast_path());
        assert!(with_rewrite.rewrite().is_some());
        assert_eq!(
            with_rewrite.request_headers().map(|o| o.touches(&["x-a"])),
            Some(true)
        );
    }
}
