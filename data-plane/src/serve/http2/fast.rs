//! HTTP/2 requests on the HTTP/1.1 fast path's terms. A request without a body, whose head
//! reads as a plain HTTP/1.1 head, is planned by the fast path's own planner (`h1::request`:
//! the same routing, the same rules about what it takes, the same upstream head written
//! straight from the fields) and sent with the general path's raw client: no request header
//! map, no request path machinery. What the planner does not take goes to the general path,
//! which decides everything else in one place.

use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Either;
use tracing::debug;

use crate::serve::attempt::{Attempt, TimedOut};
use crate::serve::context::{Connection, ListenerCtx};
use crate::serve::h1::request::{self as planner, Planned, RequestCtx};
use crate::serve::local_reply::{self, ProxyBody};
use crate::shared::Shared;
use crate::upstream::ResponseBody;
use crate::upstream::raw;

/// Serves the request whose HTTP/1.1 form is `head`; None when the fast path does not take it.
pub async fn serve(
    shared: &Shared,
    listener: &ListenerCtx,
    conn: &Connection,
    head: &[u8],
) -> Option<Response<ProxyBody>> {
    let started = Instant::now();
    let state = shared.state.load_full();
    let cx = RequestCtx {
        listener,
        conn,
        limits: &shared.limits,
        logged: shared.access_log.as_ref().is_some_and(|l| l.sampled()),
        tracer: shared.tracer.as_deref(),
    };
    let mut upstream_request = Vec::with_capacity(512);
    let plan = match planner::plan(head, &state, cx, &mut upstream_request) {
        Planned::Go(plan) => plan,
        Planned::Limited(refused) => {
            shared.metrics.http2_fast_path_requests.inc();
            refused.rule.counters.record(429, started);
            let refusal = local_reply::Refusal::from(&refused.limited);
            return Some(local_reply::too_many_requests(&refusal));
        }
        _ => return None,
    };
    shared.metrics.http2_fast_path_requests.inc();
    let _open = conn.activity.request();
    let (cluster, endpoint) = (plan.cluster, plan.endpoint);
    let attempt = match Attempt::start(cluster, endpoint) {
        Ok(attempt) => attempt,
        Err(limit) => {
            plan.record(shared, (listener, conn), (503, started), "HTTP/2");
            return Some(local_reply::overflow(limit));
        }
    };
    let sent = raw::send_head(&endpoint.pool, &upstream_request, plan.head);
    // Err(None): timed out; Err(Some(_)): failed.
    let result = match attempt.within(plan.timeout(), sent).await {
        Ok(sent) => sent.map_err(Some),
        Err(TimedOut) => Err(None),
    };
    let overflow = match &result {
        Err(Some(e)) => e.overflow(),
        _ => None,
    };
    let status = match &result {
        Ok(resp) => resp.status().as_u16(),
        Err(None) => 504,
        Err(Some(_)) if overflow.is_some() => 503,
        Err(Some(_)) => 502,
    };
    if overflow.is_some() {
        attempt.abandon();
    } else {
        attempt.finish(status >= 500);
    }
    if let Some(limit) = overflow {
        plan.record(shared, (listener, conn), (status, started), "HTTP/2");
        return Some(local_reply::overflow(limit));
    }
    plan.record(shared, (listener, conn), (status, started), "HTTP/2");
    let mut resp = match result {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            crate::serve::headers::strip_hop_by_hop(&mut parts.headers);
            parts.version = http::Version::default();
            Response::from_parts(parts, Either::Left(ResponseBody::raw(body)))
        }
        Err(failure) => {
            let text: &'static [u8] = match failure {
                None => b"upstream request timeout\n",
                Some(err) => {
                    debug!(cluster = %cluster.name, upstream = %endpoint.addr, %err, "upstream request failed");
                    b"upstream connect error\n"
                }
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            local_reply::local(status, Bytes::from_static(text))
        }
    };
    // The backend's changes, then the rule's, as on the general path.
    for ops in plan.response_ops.into_iter().flatten() {
        ops.apply(resp.headers_mut());
    }
    Some(resp)
}
