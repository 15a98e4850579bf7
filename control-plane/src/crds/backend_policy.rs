//! `BackendPolicy` (gateway.rauta.dev/v1alpha1): how proxies treat the endpoints of a Service:
//! load balancing, connection settings, outlier detection (passive health), active health
//! checks, circuit-breaker limits and the panic threshold. It targets Services (optionally one
//! port, by its name), not routes: health is a property of endpoints, shared by every route
//! that reaches them. It replaces the `rauta.dev/*` Service annotations, which still work;
//! a field the policy sets wins over the annotation.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::PolicyStatus;

/// The endpoints' settings, and the Services they apply to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.rauta.dev",
    version = "v1alpha1",
    kind = "BackendPolicy",
    plural = "backendpolicies",
    namespaced,
    status = "PolicyStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicySpec {
    /// The Services (in the policy's namespace) whose endpoints this applies to. A policy
    /// naming a port (`sectionName`) wins over one for the whole Service; among equals the
    /// oldest wins.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<ServiceTargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Time allowed to connect (TCP and TLS) to an endpoint, e.g. `2s`. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// An idle pooled connection older than this is closed, e.g. `60s`. Default 90s; keep it
    /// below the backend's own keep-alive timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// When fewer than this percentage of the endpoints are healthy, requests spread over all
    /// of them rather than overload the few. Default 50; 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub panic_threshold: Option<u32>,
}

/// A Service, or one of its ports by name.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTargetRef {
    /// `""` (the core group).
    #[serde(default)]
    pub group: String,
    /// `Service`.
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The name of one of the Service's ports; absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, Default, PartialEq, Eq)]
pub enum LoadBalancerType {
    /// Consistent hashing (on `hashOn`, else the client address): a key keeps its endpoint.
    #[default]
    Maglev,
    RoundRobin,
    /// The less busy of two endpoints drawn at random.
    LeastRequest,
    Random,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(rename = "type", default)]
    pub type_: LoadBalancerType,
    /// What Maglev hashes; absent: the client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

/// One of `header` or `cookie`.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HashOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// Passive health: endpoints that keep failing requests are ejected for a while.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures (5xx, connect errors, resets, timeouts) that eject an endpoint.
    /// Default 5; 0 turns outlier detection off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// First ejection period; each further ejection lasts longer. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, in percent. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Active health: every proxy probes every endpoint, one probe per endpoint and interval
/// however many routes use the Service. Exactly one of `http`, `tcp` or `grpc`.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Time between probes, e.g. `1s`. Default 5s; at least 100ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Time a probe may take. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Up to this much is added to each interval at random. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// Consecutive passed probes that make an endpoint healthy again. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failed probes that make an endpoint unhealthy. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

/// A GET that passes on an expected status.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// e.g. `/healthz`.
    pub path: String,
    /// Host header sent; default the endpoint's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that pass: single codes (`200`) or ranges (`200-399`). Default 200-299.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<String>,
}

/// A probe that passes when the TCP connection (and TLS handshake, with a
/// BackendTLSPolicy) succeeds.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct TcpHealthCheck {}

/// grpc.health.v1.Health/Check, passing on SERVING.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcHealthCheck {
    /// The service asked about; default the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// :authority sent; default the endpoint's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Limits per proxy. A request over one gets 503 naming the limit (body and the
/// `x-rauta-overflow` header). Unset: no limit.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Connections open to one endpoint. Requests never queue for a connection, so this also
    /// bounds HTTP/1.1 requests in flight per endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections_per_endpoint: Option<u32>,
    /// Requests in flight to the Service's endpoints together, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u32>,
    /// Requests in flight to one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests_per_endpoint: Option<u32>,
    /// Retries in flight; a retry over it is not sent (the failed answer goes back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_retries: Option<u32>,
}
