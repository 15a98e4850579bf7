//! `ResponseCache` (gateway.rauta.dev/v1alpha1): keep a backend's cacheable answers to a route
//! rule and serve them without asking the backend again, as a shared cache (RFC 9111). Named by
//! an HTTPRoute `ExtensionRef` filter. The backend stays in charge: only answers it marks
//! cacheable are kept, never longer than it allows nor than `maxTTL`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default `maxBodyBytes`.
pub const DEFAULT_MAX_BODY_BYTES: u32 = 64 * 1024;
/// Largest `maxBodyBytes`: entries live in every proxy's memory, and a client choosing query
/// strings can fill a rule's `maxEntries` (the worst case is their product, per rule).
pub const LIMIT_MAX_BODY_BYTES: u32 = 1024 * 1024;
/// Largest `maxEntries`.
pub const LIMIT_MAX_ENTRIES: u32 = 100_000;
/// Default `maxEntries`.
pub const DEFAULT_MAX_ENTRIES: u32 = 1000;

/// What may be cached, and for how long at most.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.rauta.dev",
    version = "v1alpha1",
    kind = "ResponseCache",
    plural = "responsecaches",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ResponseCacheSpec {
    /// Longest time an answer is kept, whatever freshness the backend gives it (a Gateway API
    /// duration such as "30s", "5m", "1h").
    #[serde(rename = "maxTTL")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub max_ttl: String,
    /// Largest body kept, in bytes (default 65536, at most 1 MiB); larger answers pass through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_body_bytes: Option<u32>,
    /// Statuses that may be kept, 200 to 599 but not 206 or 304 (default: 200 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub statuses: Vec<i32>,
    /// Most answers kept per rule (distinct host, path and query, method); the least recently
    /// used goes first. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_entries: Option<u32>,
}
