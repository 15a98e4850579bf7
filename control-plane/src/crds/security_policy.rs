//! `SecurityPolicy` (gateway.rauta.dev/v1alpha1): who may send requests, attached to a Gateway,
//! a listener, an HTTPRoute or GRPCRoute, or one of its rules (`targetRefs`), the most specific
//! attachment winning (see docs/policies.md). Today: API keys.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{PolicyStatus, PolicyTargetRef};

/// Most Secrets one policy's API keys may come from.
pub const MAX_CREDENTIAL_REFS: usize = 16;
/// Most API keys one policy may hold (every proxy keeps them all).
pub const MAX_API_KEYS: usize = 100_000;

/// How requests must authenticate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.rauta.dev",
    version = "v1alpha1",
    kind = "SecurityPolicy",
    plural = "securitypolicies",
    namespaced,
    status = "PolicyStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicySpec {
    /// What the policy applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Requests must carry one of these API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_auth: Option<ApiKeyAuth>,
}

/// API keys: a request carrying one of the keys passes, as the key's client; any other is
/// answered 401.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Secrets in the policy's namespace; each data entry is one client: the entry's name is
    /// the client's id, its value the client's key. A Secret that does not exist gives no key
    /// (its clients are refused; the policy's ResolvedRefs says so).
    #[schemars(length(min = 1, max = 16))]
    pub credential_refs: Vec<SecretRef>,
    /// Where a request carries its key; default: the `x-api-key` header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub extract_from: Vec<KeySource>,
    /// A request header the proxy sets to the client's id before forwarding (e.g.
    /// `x-client-id`); a client cannot set it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "forwardClientIDHeader")]
    pub forward_client_id_header: Option<String>,
    /// Forward the key to the backend too (default: the key is removed from the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_credentials: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct SecretRef {
    pub name: String,
}

/// Headers and query parameters a key is looked for in, in order.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeySource {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
}
