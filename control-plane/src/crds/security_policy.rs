//! `SecurityPolicy` (gateway.rauta.dev/v1alpha1): who may send requests, attached to a Gateway,
//! a listener, an HTTPRoute or GRPCRoute, or one of its rules (`targetRefs`), the most specific
//! attachment winning (see docs/policies.md). Today: API keys and JSON Web Tokens.

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
    /// Requests must carry a JSON Web Token one of these providers verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    /// Requests must carry the name and password of one of these users (HTTP Basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Who may send which requests, checked after authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Ask an HTTP authorization service about each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_auth: Option<ExtAuth>,
}

/// External authorization ("forward auth"): each request is first sent, without its body, to
/// an HTTP service; a 2xx answer lets it through, any other goes back to the client.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuth {
    /// Forward auth: the service answers a copy of the request. Exactly one of `http` and
    /// `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpExtAuth>,
    /// The service speaks Envoy's gRPC `envoy.service.auth.v3.Authorization` (OPA-Envoy,
    /// Authorino, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcExtAuth>,
    /// Request headers sent to the service: for `http`, besides Host and X-Forwarded-Method,
    /// -Proto, -Host, -Uri and -For (default: Authorization and Cookie); for `grpc`, in the
    /// CheckRequest (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_to_ext_auth: Option<Vec<String>>,
    /// Without an answer in time: let the request through (default false: 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_open: Option<bool>,
    /// Longest wait for the service (a Gateway API duration; default 2s, at most 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub timeout: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpExtAuth {
    /// The service: a Service port (in another namespace only with a ReferenceGrant).
    pub backend_ref: ExtAuthBackendRef,
    /// Prepended to the request's path (e.g. `/verify` asks `/verify/orders?id=1` for
    /// `/orders?id=1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Headers of a 2xx answer set on the request before forwarding (e.g. `x-user`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers_to_backend: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcExtAuth {
    /// The service: a Service port speaking gRPC (HTTP/2 without TLS).
    pub backend_ref: ExtAuthBackendRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthBackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub port: i32,
}

/// Allow and deny rules: the first rule that matches a request decides; none matching,
/// `defaultAction` does. A denied request is answered 403.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// `Allow` or `Deny` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<AuthorizationRule>,
    /// How the client's address is found; default: the connection's peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "clientIPDetection")]
    pub client_ip_detection: Option<ClientIpDetection>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_forwarded_for: Option<XForwardedFor>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct XForwardedFor {
    /// The proxies in front of the gateway that each append the address they saw to
    /// X-Forwarded-For: the client is the address this many places from the right (a header
    /// with fewer addresses: the connection's peer). Addresses further left are the client's
    /// own say-so and are never used.
    #[schemars(range(min = 0, max = 16))]
    pub num_trusted_hops: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// For metrics; unique within the policy (default: `rule-<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Allow` or `Deny`.
    pub action: String,
    /// Who: every condition set must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    /// What: every condition set must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// The client's address is in one of these ("10.0.0.0/8", "2001:db8::/32").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(rename = "clientCIDRs")]
    #[schemars(length(max = 64))]
    pub client_cidrs: Vec<String>,
    /// The request's verified JWT (see `jwt`) has these claims and scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtPrincipal>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtPrincipal {
    /// Each with one of its values (nested claims named with dots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: Vec<RequiredClaim>,
    /// Every one of these in the token's `scope` or `scp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub scopes: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The request's method is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub methods: Vec<String>,
    /// The request's path is one of these or under it, by whole segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub paths: Vec<String>,
}

/// HTTP Basic authentication: a request with the name and password of a user passes as that
/// user; any other is answered 401 with a `WWW-Authenticate: Basic` challenge.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// A Secret in the policy's namespace whose `.htpasswd` entry (or only entry) is an
    /// htpasswd file: `name:hash` lines, bcrypt (`htpasswd -B`) or SHA-1 (`htpasswd -s`). A
    /// Secret that does not exist gives no user (every request is refused; ResolvedRefs says
    /// so).
    pub users: SecretRef,
    /// A request header the proxy sets to the user's name before forwarding (a client's own
    /// value is replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_username_header: Option<String>,
    /// Forward the Authorization header to the backend too (default: removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_credentials: Option<bool>,
}

/// JSON Web Tokens: a request with a token one of the providers verifies passes; any other
/// is answered 401 with a `WWW-Authenticate: Bearer` challenge.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Jwt {
    /// Tried in order: the first that finds a token where it looks decides.
    #[schemars(length(min = 1, max = 4))]
    pub providers: Vec<JwtProvider>,
    /// Let requests without any token through, unauthenticated (a token that is there must
    /// still be valid). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// Unique within the policy; shown in metrics.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The `iss` claim tokens must have; unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The `aud` claim must name one of these; empty: not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub audiences: Vec<String>,
    /// A JWK Set each proxy fetches. Exactly one of `remoteJWKS` and `localJWKS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "remoteJWKS")]
    pub remote_jwks: Option<RemoteJwks>,
    /// A JWK Set given here or in a ConfigMap or Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "localJWKS")]
    pub local_jwks: Option<LocalJwks>,
    /// Where tokens are looked for; default: the Authorization header, after "Bearer ".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract_from: Option<JwtExtractFrom>,
    /// Claims copied into request headers (a client's own values of those headers are
    /// removed). A rate limit keyed by such a header counts per claim value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claim_to_headers: Vec<ClaimToHeader>,
    /// Claims tokens must have, each with one of its values (any value when `values` is
    /// empty). Nested claims are named with dots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub required_claims: Vec<RequiredClaim>,
    /// Forward the token to the backend too (default: removed from the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_token: Option<bool>,
    /// Clock skew allowed for `exp` and `nbf` (a Gateway API duration; default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub clock_skew: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// http or https (checked against the Web PKI roots); e.g. a Service's cluster DNS name.
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
    /// How often each proxy fetches the keys again (default 5m, at least 1s). A fetch that
    /// fails keeps the last good keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub cache_duration: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalJwks {
    /// `Inline` (the default when `inline` is set) or `ValueRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// The JWK Set document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// A ConfigMap or Secret in the policy's namespace whose `jwks` entry (or only entry) is
    /// the JWK Set document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_ref: Option<LocalObjectRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// "" (core).
    #[serde(default)]
    pub group: String,
    /// ConfigMap or Secret.
    pub kind: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtExtractFrom {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub headers: Vec<JwtHeaderSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub cookies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub params: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeaderSource {
    pub name: String,
    /// Text before the token, e.g. "Bearer " (compared without regard to case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_prefix: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct RequiredClaim {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub values: Vec<String>,
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
