//! What the translator produces: per Gateway a resource set, and a status report.

use std::collections::BTreeMap;
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;

use super::status::StatusReport;
use crate::objects::ObjectRef;

/// Resources of one Gateway by type, then name. Shared: a resource a translation reuses from
/// the one before is the same allocation, which the snapshot recognises without comparing.
pub type ResourceSet = BTreeMap<ResourceType, BTreeMap<String, Arc<Payload>>>;

/// The translator's output.
#[derive(Debug, Default)]
pub struct Translation {
    /// One entry per Gateway of an accepted GatewayClass, even if it has no resources.
    pub gateways: BTreeMap<ObjectRef, ResourceSet>,
    pub status: StatusReport,
}
