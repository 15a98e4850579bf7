//! Golden tests: every `testdata/<case>.in.yaml` (Gateway API manifests, as a directory source
//! reads them) is translated, and the resources and status are compared with
//! `testdata/<case>.out.yaml`. `REGENERATE_GOLDEN=1 cargo test -p rauta-controller golden`
//! rewrites the outputs from the current behaviour; review the diff before committing it.
//!
//! Outputs are deterministic: resources and status are kept in sorted maps, and resources
//! are rendered through the descriptor set (proto3 JSON, default fields left out). Private
//! keys are redacted (the inputs hold test-only fake keys anyway).

use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;
use serde_json::{Map, Value, json};

use super::status::StatusReport;
use super::{DEFAULT_CONTROLLER_NAME, Translation, translate};
use crate::source::parse_manifests;

const REGENERATE: &str = "REGENERATE_GOLDEN";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translator/testdata")
}

/// A resource payload as proto3 JSON.
fn payload_json(pool: &DescriptorPool, payload: &Payload) -> Value {
    let (name, bytes) = match payload {
        Payload::Listener(m) => ("rauta.v1.Listener", m.encode_to_vec()),
        Payload::RouteTable(m) => ("rauta.v1.RouteTable", m.encode_to_vec()),
        Payload::Cluster(m) => ("rauta.v1.Cluster", m.encode_to_vec()),
        Payload::Endpoints(m) => ("rauta.v1.ClusterEndpoints", m.encode_to_vec()),
        Payload::L4RouteTable(m) => ("rauta.v1.L4RouteTable", m.encode_to_vec()),
        Payload::RouteRules(m) => ("rauta.v1.RouteRules", m.encode_to_vec()),
    };
    let descriptor = pool
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in the descriptor set"));
    let message = DynamicMessage::decode(descriptor, bytes.as_slice())
        .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut out, &SerializeOptions::new())
        .unwrap_or_else(|e| panic!("{name} does not serialize: {e}"));
    serde_json::from_slice(&out.into_inner()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Adds `extra`'s fields to each object of `map` (status fields the writers skip: the
/// generation they observe, the addresses they complete).
fn add_fields<'a, T: 'a>(
    map: &mut Value,
    entries: impl IntoIterator<Item = (&'a crate::objects::ObjectRef, &'a T)>,
    extra: impl Fn(&T) -> Value,
) {
    for (key, entry) in entries {
        if let (Some(Value::Object(object)), Value::Object(fields)) =
            (map.get_mut(key.to_string()), extra(entry))
        {
            object.extend(fields);
        }
    }
}

fn status_json(report: &StatusReport) -> Value {
    let mut v = serde_json::to_value(report).expect("status serializes");
    let generation = |g: i64| json!({ "generation": g });
    add_fields(&mut v["gatewayClasses"], &report.gateway_classes, |s| {
        generation(s.generation)
    });
    add_fields(&mut v["gateways"], &report.gateways, |s| {
        json!({
            "generation": s.generation,
            "requestedAddresses": s.requested_addresses,
            "serviceAddresses": s.service_addresses,
        })
    });
    for (field, routes) in [
        ("httpRoutes", &report.http_routes),
        ("tlsRoutes", &report.tls_routes),
        ("grpcRoutes", &report.grpc_routes),
        ("tcpRoutes", &report.tcp_routes),
        ("udpRoutes", &report.udp_routes),
    ] {
        // Kinds without any status are left out (not rendered as null).
        if v.get(field).is_none() {
            continue;
        }
        add_fields(&mut v[field], routes, |s| generation(s.generation));
    }
    add_fields(
        &mut v["backendTlsPolicies"],
        &report.backend_tls_policies,
        |s| generation(s.generation),
    );
    if v.get("rateLimitPolicies").is_some() {
        add_fields(
            &mut v["rateLimitPolicies"],
            &report.rate_limit_policies,
            |s| generation(s.generation),
        );
    }
    add_fields(&mut v["listenerSets"], &report.listener_sets, |s| {
        generation(s.generation)
    });
    v
}

/// Replaces every private key in `v` with a marker.
fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "privateKeyPem" && value.is_string() {
                    *value = Value::String(rauta_common::redact::REDACTED.to_owned());
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn render(translation: &Translation) -> String {
    let pool = DescriptorPool::decode(rauta_common::api::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut gateways = Map::new();
    for (key, resources) in &translation.gateways {
        let mut types = Map::new();
        for (resource_type, by_name) in resources {
            let named: Map<String, Value> = by_name
                .iter()
                .map(|(name, payload)| (name.clone(), payload_json(&pool, payload)))
                .collect();
            types.insert(resource_type.short_name().to_owned(), Value::Object(named));
        }
        // The rule order the proxies assemble from the route tables and their RouteRules, by
        // table and domain: the precedence keys are bytes; this is what they mean.
        let order: Map<String, Value> = resources
            .get(&ResourceType::RouteTable)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter_map(|name| {
                let table = super::route_rules::assembled_table(resources, name)?;
                let vhosts: Map<String, Value> = table
                    .virtual_hosts
                    .iter()
                    .map(|v| {
                        let rules = v.rules.iter().map(|r| json!(r.name)).collect();
                        (v.name.clone(), Value::Array(rules))
                    })
                    .collect();
                Some((name.clone(), Value::Object(vhosts)))
            })
            .collect();
        if !order.is_empty() {
            types.insert("assembled_rule_order".to_owned(), Value::Object(order));
        }
        gateways.insert(key.to_string(), Value::Object(types));
    }
    let mut out = json!({
        "gateways": gateways,
        "status": status_json(&translation.status),
    });
    redact(&mut out);
    let yaml = serde_saphyr::to_string(&out).expect("YAML renders");
    format!("# Generated from the .in.yaml of the same name; {REGENERATE}=1 rewrites it.\n{yaml}")
}

#[test]
fn translator_goldens() {
    let regenerate = std::env::var_os(REGENERATE).is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("testdata directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no golden inputs in {:?}", testdata());
    let mut failures = Vec::new();
    for input in inputs {
        let text = std::fs::read_to_string(&input).expect("readable input");
        let (objects, problems) = parse_manifests(&text);
        assert!(problems.is_empty(), "{}: {problems:?}", input.display());
        let got = render(&translate(&objects, DEFAULT_CONTROLLER_NAME));
        let output = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.yaml"));
        if regenerate {
            std::fs::write(&output, &got).expect("writable output");
            continue;
        }
        match std::fs::read_to_string(&output) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{} differs from the translation:\n{}",
                output.display(),
                first_difference(&want, &got)
            )),
            Err(e) => failures.push(format!("{}: {e}", output.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with {REGENERATE}=1 to rewrite the outputs, then review the diff)",
        failures.join("\n")
    );
}

/// The first differing line, with its number, for a readable failure.
fn first_difference(want: &str, got: &str) -> String {
    let mut want_lines = want.lines();
    let mut got_lines = got.lines();
    for n in 1.. {
        match (want_lines.next(), got_lines.next()) {
            (Some(w), Some(g)) if w == g => {}
            (None, None) => break,
            (w, g) => {
                return format!(
                    "line {n}:\n  want: {}\n  got:  {}",
                    w.unwrap_or("<end>"),
                    g.unwrap_or("<end>")
                );
            }
        }
    }
    "only in line endings".to_owned()
}
