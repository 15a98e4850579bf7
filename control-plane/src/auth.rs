//! Who may use the gRPC port, and for what.
//!
//! Authentication: every Discovery and Admin call carries `authorization: Bearer <token>`,
//! checked against the shared token (`--auth-token-file`) or, in Kubernetes mode, verified as a
//! ServiceAccount token with a TokenReview (`authentication.k8s.io/v1`) for the controller's
//! audience, as Istio and Linkerd do with projected tokens. Positive answers are cached for a
//! minute at most (never past the token's expiry), so a fleet reconnecting is not a
//! TokenReview per stream. With `--proxy-auth none` nothing is checked.
//!
//! Authorisation: the shared token and no authentication allow everything. A ServiceAccount
//! may subscribe to the Gateways of its own namespace, and to any Gateway if it is named by
//! `--proxy-service-account`; it may use the admin service only if named by
//! `--admin-service-account`.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use rauta_common::credentials::ReloadingToken;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::server::NamedService;
use tower::ServiceExt;
use tracing::warn;

use crate::objects::ObjectRef;
use crate::proxy_report::shown;

/// Longest a positive TokenReview answer is reused.
const POSITIVE_TTL: Duration = Duration::from_secs(60);
/// How long a refused token stays refused without asking again.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Most tokens remembered at once.
const CACHE_ENTRIES: usize = 10_000;
/// Most TokenReviews in flight at once.
const CONCURRENT_REVIEWS: usize = 16;
/// Longest bearer token considered (projected tokens are about 1 KiB).
const MAX_TOKEN: usize = 16 * 1024;

/// Who a caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No authentication configured (`--proxy-auth none`).
    Anonymous,
    /// The caller has the shared token (`--auth-token-file`).
    SharedToken,
    /// A ServiceAccount token the API server vouched for.
    ServiceAccount {
        account: ServiceAccount,
        /// When the token expires, if it says: streams it opened end then.
        expires: Option<SystemTime>,
    },
}

impl Identity {
    /// When the credentials behind this identity stop being good, if ever.
    pub fn expires(&self) -> Option<SystemTime> {
        match self {
            Identity::ServiceAccount { expires, .. } => *expires,
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::SharedToken => f.write_str("shared token"),
            Identity::ServiceAccount { account, .. } => write!(f, "serviceaccount {account}"),
        }
    }
}

/// A ServiceAccount, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ServiceAccount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name))
                if crate::proxy_report::is_dns_label(ns)
                    && crate::proxy_report::is_dns_subdomain(name) =>
            {
                Ok(ServiceAccount {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!(
                "expected NAMESPACE/NAME of a ServiceAccount, got {s:?}"
            )),
        }
    }
}

impl ServiceAccount {
    /// The account a TokenReview's username names (`system:serviceaccount:NS:NAME`).
    fn from_username(username: &str) -> Option<ServiceAccount> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        format!("{namespace}/{name}").parse().ok()
    }
}

/// What the API server said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    Authenticated {
        account: ServiceAccount,
        expires: Option<SystemTime>,
    },
    /// Not a valid token for our audience, or not a ServiceAccount's; why, for the log.
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview failed: {0}")]
    Kube(#[from] kube::Error),
}

/// Something that reviews tokens: the API server in production.
pub trait Reviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Review, ReviewError>>;
}

/// TokenReviews against the cluster's API server, for one audience.
pub struct KubeReviewer {
    api: Api<TokenReview>,
    audience: String,
}

impl KubeReviewer {
    pub fn new(client: kube::Client, audience: String) -> Self {
        KubeReviewer {
            api: Api::all(client),
            audience,
        }
    }
}

/// The `exp` claim of a JWT, unverified: only used to cap how long an answer the API server
/// gave about the token is reused.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

impl Reviewer for KubeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Review, ReviewError>> {
        Box::pin(async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![self.audience.clone()]),
                },
                ..TokenReview::default()
            };
            let answer = self.api.create(&PostParams::default(), &request).await?;
            let status = answer.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                let why = status.error.unwrap_or_else(|| "not authenticated".into());
                return Ok(Review::Refused(why));
            }
            // An API server that ignores audiences answers with none: the token may be one
            // for the API server itself, which every pod has. Only ours will do.
            if !status
                .audiences
                .unwrap_or_default()
                .contains(&self.audience)
            {
                return Ok(Review::Refused(format!(
                    "the token is not for audience {:?}",
                    self.audience
                )));
            }
            let username = status.user.and_then(|u| u.username).unwrap_or_default();
            match ServiceAccount::from_username(&username) {
                Some(account) => Ok(Review::Authenticated {
                    account,
                    expires: jwt_expiry(token),
                }),
                None => Ok(Review::Refused(format!(
                    "{} is not a ServiceAccount",
                    shown(&username)
                ))),
            }
        })
    }
}

struct Cached {
    review: Review,
    until: SystemTime,
}

/// A reviewer's answers, remembered briefly by a hash of the token.
pub struct ReviewCache {
    reviewer: Box<dyn Reviewer>,
    entries: Mutex<HashMap<[u8; 32], Cached>>,
    in_flight: Semaphore,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl ReviewCache {
    pub fn new(reviewer: impl Reviewer) -> Self {
        ReviewCache {
            reviewer: Box::new(reviewer),
            entries: Mutex::default(),
            in_flight: Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    fn cached(&self, key: &[u8; 32], now: SystemTime) -> Option<Review> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|c| c.until > now)
            .map(|c| c.review.clone())
    }

    pub async fn review(&self, token: &str) -> Result<Review, ReviewError> {
        let key = digest(token);
        if let Some(review) = self.cached(&key, SystemTime::now()) {
            return Ok(review);
        }
        let _permit = self.in_flight.acquire().await;
        // Another call may have asked while this one waited.
        if let Some(review) = self.cached(&key, SystemTime::now()) {
            return Ok(review);
        }
        let review = self.reviewer.review(token).await?;
        let now = SystemTime::now();
        let until = match &review {
            Review::Authenticated { expires, .. } => {
                let ttl = now + POSITIVE_TTL;
                expires.map_or(ttl, |e| e.min(ttl))
            }
            Review::Refused(_) => now + NEGATIVE_TTL,
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, c| c.until > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Cached {
                review: review.clone(),
                until,
            },
        );
        Ok(review)
    }
}

/// How callers authenticate (`--proxy-auth`).
pub struct Authenticator {
    /// The shared token, when configured: its holder may do everything.
    shared: Option<Arc<ReloadingToken>>,
    /// ServiceAccount tokens, when configured.
    reviews: Option<ReviewCache>,
    /// ServiceAccounts that may subscribe to any Gateway.
    proxy_accounts: BTreeSet<ServiceAccount>,
    /// ServiceAccounts that may use the admin service.
    admin_accounts: BTreeSet<ServiceAccount>,
}

impl Authenticator {
    /// Nobody is asked for anything (`--proxy-auth none`).
    pub fn none() -> Self {
        Authenticator {
            shared: None,
            reviews: None,
            proxy_accounts: BTreeSet::new(),
            admin_accounts: BTreeSet::new(),
        }
    }

    /// Callers must have the shared token.
    pub fn shared_token(token: Arc<ReloadingToken>) -> Self {
        Authenticator {
            shared: Some(token),
            ..Self::none()
        }
    }

    /// Callers must have a ServiceAccount token `reviews` accepts (or the shared token).
    pub fn service_accounts(
        reviews: ReviewCache,
        shared: Option<Arc<ReloadingToken>>,
        proxy_accounts: BTreeSet<ServiceAccount>,
        admin_accounts: BTreeSet<ServiceAccount>,
    ) -> Self {
        Authenticator {
            shared,
            reviews: Some(reviews),
            proxy_accounts,
            admin_accounts,
        }
    }

    fn open(&self) -> bool {
        self.shared.is_none() && self.reviews.is_none()
    }

    /// Who the caller of a request with these headers is.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Identity, Status> {
        if self.open() {
            return Ok(Identity::Anonymous);
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "missing authorization: Bearer <token>",
            ));
        };
        if let Some(shared) = &self.shared
            && shared.accepts(value.as_bytes())
        {
            return Ok(Identity::SharedToken);
        }
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN);
        let (Some(reviews), Some(token)) = (&self.reviews, token) else {
            return Err(Status::unauthenticated("invalid bearer token"));
        };
        match reviews.review(token).await {
            Ok(Review::Authenticated { account, expires }) => {
                Ok(Identity::ServiceAccount { account, expires })
            }
            Ok(Review::Refused(why)) => Err(Status::unauthenticated(format!(
                "invalid bearer token: {}",
                crate::proxy_report::clean_text(&why, 256)
            ))),
            Err(e) => {
                warn!(error = %e, "cannot verify a bearer token with the API server");
                Err(Status::unavailable(
                    "cannot verify the bearer token now; try again",
                ))
            }
        }
    }

    /// Whether `identity` may receive the configuration of `gateway`.
    pub fn may_subscribe(&self, identity: &Identity, gateway: &ObjectRef) -> Result<(), Status> {
        match identity {
            Identity::Anonymous | Identity::SharedToken => Ok(()),
            Identity::ServiceAccount { account, .. }
                if *account.namespace == *gateway.namespace
                    || self.proxy_accounts.contains(account) =>
            {
                Ok(())
            }
            Identity::ServiceAccount { account, .. } => Err(Status::permission_denied(format!(
                "ServiceAccount {account} may not serve Gateway {gateway}: a proxy may serve the \
                 Gateways of its ServiceAccount's namespace, or any Gateway if the controller \
                 names its ServiceAccount with --proxy-service-account"
            ))),
        }
    }

    /// Whether `identity` may use the admin service.
    pub fn may_administer(&self, identity: &Identity) -> Result<(), Status> {
        match identity {
            Identity::Anonymous | Identity::SharedToken => Ok(()),
            Identity::ServiceAccount { account, .. } if self.admin_accounts.contains(account) => {
                Ok(())
            }
            Identity::ServiceAccount { account, .. } => Err(Status::permission_denied(format!(
                "ServiceAccount {account} may not use the admin service: the controller names \
                 the ServiceAccounts that may with --admin-service-account"
            ))),
        }
    }
}

/// A gRPC service behind authentication: the caller's [`Identity`] goes into the request's
/// extensions; with `admin`, only identities that may administer get through.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    auth: Arc<Authenticator>,
    admin: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, auth: Arc<Authenticator>, admin: bool) -> Self {
        Guarded { inner, auth, admin }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

/// The peer address tonic's transport recorded in a request's extensions.
pub fn peer_of(extensions: &http::Extensions) -> Option<SocketAddr> {
    tonic::Request::from_parts(tonic::metadata::MetadataMap::new(), extensions.clone(), ())
        .remote_addr()
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Guarded<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let (inner, auth, admin) = (self.inner.clone(), Arc::clone(&self.auth), self.admin);
        Box::pin(async move {
            let checked = match auth.authenticate(request.headers()).await {
                Ok(identity) if admin => auth.may_administer(&identity).map(|()| identity),
                other => other,
            };
            match checked {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    inner.oneshot(request).await
                }
                Err(status) => {
                    let peer = peer_of(request.extensions());
                    let path = shown(request.uri().path());
                    warn!(?peer, %path, code = ?status.code(), reason = %status.message(), "call refused");
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: Arc<AtomicUsize>,
        expires: Option<SystemTime>,
    }

    impl Reviewer for Counting {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Review, ReviewError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let review = match token {
                "good" => Review::Authenticated {
                    account: "apps/proxy".parse().unwrap(),
                    expires: self.expires,
                },
                _ => Review::Refused("unknown".into()),
            };
            Box::pin(async move { Ok(review) })
        }
    }

    fn cache(expires: Option<SystemTime>) -> (ReviewCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let reviewer = Counting {
            calls: Arc::clone(&calls),
            expires,
        };
        (ReviewCache::new(reviewer), calls)
    }

    #[tokio::test]
    async fn answers_are_reused_but_not_past_the_tokens_expiry() {
        let (reviews, calls) = cache(None);
        for _ in 0..100 {
            assert!(matches!(
                reviews.review("good").await.unwrap(),
                Review::Authenticated { .. }
            ));
            assert!(matches!(
                reviews.review("bad").await.unwrap(),
                Review::Refused(_)
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one review per token");

        // A token that has expired is asked about again every time.
        let (reviews, calls) = cache(Some(SystemTime::now() - Duration::from_secs(1)));
        reviews.review("good").await.unwrap();
        reviews.review("good").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bearer_tokens_are_reviewed_and_anything_else_refused() {
        let (reviews, _) = cache(None);
        let auth = Authenticator::service_accounts(reviews, None, BTreeSet::new(), BTreeSet::new());
        let call = |value: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(v) = value {
                headers.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            }
            let auth = &auth;
            async move { auth.authenticate(&headers).await }
        };
        for good in ["Bearer good", "bearer good", "BEARER  good "] {
            assert_eq!(
                call(Some(good)).await.ok(),
                Some(Identity::ServiceAccount {
                    account: "apps/proxy".parse().unwrap(),
                    expires: None
                }),
                "{good}"
            );
        }
        for bad in [
            None,
            Some("Basic good"),
            Some("good"),
            Some("Bearer "),
            Some("Bearer bad"),
        ] {
            let refused = call(bad).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn service_accounts_come_from_usernames_and_flags() {
        assert_eq!(
            ServiceAccount::from_username("system:serviceaccount:rauta-system:rauta-proxy"),
            Some("rauta-system/rauta-proxy".parse().unwrap())
        );
        for not in [
            "system:serviceaccount:a",
            "alice",
            "system:serviceaccount:A:b",
            "system:node:n1",
        ] {
            assert_eq!(ServiceAccount::from_username(not), None, "{not}");
        }
        assert!("a/b/c".parse::<ServiceAccount>().is_err());
        assert!("no-slash".parse::<ServiceAccount>().is_err());
    }

    #[test]
    fn service_accounts_serve_their_namespace_or_what_the_flags_say() {
        let fleet: ServiceAccount = "rauta-system/rauta-proxy".parse().unwrap();
        let (reviews, _) = cache(None);
        let auth = Authenticator::service_accounts(
            reviews,
            None,
            BTreeSet::from([fleet.clone()]),
            BTreeSet::from(["ops/inspector".parse().unwrap()]),
        );
        let sa = |s: &str| Identity::ServiceAccount {
            account: s.parse().unwrap(),
            expires: None,
        };
        let gw = |ns: &str| ObjectRef::new(ns, "gw");
        assert!(auth.may_subscribe(&sa("apps/proxy"), &gw("apps")).is_ok());
        let refused = auth
            .may_subscribe(&sa("apps/proxy"), &gw("payments"))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("apps/proxy"), "{refused:?}");
        assert!(
            auth.may_subscribe(&sa(&fleet.to_string()), &gw("payments"))
                .is_ok()
        );
        assert!(auth.may_subscribe(&Identity::SharedToken, &gw("x")).is_ok());
        assert!(auth.may_administer(&sa("apps/proxy")).is_err());
        assert!(auth.may_administer(&sa(&fleet.to_string())).is_err());
        assert!(auth.may_administer(&sa("ops/inspector")).is_ok());
        assert!(auth.may_administer(&Identity::SharedToken).is_ok());
    }

    #[test]
    fn jwt_expiry_is_read_from_the_claims() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"aud":["rauta-controller"],"exp":2000000000}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{claims}.signature");
        assert_eq!(
            jwt_expiry(&token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }
}
