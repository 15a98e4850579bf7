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

impl v1::RequestLimits {
    /// Takes `general`'s value for each limit this one leaves unset: a route's `timeouts`
    /// must not drop its Gateway's body limit, nor its `requestLimits` the Gateway's timeouts.
    pub fn fill_from(&mut self, general: &v1::RequestLimits) {
        if self.max_body_bytes == 0 {
            self.max_body_bytes = general.max_body_bytes;
        }
        if self.max_header_bytes == 0 {
            self.max_header_bytes = general.max_header_bytes;
        }
        if self.request_timeout.is_none() {
            self.request_timeout = general.request_timeout;
        }
        if self.backend_request_timeout.is_none() {
            self.backend_request_timeout = general.backend_request_timeout;
        }
    }
}
