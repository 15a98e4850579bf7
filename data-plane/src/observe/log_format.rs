//! A Gateway's (or route's) own access log format (TrafficPolicy `accessLog`): which fields a
//! JSON line has, under which names, in which order, including request headers. Validated
//! when the snapshot is built; rendering cannot fail.

use http::HeaderName;
use serde_json::Value;

use super::access_log::Entry;

/// Where a field's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSource {
    StartTime,
    DurationMs,
    Listener,
    Client,
    Method,
    Authority,
    Path,
    Protocol,
    Status,
    Route,
    Cluster,
    Upstream,
    TraceId,
    UserAgent,
    /// The request's header (the first value), captured before the request is forwarded.
    RequestHeader(HeaderName),
}

/// The fields of a line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    pub fields: Vec<(String, FieldSource)>,
}

impl LogFormat {
    /// The request headers the format logs, in the order [`LogFormat::render`] wants their
    /// values.
    pub fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields.iter().filter_map(|(_, s)| match s {
            FieldSource::RequestHeader(h) => Some(h),
            _ => None,
        })
    }

    /// The line for `entry`; `captured`: the values of [`LogFormat::headers`], in order (a
    /// missing one is null).
    pub fn render(&self, entry: &Entry<'_>, captured: &[Option<String>]) -> Vec<u8> {
        let mut headers = captured.iter();
        // Written field by field: the line keeps the format's order.
        let mut out = Vec::with_capacity(64 * self.fields.len());
        out.push(b'{');
        let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::String(s.to_owned()));
        for (name, source) in &self.fields {
            let value = match source {
                FieldSource::StartTime => Value::String(entry.start_time.clone()),
                FieldSource::DurationMs => Value::from(entry.duration_ms),
                FieldSource::Listener => text(Some(entry.listener)),
                FieldSource::Client => Value::String(entry.client.to_string()),
                FieldSource::Method => text(Some(entry.method)),
                FieldSource::Authority => text(Some(entry.authority)),
                FieldSource::Path => text(Some(entry.path)),
                FieldSource::Protocol => text(Some(entry.protocol)),
                FieldSource::Status => Value::from(entry.status),
                FieldSource::Route => text(entry.route),
                FieldSource::Cluster => text(entry.cluster),
                FieldSource::Upstream => entry
                    .upstream
                    .map_or(Value::Null, |u| Value::String(u.to_string())),
                FieldSource::TraceId => text(entry.trace_id.as_deref()),
                FieldSource::UserAgent => text(entry.user_agent),
                FieldSource::RequestHeader(_) => text(headers.next().and_then(|v| v.as_deref())),
            };
            if out.len() > 1 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut out, name);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, &value);
        }
        out.extend_from_slice(b"}\n");
        out
    }
}
