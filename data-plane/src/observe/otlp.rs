//! OpenTelemetry traces: one server span per sampled request (route, cluster, endpoint,
//! status, retries), exported over OTLP/gRPC to a collector (`--otlp-endpoint`). The request
//! path builds the span and hands it to the exporter task through a bounded queue: when the
//! queue is full the span is dropped and counted, never waited for. The exporter sends batches
//! of up to [`BATCH`] spans, at least once a second while spans come.
//!
//! Sampling is parent based: a request whose traceparent says sampled is always recorded, one
//! that says not sampled never is, and a new trace is sampled with `--trace-sampling`'s
//! probability. The upstream sees the decision in the traceparent's flags.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use rauta_common::api::otlp::trace_service_client::TraceServiceClient;
use rauta_common::api::otlp::{
    AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, Status, any_value, span, status,
};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{self, Receiver, Sender, error::TrySendError};
use tracing::{debug, warn};

use super::access_log::Entry;
use super::trace::TraceContext;

/// Spans waiting for export at most.
const QUEUE: usize = 8192;
/// Spans per export call at most.
pub const BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Export calls under way at most.
const EXPORTS_IN_FLIGHT: usize = 4;

/// A request's sampling decision ([`Tracer::decide`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampling {
    /// A new trace started for this request is sampled.
    pub root: bool,
    /// This request's trace is sampled: its span is exported.
    pub sampled: bool,
}

/// Export outcomes, counted.
#[derive(Debug, Clone)]
pub struct SpanCounters {
    pub exported: IntCounter,
    pub dropped: IntCounter,
    pub failed: IntCounter,
}

/// The span sink the request paths use.
#[derive(Debug)]
pub struct Tracer {
    queue: Sender<Span>,
    /// A new trace is sampled when a random u32 is below this.
    threshold: u64,
    counters: SpanCounters,
}

/// Why the exporter cannot start.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint:?}: {reason}")]
pub struct TracerError {
    endpoint: String,
    reason: String,
}

impl Tracer {
    /// Starts the exporter task on the current runtime. `ratio`: the share of new traces
    /// sampled, 0 to 1; `instance`: the proxy's node id (service.instance.id).
    pub fn start(
        endpoint: &str,
        ratio: f64,
        instance: &str,
        counters: SpanCounters,
    ) -> Result<Arc<Tracer>, TracerError> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| TracerError {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let (queue, spans) = mpsc::channel(QUEUE);
        let resource = Resource {
            attributes: vec![
                attribute("service.name", "rauta-proxy"),
                attribute("service.instance.id", instance),
            ],
            dropped_attributes_count: 0,
        };
        tokio::spawn(export(
            TraceServiceClient::new(channel),
            spans,
            resource,
            counters.clone(),
        ));
        Ok(Arc::new(Tracer {
            queue,
            // 0 samples no new trace at all; 1 samples every one.
            threshold: if ratio <= 0.0 {
                0
            } else {
                (ratio.min(1.0) * f64::from(u32::MAX) + 1.0) as u64
            },
            counters,
        }))
    }

    /// Whether a new trace is sampled.
    #[inline]
    pub fn sample_root(&self) -> bool {
        u64::from(rand::random::<u32>()) < self.threshold
    }

    /// The sampling decision for a request with this traceparent, made once it arrives (so a
    /// request whose span will not be exported keeps nothing for it): whether a new trace
    /// would be sampled, and whether this request's is.
    pub fn decide(&self, traceparent: Option<&[u8]>) -> Sampling {
        let root = self.sample_root();
        let sampled = match traceparent.and_then(super::trace::parse) {
            Some((_, _, flags)) => flags & 0x01 != 0,
            None => root,
        };
        Sampling { root, sampled }
    }

    /// Records the span of a finished request, if its trace is sampled.
    pub fn record(&self, entry: &Entry<'_>, trace: &TraceContext, retries: u32) {
        if !trace.sampled() {
            return;
        }
        match self.queue.try_send(server_span(entry, trace, retries)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                self.counters.dropped.inc();
            }
        }
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn int_attribute(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The proxy's span of one request, named as OpenTelemetry's HTTP conventions say
/// ("{method} {route}"), its attributes by those conventions plus rauta.*.
pub fn server_span(entry: &Entry<'_>, trace: &TraceContext, retries: u32) -> Span {
    let end = SystemTime::now();
    let start = end - Duration::from_secs_f64(entry.duration_ms / 1000.0);
    let mut attributes = vec![
        attribute("http.request.method", entry.method),
        attribute("url.path", entry.path.split('?').next().unwrap_or("")),
        attribute("server.address", entry.authority),
        attribute("client.address", &entry.client.ip().to_string()),
        attribute("network.protocol.name", "http"),
        attribute(
            "network.protocol.version",
            entry.protocol.trim_start_matches("HTTP/"),
        ),
        int_attribute("http.response.status_code", i64::from(entry.status)),
        attribute("rauta.listener", entry.listener),
        int_attribute("rauta.retries", i64::from(retries)),
    ];
    if let Some(route) = entry.route {
        attributes.push(attribute("http.route", route));
    }
    if let Some(cluster) = entry.cluster {
        attributes.push(attribute("rauta.cluster", cluster));
    }
    if let Some(upstream) = entry.upstream {
        attributes.push(attribute("rauta.upstream.address", &upstream.to_string()));
    }
    if let Some(agent) = entry.user_agent {
        attributes.push(attribute("user_agent.original", agent));
    }
    let error = entry.status >= 500;
    Span {
        trace_id: trace.trace_id.to_vec(),
        span_id: trace.span_id.to_vec(),
        trace_state: String::new(),
        parent_span_id: trace.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(trace.flags),
        name: match entry.route {
            Some(route) => format!("{} {route}", entry.method),
            None => entry.method.to_owned(),
        },
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: unix_nanos(start),
        end_time_unix_nano: unix_nanos(end),
        attributes,
        dropped_attributes_count: 0,
        status: Some(Status {
            message: String::new(),
            code: if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
        }),
    }
}

/// Sends the queued spans in batches until the tracer is dropped.
async fn export(
    client: TraceServiceClient<tonic::transport::Channel>,
    mut spans: Receiver<Span>,
    resource: Resource,
    counters: SpanCounters,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let warned = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(Semaphore::new(EXPORTS_IN_FLIGHT));
    loop {
        if spans.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        // Let the batch fill for a while: one call per span would cost the collector (and
        // this proxy) far more than the spans.
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            let more = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, spans.recv_many(&mut batch, more)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "rauta-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: std::mem::take(&mut batch),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        // A few calls at once: one slow answer must not stall the queue behind it. With all
        // of them waiting, the queue fills and new spans are dropped (and counted).
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let (mut client, counters, warned) =
            (client.clone(), counters.clone(), Arc::clone(&warned));
        tokio::spawn(async move {
            let _permit = permit;
            match client.export(request).await {
                Ok(answer) => {
                    let rejected = answer
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0));
                    counters.exported.inc_by(count.saturating_sub(rejected));
                    counters.failed.inc_by(rejected.min(count));
                    warned.store(false, Ordering::Relaxed);
                }
                Err(status) => {
                    counters.failed.inc_by(count);
                    if !warned.swap(true, Ordering::Relaxed) {
                        warn!(%status, "exporting spans failed; counting them in rauta_proxy_trace_spans_total{{result=\"failed\"}} until an export succeeds");
                    } else {
                        debug!(%status, "exporting spans failed");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_carries_the_request_and_its_trace() {
        let entry = Entry {
            start_time: String::new(),
            duration_ms: 12.5,
            listener: "default/gw/http",
            client: "10.0.0.9:5000".parse().unwrap(),
            method: "GET",
            authority: "api.example",
            path: "/users?id=1",
            protocol: "HTTP/1.1",
            status: 503,
            route: Some("apps/api/0"),
            cluster: Some("apps/api:8080"),
            upstream: Some("10.1.0.1:8080".parse().unwrap()),
            trace_id: None,
            user_agent: None,
        };
        let trace = TraceContext::continue_from(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            false,
        );
        let span = server_span(&entry, &trace, 2);
        assert_eq!(span.name, "GET apps/api/0");
        assert_eq!(span.trace_id, trace.trace_id);
        assert_eq!(
            span.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        let d = span.end_time_unix_nano - span.start_time_unix_nano;
        assert!((12_000_000..13_000_000).contains(&d), "{d}");
        assert_eq!(span.status.unwrap().code, status::StatusCode::Error as i32);
        let get = |k: &str| span.attributes.iter().find(|a| a.key == k).cloned();
        assert_eq!(get("url.path").unwrap(), attribute("url.path", "/users"));
        assert_eq!(
            get("rauta.retries").unwrap(),
            int_attribute("rauta.retries", 2)
        );
        assert_eq!(
            get("http.response.status_code").unwrap(),
            int_attribute("http.response.status_code", 503)
        );
    }
}
