//! What the general path learns of a request for its access log line: the request line, taken
//! before the request is forwarded, and what routing chose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Version};

use super::context::{Connection, ListenerCtx};
use super::headers::request_host;
use crate::body::client::ClientBody;
use crate::observe::access_log;
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
    /// The request target with credentials taken out (API keys in the query), logged instead.
    pub path: Option<String>,
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
