//! A route's or Gateway's access log format (TrafficPolicy `accessLog`), validated.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderName;
use rauta_common::api::v1::{AccessLogFormat, AccessLogValue, access_log_field};

use super::FilterError;
use crate::observe::log_format::{FieldSource, LogFormat};

/// Most fields a line may have.
const MAX_FIELDS: usize = 64;

pub fn build(format: &AccessLogFormat) -> Result<Arc<LogFormat>, FilterError> {
    let bad = |why: String| FilterError::AccessLog(why);
    if format.fields.is_empty() || format.fields.len() > MAX_FIELDS {
        return Err(bad(format!("1 to {MAX_FIELDS} fields")));
    }
    let mut names = HashSet::new();
    let mut fields = Vec::with_capacity(format.fields.len());
    for f in &format.fields {
        if f.name.is_empty() || !names.insert(f.name.as_str()) {
            return Err(bad(format!("field name {:?} empty or repeated", f.name)));
        }
        let source = match &f.source {
            Some(access_log_field::Source::RequestHeader(h)) => FieldSource::RequestHeader(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| bad(format!("request header {h:?}")))?,
            ),
            Some(access_log_field::Source::Value(v)) => match AccessLogValue::try_from(*v) {
                Ok(AccessLogValue::StartTime) => FieldSource::StartTime,
                Ok(AccessLogValue::DurationMs) => FieldSource::DurationMs,
                Ok(AccessLogValue::Listener) => FieldSource::Listener,
                Ok(AccessLogValue::Client) => FieldSource::Client,
                Ok(AccessLogValue::Method) => FieldSource::Method,
                Ok(AccessLogValue::Authority) => FieldSource::Authority,
                Ok(AccessLogValue::Path) => FieldSource::Path,
                Ok(AccessLogValue::Protocol) => FieldSource::Protocol,
                Ok(AccessLogValue::Status) => FieldSource::Status,
                Ok(AccessLogValue::Route) => FieldSource::Route,
                Ok(AccessLogValue::Cluster) => FieldSource::Cluster,
                Ok(AccessLogValue::Upstream) => FieldSource::Upstream,
                Ok(AccessLogValue::TraceId) => FieldSource::TraceId,
                Ok(AccessLogValue::UserAgent) => FieldSource::UserAgent,
                Ok(AccessLogValue::Unspecified) | Err(_) => {
                    return Err(bad(format!("field {:?}: unknown value {v}", f.name)));
                }
            },
            None => return Err(bad(format!("field {:?} has no source", f.name))),
        };
        fields.push((f.name.clone(), source));
    }
    Ok(Arc::new(LogFormat { fields }))
}
