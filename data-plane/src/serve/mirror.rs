//! RequestMirror: copies of a request sent to other clusters, answers discarded. Only bodies
//! small enough to hold in memory (`upstream::buffer_body`) are mirrored; a larger request is
//! forwarded unmirrored rather than delayed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Uri};
use http_body_util::{BodyExt, Either, Full};
use tracing::debug;

use crate::model::filters::mirror::MirrorRt;
use crate::model::request::RequestHeaders;

/// Longest a mirrored copy may take; nobody waits for it.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Copies in flight at most, process-wide: beyond that copies are dropped, so a slow mirror
/// cannot make the proxy hold unbounded memory.
const MAX_COPIES_IN_FLIGHT: usize = 1024;

static COPIES_IN_FLIGHT: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_COPIES_IN_FLIGHT);

/// Sends one copy per sampled mirror, in the background.
pub fn send_copies<'a>(
    mirrors: impl Iterator<Item = &'a MirrorRt>,
    parts: &Parts,
    path: &PathAndQuery,
    body: &Bytes,
    client: IpAddr,
) {
    for mirror in mirrors.filter(|m| m.sampled()) {
        let Some(cluster) = mirror.cluster.clone() else {
            continue;
        };
        let Ok(permit) = COPIES_IN_FLIGHT.try_acquire() else {
            debug!(cluster = %cluster.name, "too many mirror copies in flight; copy dropped");
            continue;
        };
        let Some(endpoint) = cluster.pick(client, RequestHeaders::Map(&parts.headers)) else {
            continue;
        };
        let pool = Arc::clone(&endpoint.pool);
        let mut copy = Request::new(Either::Right(Full::new(body.clone())));
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = Uri::from(path.clone());
        *copy.headers_mut() = parts.headers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(MIRROR_TIMEOUT, pool.send(copy, false, false)).await {
                Ok(Ok(resp)) => {
                    let _ = resp.into_body().collect().await;
                }
                Ok(Err(err)) => debug!(cluster = %cluster.name, %err, "mirror request failed"),
                Err(_) => debug!(cluster = %cluster.name, "mirror request timed out"),
            }
        });
    }
}
