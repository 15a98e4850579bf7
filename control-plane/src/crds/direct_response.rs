//! `DirectResponse` (gateway.rauta.dev/v1alpha1): a fixed answer a route rule gives without a
//! backend, named by an HTTPRoute `ExtensionRef` filter. For health checks answered by the
//! gateway itself, `robots.txt`, `/.well-known/` files, maintenance pages.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest body a DirectResponse may carry: it travels in every snapshot of every proxy.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most headers a DirectResponse may set.
pub const MAX_HEADERS: usize = 16;

/// The answer.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.rauta.dev",
    version = "v1alpha1",
    kind = "DirectResponse",
    plural = "directresponses",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponseSpec {
    /// HTTP status code, 200 to 599.
    #[schemars(range(min = 200, max = 599))]
    pub status: i32,
    /// Content-Type of the body; default `text/plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The body, as UTF-8 text; at most 64 KiB. Empty: no body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 65536))]
    pub body: String,
    /// More response headers (not Content-Type, Content-Length or connection-level ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<DirectResponseHeader>,
}

/// One response header.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct DirectResponseHeader {
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}
