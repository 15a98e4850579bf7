//! What the proxy tells about itself: Prometheus metrics (with per-route counters), the access
//! log, W3C trace context and OpenTelemetry spans.

pub mod access_log;
pub mod l4_metrics;
pub mod log_format;
pub mod metrics;
pub mod otlp;
pub mod route_stats;
pub mod series;
pub mod trace;
pub mod upstream_stats;
