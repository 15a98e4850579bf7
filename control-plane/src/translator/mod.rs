//! The translator: a pure function from Gateway API objects to one resource set per Gateway
//! plus the status of every object involved. No I/O, no clock: tests call it directly.
//!
//! `translate` reads the objects as views (`gateway.rs` with `listeners.rs` and
//! `listener_sets.rs`; `route_view.rs`), attaches routes to listeners (`attachment.rs`, which
//! compiles each route once with `routes.rs`, `filters.rs` and `backends.rs`), then builds
//! each Gateway's resources (`gateway_resources.rs`) and status, and the policies' status
//! (`policy_status.rs`). References across objects go through `references.rs`. No module
//! below uses this one: the modules form a tree of dependencies without cycles.

pub mod addresses;
mod attached_status;
mod attachment;
mod authorization;
mod backend_policy;
pub mod backend_tls;
mod backend_traffic;
pub mod backends;
mod basic_auth;
mod ext_auth;
mod extensions;
mod filters;
mod gateway;
mod gateway_resources;
mod generations;
mod grpc;
pub mod hostnames;
mod incremental;
mod jwt;
mod kernel;
mod l4_routes;
mod listener_sets;
mod listeners;
mod output;
mod policies;
mod policy_status;
mod precedence;
mod rate_limits;
mod references;
pub mod route_rules;
mod route_view;
mod routes;
mod security;
mod selectors;
pub mod service_policy;
mod sessions;
pub mod status;
mod tls;
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::objects::{ObjectRef, ObjectSet};
use gateway::GatewayView;
use incremental::Compiler;
pub use incremental::Translator;
pub use output::{ResourceSet, Translation};
use status::{Condition, GatewayClassStatus, generation_of};

/// The controllerName RAUTA answers for in GatewayClass.spec.controllerName.
pub const DEFAULT_CONTROLLER_NAME: &str = "rauta.dev/gateway-controller";

/// Gateway API features this build implements, reported in GatewayClass status (upstream's
/// conformance suite runs the tests of exactly these). Each has passing cases in
/// tests/conformance/upstream, except the few docs/conformance.md lists with the tests of
/// our own that back them instead.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayPort8080",
    "GatewayHTTPListenerIsolation",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayBackendClientCertificate",
    "GatewayStaticAddresses",
    "GatewayAddressEmpty",
    "ListenerSet",
    "ReferenceGrant",
    "HTTPRoute",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteParentRefPort",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteResponseHeaderModification",
    "HTTPRoutePortRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePathRedirect",
    "HTTPRouteHostRewrite",
    "HTTPRoutePathRewrite",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteRetry",
    "HTTPRouteCORS",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "TLSRoute",
    "TLSRouteModeTerminate",
    "TLSRouteModeMixed",
    "TCPRoute",
    "UDPRoute",
];

/// SUPPORTED_FEATURES as GatewayClass status lists them: in ascending order, as the API
/// requires.
fn supported_features() -> Vec<String> {
    let mut features: Vec<String> = SUPPORTED_FEATURES.iter().map(|f| (*f).to_owned()).collect();
    features.sort();
    features
}

/// Translates every object. `controller_name` selects the GatewayClasses RAUTA owns.
pub fn translate(objects: &ObjectSet, controller_name: &str) -> Translation {
    translate_with(objects, controller_name, &mut Compiler::fresh(objects)).0
}

/// `translate`, with routes compiled by `compiler`; also returns the compiled routes.
fn translate_with(
    objects: &ObjectSet,
    controller_name: &str,
    compiler: &mut Compiler<'_>,
) -> (
    Translation,
    BTreeMap<route_view::RouteId, Arc<routes::CompiledRoute>>,
) {
    let mut out = Translation::default();
    let mut classes = BTreeSet::new();
    for (key, class) in &objects.gateway_classes {
        if class.spec.controller_name == controller_name {
            classes.insert(key.name.clone());
            let g = generation_of(&class.metadata);
            out.status.gateway_classes.insert(
                key.clone(),
                GatewayClassStatus {
                    generation: g,
                    conditions: vec![Condition::new("Accepted", true, "Accepted", "", g)],
                    supported_features: supported_features(),
                },
            );
        }
    }

    let mut gateways: BTreeMap<ObjectRef, GatewayView<'_>> = objects
        .gateways
        .iter()
        .filter(|(_, gw)| classes.contains(gw.spec.gateway_class_name.as_str()))
        .map(|(key, gw)| (key.clone(), GatewayView::new(objects, key, gw)))
        .collect();
    let routes = route_view::all(objects);
    let compiled = attachment::attach_routes(
        objects,
        controller_name,
        &routes,
        route_view::RouteEntry::view,
        &mut gateways,
        &mut out.status,
        compiler,
    );
    policy_status::report(
        objects,
        controller_name,
        &gateways,
        &compiled,
        &mut out.status,
    );
    attached_status::report(
        objects,
        controller_name,
        &gateways,
        &compiler.policies,
        &mut out.status,
    );
    let endpoints = backends::EndpointIndex::new(objects);
    for (key, gateway) in gateways {
        let built = gateway.build(
            &key,
            &compiler.policies,
            &endpoints,
            &mut compiler.rules,
            &mut compiler.endpoints,
        );
        out.gateways.insert(key.clone(), built.resources);
        out.status.gateways.insert(key, built.status);
        out.status.listener_sets.extend(built.listener_sets);
    }
    (out, compiled)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod golden_tests;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod listener_tests;

#[cfg(test)]
mod incremental_tests;
