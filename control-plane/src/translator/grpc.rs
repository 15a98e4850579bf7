//! GRPCRoute rules as HTTPRoute rules: gRPC calls are HTTP/2 POSTs to `/<service>/<method>`,
//! so a method match is a path match (exact, prefix or regular expression) and everything else
//! (header matches, header and mirror filters, backendRefs) has the same shape. Backends of
//! GRPCRoutes are reached over HTTP/2 (see `backends::Referrer`).
//!
//! The generated filter and backendRef types of the two kinds are distinct structs of the same
//! JSON shape, so the rules go through their JSON form; a rule that does not read back is the
//! route's problem, reported in its status (`route_view.rs`).

use gateway_api::experimental::httproutes::HttpRouteRules;
use gateway_api::grpcroutes::GrpcRoute;
use serde_json::{Value, json};

/// Any one path segment: a service or method name left open.
const ANY_SEGMENT: &str = "[^/]+";

/// The path match for a GRPCRoute method match (`None`: every method of every service).
pub fn path_match(method: &Value) -> Option<Value> {
    let service = method.get("service").and_then(Value::as_str);
    let name = method.get("method").and_then(Value::as_str);
    let regex = method.get("type").and_then(Value::as_str) == Some("RegularExpression");
    if regex {
        let part = |p: Option<&str>| format!("(?:{})", p.unwrap_or(ANY_SEGMENT));
        return Some(json!({
            "type": "RegularExpression",
            "value": format!("/{}/{}", part(service), part(name)),
        }));
    }
    match (service, name) {
        (Some(s), Some(m)) => Some(json!({"type": "Exact", "value": format!("/{s}/{m}")})),
        (Some(s), None) => Some(json!({"type": "PathPrefix", "value": format!("/{s}")})),
        (None, Some(m)) => Some(json!({
            "type": "RegularExpression",
            "value": format!("/{ANY_SEGMENT}/{}", regex::escape(m)),
        })),
        (None, None) => None,
    }
}

/// Why a GRPCRoute's rules cannot be served as HTTP rules.
#[derive(Debug, thiserror::Error)]
#[error("GRPCRoute rules cannot be read as HTTP rules: {0}")]
pub struct GrpcRulesError(#[from] serde_json::Error);

/// The HTTPRoute rules a GRPCRoute's rules are served as.
pub fn as_http_rules(route: &GrpcRoute) -> Result<Vec<HttpRouteRules>, GrpcRulesError> {
    let rules = serde_json::to_value(&route.spec.rules)?;
    let rules: Vec<Value> = rules
        .as_array()
        .map(|rules| rules.iter().map(rule).collect())
        .unwrap_or_default();
    Ok(serde_json::from_value(Value::Array(rules))?)
}

fn rule(rule: &Value) -> Value {
    let matches: Option<Vec<Value>> = rule.get("matches").and_then(Value::as_array).map(|ms| {
        ms.iter()
            .map(|m| {
                let mut out = serde_json::Map::new();
                if let Some(path) = m.get("method").and_then(path_match) {
                    out.insert("path".into(), path);
                }
                if let Some(headers) = m.get("headers") {
                    out.insert("headers".into(), headers.clone());
                }
                Value::Object(out)
            })
            .collect()
    });
    let mut out = serde_json::Map::new();
    for field in ["name", "filters", "backendRefs"] {
        if let Some(v) = rule.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(matches) = matches {
        out.insert("matches".into(), Value::Array(matches));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_matches_become_path_matches() {
        let p = |v: Value| path_match(&v);
        assert_eq!(
            p(json!({"service": "pkg.Echo", "method": "Say"})),
            Some(json!({"type": "Exact", "value": "/pkg.Echo/Say"}))
        );
        assert_eq!(
            p(json!({"type": "Exact", "service": "pkg.Echo"})),
            Some(json!({"type": "PathPrefix", "value": "/pkg.Echo"}))
        );
        assert_eq!(
            p(json!({"method": "Say.Hi"})),
            Some(json!({"type": "RegularExpression", "value": "/[^/]+/Say\\.Hi"}))
        );
        assert_eq!(
            p(json!({"type": "RegularExpression", "service": "pkg\\..*"})),
            Some(json!({"type": "RegularExpression", "value": "/(?:pkg\\..*)/(?:[^/]+)"}))
        );
        assert_eq!(p(json!({})), None);
    }
}
