//! Generated protobuf and gRPC code for package `rauta.v1` (see proto/).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("rauta.v1");
}

/// Envoy's `envoy.service.auth.v3` external authorization API, the subset proxies use
/// (proto/envoy/ext_authz.proto).
#[allow(clippy::all, missing_docs)]
pub mod ext_authz {
    tonic::include_proto!("envoy.service.auth.v3");
}

/// OpenTelemetry's OTLP trace export service, the subset proxies send
/// (proto/opentelemetry/trace_service.proto).
#[allow(clippy::all, missing_docs)]
pub mod otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

/// Encoded `FileDescriptorSet` of every RAUTA proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rauta_descriptor.bin"));
