//! A rule's authentication and authorization (SecurityPolicy). Authentication: API keys,
//! Basic, then JSON Web Tokens; every method the
//! rule has must pass. A request that passes is rewritten for its backend here, before rate
//! limits and the rule's action: credentials removed (unless forwarded), the headers the
//! proxy sets (client id, claims) set, so rate limits keyed by those headers count what the
//! proxy vouches for, never what a client claims.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Uri};

use super::ext_auth;
use super::local_reply::{ProxyBody, local, unauthorized};
use super::request_log::LogDetails;
use crate::body::client::ClientBody;
use crate::model::filters::authorization::Asking;
use crate::model::filters::jwt::{JwtFailure, Verified};
use crate::model::rule::RuleRt;
use crate::shared::Shared;

/// Who a request is from, as authentication found.
#[derive(Default)]
pub(crate) struct Identity {
    /// Some method vouched for the client (or an authorization service let it through): the
    /// answer is for it alone.
    pub authenticated: bool,
    /// The verified JWT, if any.
    pub jwt: Option<Arc<Verified>>,
}

/// The rule's access checks in order: authentication (a 401), authorization (a 403), the
/// external authorization service (its answer). Who the request is from, or the refusal.
pub(crate) async fn check_access(
    shared: &Shared,
    rule: &RuleRt,
    req: &mut Request<ClientBody>,
    (peer, scheme): (SocketAddr, &str),
    details: &mut Option<LogDetails>,
) -> Result<Identity, Response<ProxyBody>> {
    // The log shows the target without credentials, whatever comes of them.
    if let (Some(log), Some(clean)) = (details.as_mut(), credential_free(rule, req.uri())) {
        log.path = clean.path_and_query().map(ToString::to_string);
    }
    let mut identity = authenticate(shared, rule, req).await?;
    if let Some(denied) = authorize(shared, rule, req, peer.ip(), &identity) {
        return Err(denied);
    }
    if let Some(ext) = rule.filters.ext_auth() {
        if let Some(answer) = ext_auth::check(shared, ext, req, peer, scheme).await {
            return Err(answer);
        }
        // Let through by the service, perhaps with headers of its own: for this client.
        identity.authenticated = true;
    }
    Ok(identity)
}

/// The request target without any credential a SecurityPolicy of the rule may read from the
/// query, forwarded or not: what the access log and redirects show. `None`: nothing to take.
pub(crate) fn credential_free(rule: &RuleRt, uri: &Uri) -> Option<Uri> {
    let without_keys = rule
        .filters
        .api_key_auth()
        .and_then(|a| a.without_credentials(uri));
    let after_keys = without_keys.as_ref().unwrap_or(uri);
    let without_tokens = rule
        .filters
        .jwt_auth()
        .and_then(|j| j.verifier.without_any_token(after_keys));
    without_tokens.or(without_keys)
}

/// Who the request is from, or the 401.
async fn authenticate(
    shared: &Shared,
    rule: &RuleRt,
    req: &mut Request<ClientBody>,
) -> Result<Identity, Response<ProxyBody>> {
    let mut authenticated = false;
    let mut jwt_verified = None;
    let results = &shared.metrics.auth_results;
    if let Some(auth) = rule.filters.api_key_auth() {
        let checked = auth.check(req.headers(), req.uri().query());
        let result = checked.as_ref().map_or_else(|f| f.label(), |_| "allowed");
        results
            .with_label_values(&[&*auth.name, "api_key", result])
            .inc();
        let Ok(client) = checked else {
            return Err(unauthorized(HeaderValue::from_static("ApiKey")));
        };
        let stripped = auth.without_credentials(req.uri());
        let mut uri = req.uri().clone();
        auth.prepare(req.headers_mut(), &mut uri, stripped.as_ref(), client);
        *req.uri_mut() = uri;
        authenticated = true;
    }
    if let Some(basic) = rule.filters.basic_auth() {
        let checked = basic.check(req.headers()).await;
        let result = checked.as_ref().map_or_else(|f| f.label(), |_| "allowed");
        results
            .with_label_values(&[&*basic.name, "basic", result])
            .inc();
        let user = checked.map_err(|_| {
            unauthorized(HeaderValue::from_static(
                "Basic realm=\"rauta\", charset=\"UTF-8\"",
            ))
        })?;
        basic.prepare(req.headers_mut(), user);
        authenticated = true;
    }
    if let Some(jwt) = rule.filters.jwt_auth() {
        let verifier = &jwt.verifier;
        let found = verifier.find(req.headers(), req.uri().query());
        let outcome = match &found {
            None if verifier.optional() => Ok(None),
            None => Err(JwtFailure::Missing),
            Some(found) => verifier.verify(found).await.map(|v| Some((found.at(), v))),
        };
        let result = outcome.as_ref().map_or_else(
            |f| f.label(),
            |v| match v {
                Some(_) => "allowed",
                None => "anonymous",
            },
        );
        results
            .with_label_values(&[&*verifier.name, "jwt", result])
            .inc();
        let verified = outcome.map_err(|f| unauthorized(bearer_challenge(f)))?;
        if let Some(stripped) = verifier.without_credentials(req.uri()) {
            *req.uri_mut() = stripped;
        }
        let token = verified.as_ref().map(|(at, v)| (*at, &**v));
        verifier.prepare(req.headers_mut(), token);
        authenticated |= verified.is_some();
        jwt_verified = verified.map(|(_, v)| v);
    }
    Ok(Identity {
        authenticated,
        jwt: jwt_verified,
    })
}

/// The 403 of a request the rule's authorization denies.
fn authorize(
    shared: &Shared,
    rule: &RuleRt,
    req: &Request<ClientBody>,
    peer: IpAddr,
    identity: &Identity,
) -> Option<Response<ProxyBody>> {
    let authorization = rule.filters.authorization()?;
    let asking = Asking {
        peer,
        headers: req.headers(),
        method: req.method().as_str(),
        path: req.uri().path(),
        claims: identity.jwt.as_deref().map(|v| &v.claims),
    };
    let (allowed, by) = authorization.decide(&asking);
    let result = if allowed { "allowed" } else { "denied" };
    (shared.metrics.authorization_results)
        .with_label_values(&[&*authorization.name, by, result])
        .inc();
    (!allowed).then(|| local(StatusCode::FORBIDDEN, Bytes::from_static(b"forbidden\n")))
}

/// The challenge of a refused token (RFC 6750 3): without a token, just the scheme.
fn bearer_challenge(failure: JwtFailure) -> HeaderValue {
    match failure {
        JwtFailure::Missing => HeaderValue::from_static("Bearer realm=\"rauta\""),
        f => {
            let text = format!(
                "Bearer realm=\"rauta\", error=\"invalid_token\", error_description=\"{}\"",
                f.description()
            );
            HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"rauta\""))
        }
    }
}
