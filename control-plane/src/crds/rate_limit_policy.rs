//! `RateLimitPolicy` (gateway.rauta.dev/v1alpha1): how often requests may pass, attached to a
//! Gateway, a listener, an HTTPRoute or GRPCRoute, or one of its rules (`targetRefs`), or named
//! by a rule's `ExtensionRef` filter. The most specific attachment wins (see docs/policies.md).
//! `local` limits are counted by each proxy on its own, `global` ones by the fleet in Redis.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{PolicyStatus, PolicyTargetRef};

/// Most limits one policy may set.
pub const MAX_LIMITS: usize = 8;
/// Default `maxKeys`.
pub const DEFAULT_MAX_KEYS: u32 = 100_000;
/// Largest `maxKeys`: each key costs a proxy about 50 bytes.
pub const LIMIT_MAX_KEYS: u32 = 10_000_000;

/// The limits, and what they apply to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.rauta.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    namespaced,
    status = "PolicyStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// What the policy applies to. Empty for a policy only named by ExtensionRef filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Limits each proxy counts on its own: with N proxies, a client may get up to N times
    /// the limit through the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRateLimit>,
    /// Limits counted across every proxy of the fleet, in the Redis server the proxies are
    /// given (`rauta-proxy --rate-limit-redis`), in fixed windows of the limit's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRateLimit>,
}

/// Limits counted by the whole fleet together.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GlobalRateLimit {
    /// Every limit applies; a request over any of them is refused (429). `burst` does not
    /// apply: each unit of time is a window of `requests`.
    #[schemars(length(min = 1, max = 8))]
    pub limits: Vec<RateLimit>,
    /// When Redis does not answer (or a proxy has no --rate-limit-redis): `Open` (default)
    /// lets requests through, `Closed` answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, Default, PartialEq, Eq)]
pub enum FailureMode {
    #[default]
    Open,
    Closed,
}

/// Limits counted in each proxy.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalRateLimit {
    /// Every limit applies; a request over any of them is refused (429).
    #[schemars(length(min = 1, max = 8))]
    pub limits: Vec<RateLimit>,
}

/// `requests` per `unit`, with bursts of up to `burst` requests, counted per key.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests allowed per unit of time, spread evenly (one every unit/requests).
    #[schemars(range(min = 1, max = 1000000000))]
    pub requests: u32,
    /// `Second`, `Minute` or `Hour`.
    pub unit: RateLimitUnit,
    /// Requests that may come at once after a quiet spell; default `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub burst: Option<u32>,
    /// What requests are counted together. Empty: all requests the policy applies to, on
    /// one count per proxy (for a Gateway: all its routes together).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub key: Vec<RateLimitKey>,
    /// Most keys counted at once per proxy (default 100000); over it, the keys whose count
    /// has run out longest ago are forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_keys: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, Default, PartialEq, Eq)]
pub enum RateLimitUnit {
    #[default]
    Second,
    Minute,
    Hour,
}

/// A part of a limit's key.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitKey {
    /// `ClientAddress` (the connection's peer address), `Header` (a request header's value;
    /// a request without the header is not counted by this limit), or `Route` (each route
    /// counted on its own, for a policy attached to a Gateway).
    #[serde(rename = "type")]
    pub type_: RateLimitKeyType,
    /// The header's name, for `Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, Default, PartialEq, Eq)]
pub enum RateLimitKeyType {
    #[default]
    ClientAddress,
    Header,
    Route,
}
