//! Status the translator computes for each object, independent of where it is written
//! (Kubernetes status subresource, or files and the admin service in standalone mode).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::objects::ObjectRef;

/// A Kubernetes-style condition, without lastTransitionTime (the writer stamps that when
/// status or reason change, so translation stays a pure function).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
}

impl Condition {
    pub fn new(
        type_: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
        generation: i64,
    ) -> Self {
        Condition {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: generation,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }

    /// Whether the condition reports a problem. Most types are good when True; a few
    /// (Conflicted, OverlappingTLSConfig) are good when False.
    pub fn is_problem(&self) -> bool {
        match self.type_.as_str() {
            "Conflicted" | "OverlappingTLSConfig" => self.is_true(),
            _ => !self.is_true(),
        }
    }
}

/// Replaces the condition of the same type, or appends it.
pub fn set_condition(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    #[serde(skip)]
    pub generation: i64,
    pub conditions: Vec<Condition>,
    pub supported_features: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: i32,
    pub supported_kinds: Vec<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(skip)]
    pub generation: i64,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
    /// ListenerSets the Gateway accepted.
    pub attached_listener_sets: i32,
    /// spec.addresses with a value, as (type, value): status may list only these, and the
    /// Gateway is programmed only when its proxies serve every one (checked where the proxies
    /// are known, not here).
    #[serde(skip)]
    pub requested_addresses: Vec<(String, String)>,
    /// The addresses of the Gateway's Service (`addresses::of_services`); when there are
    /// any, status lists them instead of the addresses its proxies report.
    #[serde(skip)]
    pub service_addresses: Vec<String>,
}

/// A ListenerSet's status: like a Gateway's, for the listeners it adds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListenerSetStatus {
    #[serde(skip)]
    pub generation: i64,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

/// The parentRef a route status entry is about, as the route wrote it (defaults made explicit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    #[serde(skip)]
    pub generation: i64,
    pub parents: Vec<RouteParentStatus>,
}

/// A policy's status: one entry per ancestor (a Gateway), shaped like a route's parent entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    #[serde(skip)]
    pub generation: i64,
    pub ancestors: Vec<RouteParentStatus>,
}

/// Status of every object the translator looked at and owns. A route's status is shared: a
/// translation that attaches a route as the one before hands on the same allocation, which
/// every comparison of reports then recognises by address (`Arc`'s equality does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub gateway_classes: BTreeMap<ObjectRef, GatewayClassStatus>,
    pub gateways: BTreeMap<ObjectRef, GatewayStatus>,
    pub http_routes: BTreeMap<ObjectRef, Arc<RouteStatus>>,
    pub backend_tls_policies: BTreeMap<ObjectRef, PolicyStatus>,
    pub listener_sets: BTreeMap<ObjectRef, ListenerSetStatus>,
    pub tls_routes: BTreeMap<ObjectRef, Arc<RouteStatus>>,
    pub grpc_routes: BTreeMap<ObjectRef, Arc<RouteStatus>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tcp_routes: BTreeMap<ObjectRef, Arc<RouteStatus>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub udp_routes: BTreeMap<ObjectRef, Arc<RouteStatus>>,
    /// Services used by a route whose `rauta.dev/*` annotations could not all be used, and why
    /// (the defaults apply instead).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<ObjectRef, Vec<String>>,
    /// RAUTA's attached policies (`policies.rs`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limit_policies: BTreeMap<ObjectRef, PolicyStatus>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub security_policies: BTreeMap<ObjectRef, PolicyStatus>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_policies: BTreeMap<ObjectRef, PolicyStatus>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic_policies: BTreeMap<ObjectRef, PolicyStatus>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub x_backend_traffic_policies: BTreeMap<ObjectRef, PolicyStatus>,
}

impl StatusReport {
    /// Each policy kind's statuses, by kind name, always in this order.
    pub fn policies(&self) -> [(&'static str, &BTreeMap<ObjectRef, PolicyStatus>); 6] {
        [
            ("BackendTLSPolicy", &self.backend_tls_policies),
            ("RateLimitPolicy", &self.rate_limit_policies),
            ("SecurityPolicy", &self.security_policies),
            ("BackendPolicy", &self.backend_policies),
            ("TrafficPolicy", &self.traffic_policies),
            ("XBackendTrafficPolicy", &self.x_backend_traffic_policies),
        ]
    }
}

impl serde::Serialize for ObjectRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The generation a condition observes: the object's `metadata.generation` (0 when unset, as
/// in a directory of YAML).
pub fn generation_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.generation.unwrap_or(0)
}
