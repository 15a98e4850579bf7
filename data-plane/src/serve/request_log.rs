//! What the general path learns of a request for its access log line: the request line, taken
//! before the request is forwarded, and what routing chose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Version};

use super::context::{Connection, ListenerCtx};
use super::headers::request_host;
use crate::body::client::ClientBody;
use crate::model::rule::RuleRt;
use crate::observe::access_log::{self, AccessLog};
use crate::observe::log_format::LogFormat;
use crate::observe::trace::TraceContext;

/// What routing chose, filled in while the request is served.
#[derive(Default)]
pub(crate) struct LogDetails {
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub trace: Option<TraceContext>,
    /// Retries sent after the first attempt.
    pub retries: u32,
    /// A new trace started for this request is sampled (decided when it arrived).
    pub sample_root: bool,
    /// The route's own line format, with the request headers it logs.
    pub format: Option<(Arc<LogFormat>, Vec<Option<String>>)>,
    /// The request target with credentials taken out (API keys in the query), logged instead.
    pub path: Option<String>,
}

impl LogDetails {
    /// Notes the rule a request was routed to: its name, and its line format with the
    /// request headers that format logs (taken now: the request is gone once forwarded).
    pub fn routed_to(&mut self, rule: &RuleRt, headers: &http::HeaderMap) {
        self.route = Some(Arc::clone(&rule.name));
        self.format = rule.filters.access_log().map(|format| {
            let captured = format
                .headers()
                .map(|h| headers.get(h)?.to_str().ok().map(str::to_owned))
                .collect();
            (Arc::clone(format), captured)
        });
    }

    /// Writes the request's line: in the route's format if it has one.
    pub fn record(&self, log: &AccessLog, entry: &access_log::Entry<'_>) {
        match &self.format {
            Some((format, captured)) => log.send(format.render(entry, captured)),
            None => log.record(entry),
        }
    }
}

/// The request line of a logged request.
pub(crate) struct LoggedRequest {
    method: http::Method,
    authority: String,
    path: String,
    protocol: &'static str,
    user_agent: Option<String>,
    start_time: String,
}

impl LoggedRequest {
    pub fn of(req: &Request<ClientBody>) -> LoggedRequest {
        LoggedRequest {
            method: req.method().clone(),
            authority: request_host(req).unwrap_or_default().into_owned(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: req
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            start_time: jiff::Timestamp::now().to_string(),
        }
    }

    /// The access log entry of this request, answered with `status`.
    pub fn entry<'a>(
        &'a self,
        (listener, conn): (&'a ListenerCtx, &Connection),
        details: &'a LogDetails,
        status: u16,
        started: Instant,
    ) -> access_log::Entry<'a> {
        access_log::Entry {
            start_time: self.start_time.clone(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            listener: &listener.name,
            client: conn.peer,
            method: self.method.as_str(),
            authority: &self.authority,
            path: details.path.as_deref().unwrap_or(&self.path),
            protocol: self.protocol,
            status,
            route: details.route.as_deref(),
            cluster: details.cluster.as_deref(),
            upstream: details.upstream,
            trace_id: details.trace.as_ref().map(|t| t.trace_id_hex()),
            user_agent: self.user_agent.as_deref(),
        }
    }
}
