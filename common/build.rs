//! Compiles proto/ with protox (pure Rust, no system protoc) and generates tonic/prost code.
//! The same descriptor set is written to OUT_DIR for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

/// Message fields generated as `Option<Box<_>>` (oneof variants: `Box<_>`). A route rule's
/// optional parts, mostly absent, would otherwise sit inline in every rule (736 bytes a rule
/// instead of about 300), in each proxy's store and in every snapshot the controller keeps; and
/// every resource would be as large as a Cluster (320 bytes instead of about 150), though most
/// are endpoints and route rules.
const BOXED: [&str; 13] = [
    ".rauta.v1.Resource.payload.cluster",
    ".rauta.v1.Resource.payload.listener",
    ".rauta.v1.RankedRule.rule",
    ".rauta.v1.RouteRule.request_headers",
    ".rauta.v1.RouteRule.response_headers",
    ".rauta.v1.RouteRule.url_rewrite",
    ".rauta.v1.RouteRule.cors",
    ".rauta.v1.RouteRule.retry",
    ".rauta.v1.RouteRule.session_persistence",
    ".rauta.v1.RouteRule.cache",
    ".rauta.v1.RouteRule.policies",
    ".rauta.v1.WeightedCluster.request_headers",
    ".rauta.v1.WeightedCluster.response_headers",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        "rauta/v1/resources.proto",
        "rauta/v1/discovery.proto",
        "rauta/v1/admin.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let fds = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("rauta_descriptor.bin"), fds.encode_to_vec())?;
    let mut generated = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true);
    for field in BOXED {
        generated = generated.boxed(field);
    }
    generated.compile_fds(fds.clone())?;
    // The controller's Discovery server, generated a second time with every type taken from the
    // module above except the response, which is the pre-encoded wire form (crate::wire). Only
    // the service is kept: messages and other services come from the first pass.
    let mut server_only = fds;
    for file in &mut server_only.file {
        file.message_type.clear();
        file.enum_type.clear();
        let is_discovery = file.name() == "rauta/v1/discovery.proto";
        file.service
            .retain(|s| is_discovery && s.name() == "Discovery");
    }
    let wire_dir = out_dir.join("wire");
    std::fs::create_dir_all(&wire_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&wire_dir)
        .extern_path(".rauta.v1", "crate::api::v1")
        .extern_path(
            ".rauta.v1.DeltaDiscoveryResponse",
            "crate::wire::EncodedDeltaResponse",
        )
        .compile_fds(server_only)?;
    // Envoy's external authorization API (a wire-compatible subset), which proxies call:
    // generated on its own so that it stays out of the controller's reflection.
    let ext_authz = "envoy/ext_authz.proto";
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join(ext_authz).display()
    );
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(protox::compile([ext_authz], [&proto_root])?)?;
    // OpenTelemetry's OTLP trace export (a wire-compatible subset), which proxies call.
    let otlp = "opentelemetry/trace_service.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(otlp).display());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(protox::compile([otlp], [&proto_root])?)?;
    Ok(())
}
