//! External authorization over Envoy's gRPC API (`envoy.service.auth.v3.Authorization/Check`,
//! the subset in proto/envoy/ext_authz.proto): one unary call on the cluster's HTTP/2 pool,
//! framed by hand (five bytes and the message), as the proxy sends any request. Status OK
//! allows with the response's header changes; any other denies with its `denied_response`
//! (default 403); no well-formed answer is a failure (open or closed, as configured).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, TE};
use http::{HeaderName, HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use prost::Message;
use rauta_common::api::ext_authz::{
    Address, AttributeContext, CheckRequest, CheckResponse, HeaderValueOption, SocketAddress,
    Timestamp, address, attribute_context, check_response, socket_address,
};
use tracing::debug;

use super::ext_auth_answer::{Edits, HOP_BY_HOP, MAX_DENIAL_BODY, Outcome, SetMode};
use super::local_reply::local;
use crate::body::client::ClientBody;
use crate::model::cluster::EndpointRt;
use crate::model::filters::ExtAuthRt;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

pub(super) async fn check(
    ext: &ExtAuthRt,
    req: &Request<ClientBody>,
    endpoint: &EndpointRt,
    peer: SocketAddr,
    scheme: &str,
) -> Outcome {
    let message = check_request(ext, req, peer, scheme).encode_to_vec();
    let Ok(len) = u32::try_from(message.len()) else {
        return Outcome::Failed;
    };
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(len);
    frame.put_slice(&message);
    let mut call = Request::new(Either::Right(Full::new(frame.freeze())));
    *call.method_mut() = http::Method::POST;
    *call.uri_mut() = http::Uri::from_static(CHECK_PATH);
    let headers = call.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    let resp = match endpoint.pool.send(call, false, false).await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(policy = %ext.name, error = %e, "gRPC external authorization failed");
            return Outcome::Failed;
        }
    };
    let (parts, body) = resp.into_parts();
    // Once the service answers, a refusal stays a refusal: an answer that cannot be read is
    // one (403), never a failure that failing open would let through.
    let unreadable = || Outcome::Denied(Box::new(local(StatusCode::FORBIDDEN, Bytes::new())));
    let Ok(collected) = Limited::new(body, MAX_DENIAL_BODY * 4).collect().await else {
        return unreadable();
    };
    // grpc-status comes in the trailers, or in the headers of a trailers-only answer.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
    if parts.status != StatusCode::OK || grpc_status != Some(0) {
        debug!(policy = %ext.name, status = %parts.status, ?grpc_status, "gRPC external authorization failed");
        return Outcome::Failed;
    }
    let data = collected.to_bytes();
    // One uncompressed message: flag 0, its length, the message.
    let framed = data.len() >= 5
        && data[0] == 0
        && u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize == data.len() - 5;
    let Some(answer) = framed
        .then(|| CheckResponse::decode(&data[5..]).ok())
        .flatten()
    else {
        return unreadable();
    };
    outcome(answer)
}

/// What the service said.
fn outcome(answer: CheckResponse) -> Outcome {
    let allowed = answer.status.as_ref().is_none_or(|s| s.code == 0);
    match (allowed, answer.http_response) {
        (true, Some(check_response::HttpResponse::OkResponse(ok))) => Outcome::Allowed(Edits {
            // Fields that frame the request or name its host are the proxy's.
            set: ok
                .headers
                .iter()
                .filter_map(header_set)
                .filter(|(name, _, _)| {
                    *name != HOST && *name != CONTENT_LENGTH && !HOP_BY_HOP.contains(&name.as_str())
                })
                .collect(),
            remove: ok
                .headers_to_remove
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .filter(|h| *h != HOST)
                .collect(),
        }),
        (true, _) => Outcome::Allowed(Edits::default()),
        (false, denied) => {
            let denied = match denied {
                Some(check_response::HttpResponse::DeniedResponse(d)) => d,
                _ => Default::default(),
            };
            let status = denied
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .unwrap_or(StatusCode::FORBIDDEN);
            let mut resp = local(status, Bytes::from(denied.body));
            for (name, value, _) in denied.headers.iter().filter_map(header_set) {
                if !HOP_BY_HOP.contains(&name.as_str()) && name != CONTENT_LENGTH {
                    // Several of a name (Set-Cookie, WWW-Authenticate challenges) all go.
                    resp.headers_mut().append(name, value);
                }
            }
            Outcome::Denied(Box::new(resp))
        }
    }
}

/// A header the service sets, with how (Envoy's defaults for ext_authz: overwrite unless
/// `append` says otherwise); `None` for one that is not a valid header.
fn header_set(option: &HeaderValueOption) -> Option<(HeaderName, HeaderValue, SetMode)> {
    let header = option.header.as_ref()?;
    let name = HeaderName::from_bytes(header.key.as_bytes()).ok()?;
    let value = match header.raw_value.is_empty() {
        true => HeaderValue::from_str(&header.value).ok()?,
        false => HeaderValue::from_bytes(&header.raw_value).ok()?,
    };
    let mode = match (
        option.append.as_ref().map(|b| b.value),
        option.append_action,
    ) {
        (Some(true), _) => SetMode::Append,
        (Some(false), _) => SetMode::Overwrite,
        (None, 1) => SetMode::AddIfAbsent,
        (None, 3) => SetMode::OverwriteIfExists,
        (None, _) => SetMode::Overwrite,
    };
    Some((name, value, mode))
}

/// The CheckRequest for a request: method, target, Host, scheme, protocol, the client's
/// address and the chosen headers (all when none are chosen).
fn check_request(
    ext: &ExtAuthRt,
    req: &Request<ClientBody>,
    peer: SocketAddr,
    scheme: &str,
) -> CheckRequest {
    // As Envoy sends them: a name's values joined with "," (cookies with "; "), without the
    // connection's own fields, with the pseudo-headers.
    let mut headers: HashMap<String, String> = HashMap::new();
    let chosen = |name: &HeaderName| {
        !HOP_BY_HOP.contains(&name.as_str())
            && (ext.headers_to_auth.is_empty() || ext.headers_to_auth.iter().any(|h| h == name))
    };
    for (name, value) in req.headers().iter().filter(|(n, _)| chosen(n)) {
        let value = String::from_utf8_lossy(value.as_bytes());
        let separator = if *name == COOKIE { "; " } else { "," };
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(separator);
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_owned();
    let size = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(-1);
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    for (name, value) in [
        (":authority", host.clone()),
        (":method", req.method().as_str().to_owned()),
        (":path", target.clone()),
        (":scheme", scheme.to_owned()),
    ] {
        headers.insert(name.to_owned(), value);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let http = attribute_context::HttpRequest {
        method: req.method().as_str().to_owned(),
        headers,
        path: target,
        host,
        scheme: scheme.to_owned(),
        size,
        protocol: match req.version() {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
        .to_owned(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        protocol: 0,
                        address: peer.ip().to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            peer.port(),
                        ))),
                    })),
                }),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: Some(Timestamp {
                    seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
                }),
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}
