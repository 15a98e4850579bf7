//! A TrafficPolicy's concerns as the proxy applies them (`Compression`, `RequestLimits`), or
//! why they cannot be applied.

use rauta_common::api::v1::{
    AccessLogField, AccessLogFormat, AccessLogValue, Compression, ContentEncoding, RequestLimits,
    RequestPolicies, access_log_field,
};

use super::service_policy::{duration, proto};
use crate::crds::traffic_policy::{self as crd, TrafficPolicySpec};

pub fn policies(spec: &TrafficPolicySpec) -> Result<RequestPolicies, String> {
    let compression = spec.compression.as_ref().map(compression).transpose()?;
    let mut limits = RequestLimits::default();
    if let Some(l) = &spec.request_limits {
        limits.max_body_bytes = l.max_body_bytes.unwrap_or(0);
        limits.max_header_bytes = l.max_header_bytes.unwrap_or(0);
    }
    if let Some(t) = &spec.timeouts {
        let parse = |field: &str, v: &Option<String>| {
            v.as_ref()
                .map(|v| match duration(v) {
                    Ok(d) if !d.is_zero() => {
                        proto(d).ok_or_else(|| format!("timeouts.{field} {v:?}"))
                    }
                    Ok(_) => Err(format!("timeouts.{field} must be longer than 0")),
                    Err(e) => Err(format!("timeouts.{field} {v:?}: {e}")),
                })
                .transpose()
        };
        limits.request_timeout = parse("request", &t.request)?;
        limits.backend_request_timeout = parse("backendRequest", &t.backend_request)?;
    }
    let request_limits = (limits != RequestLimits::default()).then_some(limits);
    let access_log = spec.access_log.as_ref().map(access_log).transpose()?;
    if compression.is_none() && request_limits.is_none() && access_log.is_none() {
        return Err("sets nothing: give compression, requestLimits, timeouts or accessLog".into());
    }
    Ok(RequestPolicies {
        compression,
        request_limits,
        access_log,
        ..RequestPolicies::default()
    })
}

fn access_log(log: &crd::AccessLog) -> Result<AccessLogFormat, String> {
    use crd::AccessLogValue as V;
    if log.fields.is_empty() || log.fields.len() > 64 {
        return Err("accessLog.fields: 1 to 64 fields".into());
    }
    let mut names = std::collections::HashSet::new();
    let mut fields = Vec::new();
    for f in &log.fields {
        if f.name.is_empty() || !names.insert(f.name.as_str()) {
            return Err(format!(
                "accessLog field name {:?} empty or repeated",
                f.name
            ));
        }
        let source = match (&f.value, &f.request_header) {
            (Some(v), None) => access_log_field::Source::Value(match v {
                V::StartTime => AccessLogValue::StartTime,
                V::DurationMs => AccessLogValue::DurationMs,
                V::Listener => AccessLogValue::Listener,
                V::Client => AccessLogValue::Client,
                V::Method => AccessLogValue::Method,
                V::Authority => AccessLogValue::Authority,
                V::Path => AccessLogValue::Path,
                V::Protocol => AccessLogValue::Protocol,
                V::Status => AccessLogValue::Status,
                V::Route => AccessLogValue::Route,
                V::Cluster => AccessLogValue::Cluster,
                V::Upstream => AccessLogValue::Upstream,
                V::TraceId => AccessLogValue::TraceId,
                V::UserAgent => AccessLogValue::UserAgent,
            } as i32),
            (None, Some(h)) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                access_log_field::Source::RequestHeader(h.to_ascii_lowercase())
            }
            _ => {
                return Err(format!(
                    "accessLog field {:?}: one of value or a valid requestHeader",
                    f.name
                ));
            }
        };
        fields.push(AccessLogField {
            name: f.name.clone(),
            source: Some(source),
        });
    }
    Ok(AccessLogFormat { fields })
}

fn compression(c: &crd::Compression) -> Result<Compression, String> {
    for t in &c.content_types {
        let valid = t
            .split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !t.contains([' ', ';']));
        if !valid {
            return Err(format!(
                "compression.contentTypes {t:?}: type/subtype or type/*"
            ));
        }
    }
    let max_level = c.encodings.iter().map(|e| match e {
        crd::ContentEncoding::Gzip => 9,
        crd::ContentEncoding::Brotli => 11,
        crd::ContentEncoding::Zstd => 22,
    });
    let max_level = if c.encodings.is_empty() {
        9
    } else {
        max_level.min().unwrap_or(9)
    };
    if let Some(level) = c.level.filter(|l| !(1..=max_level).contains(l)) {
        return Err(format!(
            "compression.level {level}: 1 to {max_level} for these encodings"
        ));
    }
    Ok(Compression {
        encodings: c
            .encodings
            .iter()
            .map(|e| match e {
                crd::ContentEncoding::Gzip => ContentEncoding::Gzip as i32,
                crd::ContentEncoding::Brotli => ContentEncoding::Brotli as i32,
                crd::ContentEncoding::Zstd => ContentEncoding::Zstd as i32,
            })
            .collect(),
        min_bytes: c.min_content_length.unwrap_or(0),
        content_types: c
            .content_types
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .collect(),
        level: c.level.unwrap_or(0),
    })
}
