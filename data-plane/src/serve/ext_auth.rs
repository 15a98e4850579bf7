//! External authorization: the call each request waits for (settings in
//! `model::filters::ext_auth`). The request goes to the service without its body; a 2xx
//! answer lets it through with the answer's chosen headers set on it; any other answer goes
//! back to the client as it came; no answer in time fails open or closed as configured.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use tracing::debug;

use super::ext_auth_answer::{Edits, HOP_BY_HOP, MAX_DENIAL_BODY, Outcome, SetMode};
use super::ext_authz_grpc;
use super::local_reply::{ProxyBody, local};
use crate::body::client::ClientBody;
use crate::model::filters::{ExtAuthRt, remove_field};
use crate::model::request::RequestHeaders;
use crate::shared::Shared;

/// `None` when the request may go on (the service's chosen headers now set on it), else the
/// answer to send the client.
pub async fn check(
    shared: &Shared,
    ext: &ExtAuthRt,
    req: &mut Request<ClientBody>,
    peer: SocketAddr,
    scheme: &str,
) -> Option<Response<ProxyBody>> {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(ext.timeout, call(ext, req, peer, scheme)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            debug!(policy = %ext.name, "external authorization timed out");
            Outcome::Failed
        }
    };
    let result = match &outcome {
        Outcome::Allowed(_) => "allowed",
        Outcome::Denied(_) => "denied",
        Outcome::Failed if ext.fail_open => "error_allowed",
        Outcome::Failed => "error_denied",
    };
    (shared.metrics.auth_results)
        .with_label_values(&[&*ext.name, "ext_auth", result])
        .inc();
    (shared.metrics.ext_auth_seconds)
        .with_label_values(&[&*ext.name])
        .observe(started.elapsed().as_secs_f64());
    // Whatever lets the request through, the client's own values of the service's headers go.
    if !matches!(outcome, Outcome::Denied(_)) {
        for name in ext.headers_to_backend.iter() {
            remove_field(req.headers_mut(), name);
        }
    }
    match outcome {
        Outcome::Allowed(edits) => {
            edits.apply(req.headers_mut());
            None
        }
        Outcome::Denied(resp) => Some(*resp),
        Outcome::Failed if ext.fail_open => None,
        Outcome::Failed => Some(local(
            StatusCode::FORBIDDEN,
            Bytes::from_static(b"authorization service unavailable\n"),
        )),
    }
}

async fn call(
    ext: &ExtAuthRt,
    req: &Request<ClientBody>,
    peer: SocketAddr,
    scheme: &str,
) -> Outcome {
    let Some(cluster) = ext.cluster.as_deref() else {
        return Outcome::Failed;
    };
    let Some(endpoint) = cluster.pick(peer.ip(), RequestHeaders::Map(req.headers())) else {
        return Outcome::Failed;
    };
    if ext.grpc {
        return ext_authz_grpc::check(ext, req, endpoint, peer, scheme).await;
    }
    let Some(ask) = auth_request(ext, req, peer, scheme) else {
        return Outcome::Failed;
    };
    let resp = match endpoint.pool.send(ask, false, false).await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(policy = %ext.name, error = %e, "external authorization failed");
            return Outcome::Failed;
        }
    };
    let (parts, body) = resp.into_parts();
    if parts.status.is_success() {
        // Drained, so that the connection goes back to its pool.
        let _ = Limited::new(body, MAX_DENIAL_BODY).collect().await;
        let mut edits = Edits::default();
        for name in ext.headers_to_backend.iter() {
            for value in parts.headers.get_all(name) {
                edits
                    .set
                    .push((name.clone(), value.clone(), SetMode::Append));
            }
        }
        return Outcome::Allowed(edits);
    }
    // A refusal stays one whatever its body does: past the limit, or cut off, it goes without.
    let body = match Limited::new(body, MAX_DENIAL_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut denial = local(parts.status, body);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            denial.headers_mut().append(name.clone(), value.clone());
        }
    }
    Outcome::Denied(Box::new(denial))
}

/// The request the service is asked: the client's method, the prefix and the client's path
/// and query, its Host, the chosen headers and X-Forwarded-*; no body.
fn auth_request(
    ext: &ExtAuthRt,
    req: &Request<ClientBody>,
    peer: SocketAddr,
    scheme: &str,
) -> Option<Request<crate::upstream::UpstreamBody>> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{target}", ext.path_prefix).parse().ok()?;
    let mut ask = Request::new(Either::Right(Full::new(Bytes::new())));
    *ask.method_mut() = req.method().clone();
    *ask.uri_mut() = uri;
    let headers = ask.headers_mut();
    let host = req
        .headers()
        .get(HOST)
        .cloned()
        .or_else(|| HeaderValue::from_str(req.uri().authority()?.as_str()).ok());
    if let Some(host) = &host {
        headers.insert(HOST, host.clone());
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    for name in ext.headers_to_auth.iter() {
        for value in req.headers().get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    let forwarded = [
        ("x-forwarded-method", req.method().as_str().to_owned()),
        ("x-forwarded-proto", scheme.to_owned()),
        ("x-forwarded-uri", target.to_owned()),
        ("x-forwarded-for", peer.ip().to_string()),
    ];
    for (name, value) in forwarded {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    Some(ask)
}
