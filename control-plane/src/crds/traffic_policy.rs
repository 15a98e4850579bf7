//! `TrafficPolicy` (gateway.rauta.dev/v1alpha1): how requests and responses are handled on
//! their way through, attached to a Gateway, a listener, an HTTPRoute or GRPCRoute, or one of
//! its rules, as RateLimitPolicy and SecurityPolicy are (the most specific attachment wins,
//! concern by concern): response compression, per-route request limits, default timeouts.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{PolicyStatus, PolicyTargetRef};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.rauta.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    plural = "trafficpolicies",
    namespaced,
    status = "PolicyStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// What the policy applies to.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_limits: Option<RequestLimits>,
    /// Timeouts for routes that set none of their own (HTTPRoute `timeouts` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// The access log line's fields, when proxies write one (`rauta-proxy --access-log
    /// json`). Usually set on a Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
}

/// A JSON line with these fields, in this order.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    #[schemars(length(min = 1, max = 64))]
    pub fields: Vec<AccessLogField>,
}

/// One field: `value` or `requestHeader`.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessLogField {
    /// The key in the JSON line.
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<AccessLogValue>,
    /// A request header's first value, as the client sent it (null when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AccessLogValue {
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
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
pub enum ContentEncoding {
    Gzip,
    Brotli,
    Zstd,
}

/// Responses compressed for clients that accept it (Accept-Encoding), never twice, never
/// with Cache-Control: no-transform, never for event streams.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// Codings offered, by preference; a client's q-values come first. Default [Gzip].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encodings: Vec<ContentEncoding>,
    /// Responses with a smaller Content-Length are sent as they are. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_content_length: Option<u32>,
    /// Media types compressed (`type/subtype`, or `type/*`). Default: text, JSON, XML,
    /// JavaScript, CSS, SVG and WebAssembly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// 1 (fastest, the default, as nginx's gzip_comp_level) to 9 for gzip, 11 for brotli, 22
    /// for zstd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 22))]
    pub level: Option<u32>,
}

/// Limits on top of the proxy's own (its flags), per route.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestLimits {
    /// Largest request body in bytes; larger ones get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: Option<u64>,
    /// Largest request head (request line and fields) in bytes; larger ones get 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_header_bytes: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole exchange, retries included (as HTTPRoute timeouts.request), e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Each attempt upstream (as HTTPRoute timeouts.backendRequest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}
