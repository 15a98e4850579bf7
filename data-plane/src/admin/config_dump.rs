//! `/config_dump` on the admin port: the configuration this proxy serves right now, as JSON
//! (the resources as last applied, private keys redacted) and the live state of every
//! endpoint (usable or why not, health checks, requests in flight, open connections) and the XDP fast path's answers,
//! for a person debugging routing.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use rauta_common::api::FILE_DESCRIPTOR_SET;
use rauta_common::redact::redacted;
use rauta_common::types::ResourceType;
use serde_json::{Map, Value, json};

use crate::kernel::KernelPath;
use crate::shared::Shared;

fn resource_descriptor() -> Option<&'static MessageDescriptor> {
    static DESCRIPTOR: OnceLock<Option<MessageDescriptor>> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            DescriptorPool::decode(FILE_DESCRIPTOR_SET)
                .ok()?
                .get_message_by_name("rauta.v1.Resource")
        })
        .as_ref()
}

/// The dump, as JSON text.
pub fn render(shared: &Shared, kernel: Option<&KernelPath>) -> Vec<u8> {
    let store = shared.config.load();
    let mut versions = Map::new();
    let mut resources = Map::new();
    for ty in ResourceType::ALL {
        if let Some(v) = store.version(ty) {
            versions.insert(ty.short_name().into(), Value::String(v.to_owned()));
        }
        let items: Vec<Value> = store
            .resources(ty)
            .map(|r| {
                let bytes = redacted(r).encode_to_vec();
                resource_descriptor()
                    .and_then(|d| DynamicMessage::decode(d.clone(), bytes.as_slice()).ok())
                    .and_then(|m| serde_json::to_value(&m).ok())
                    .unwrap_or_else(|| json!({ "name": r.name, "version": r.version }))
            })
            .collect();
        resources.insert(ty.short_name().into(), Value::Array(items));
    }
    let state = shared.state.load();
    let endpoints: Vec<Value> = state
        .clusters()
        .flat_map(|(name, cluster)| {
            cluster
                .endpoints()
                .iter()
                .map(move |e| super::endpoints::endpoint_state(name, cluster, e))
        })
        .collect();
    // The rule order the route tables were assembled into (a table's own rules, then its
    // routes' RouteRules by precedence key): what a request is matched against, in order.
    let mut routing: Vec<(&str, Value)> = state
        .route_tables()
        .map(|(listener, table)| {
            let vhosts: Map<String, Value> = table
                .virtual_hosts()
                .iter()
                .map(|v| {
                    let rules = v.rules().iter().map(|r| json!(&*r.name)).collect();
                    (v.name.to_string(), Value::Array(rules))
                })
                .collect();
            (listener, Value::Object(vhosts))
        })
        .collect();
    routing.sort_by(|a, b| a.0.cmp(b.0));
    let routing: Map<String, Value> = routing
        .into_iter()
        .map(|(l, v)| (l.to_owned(), v))
        .collect();
    let dump = json!({
        "ready": shared.is_ready(),
        "draining": shared.is_draining(),
        "stale": shared.stale().map(|detail| detail.to_string()),
        "versions": versions,
        "resources": resources,
        "endpoints": endpoints,
        "routing": routing,
        "kernel": kernel.map(KernelPath::dump),
    });
    let mut out = serde_json::to_vec_pretty(&dump).unwrap_or_default();
    out.push(b'\n');
    out
}
