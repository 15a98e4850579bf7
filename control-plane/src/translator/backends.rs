//! Resolves a route's backendRef to a Cluster, and fills in the endpoints of a Gateway's
//! clusters from the EndpointSlices. Routes are compiled without endpoints, so a route's
//! compilation does not depend on EndpointSlices (they change most often).

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    Cluster, ClusterEndpoints, DirectResponse, Endpoint, UpstreamProtocol,
};

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;

use super::backend_policy;
use super::backend_tls::{self, ServicePortKey};
use super::backend_traffic;
use super::generations::Generations;
use super::output::ResourceSet;
use super::references::{Target, is_core_group, reference_granted};
use super::service_policy;
use crate::objects::{KindMap, ObjectRef, ObjectSet};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A backendRef as written, with defaults not yet applied.
#[derive(Debug, Clone, Copy)]
pub struct BackendRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// Why a backendRef cannot be used; `reason` is the ResolvedRefs condition reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefProblem {
    pub reason: &'static str,
    pub message: String,
}

/// A usable backend: its cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedBackend {
    pub cluster: SharedCluster,
    /// The Service port, as BackendTLSPolicies target it.
    pub service_port: ServicePortKey,
    /// The Service's annotations that were ignored, one message each (its status).
    pub annotation_problems: Vec<String>,
}

/// A `Cluster` as a resource payload, made once when the route is compiled: every Gateway
/// serving the route, and every translation reusing the compiled route, hands on this
/// allocation instead of a copy. The field is private and `new` takes a `Cluster`: that is
/// what makes `Deref` total.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedCluster(Arc<Payload>);

impl SharedCluster {
    pub fn new(cluster: Cluster) -> Self {
        SharedCluster(Arc::new(Payload::Cluster(Box::new(cluster))))
    }

    pub fn payload(&self) -> &Arc<Payload> {
        &self.0
    }
}

impl std::ops::Deref for SharedCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        match &*self.0 {
            Payload::Cluster(cluster) => cluster,
            _ => unreachable!("a SharedCluster is made from a Cluster only"),
        }
    }
}

/// What refers to a backend: the route's kind (the `from` of a ReferenceGrant) and whether it
/// carries gRPC, which needs HTTP/2 to the backend whatever the Service port says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Referrer {
    pub kind: &'static str,
    pub grpc: bool,
}

/// Appended to the name of a cluster reached over HTTP/2 for gRPC routes, so that it does
/// not clash with the HTTP/1.1 cluster of the same Service port.
pub const GRPC_CLUSTER_SUFFIX: &str = "/grpc";

/// Resolves a backendRef of a route in `route_namespace`.
pub fn resolve(
    objects: &ObjectSet,
    route_namespace: &str,
    referrer: Referrer,
    backend: BackendRef<'_>,
) -> Result<ResolvedBackend, RefProblem> {
    let group = backend.group.unwrap_or("");
    let kind = backend.kind.unwrap_or("Service");
    if !is_core_group(group) || kind != "Service" {
        return Err(RefProblem {
            reason: "InvalidKind",
            message: format!(
                "backendRef {}: kind {kind:?} in group {group:?} is not supported",
                backend.name
            ),
        });
    }
    let namespace = backend.namespace.unwrap_or(route_namespace);
    if namespace != route_namespace
        && !reference_granted(
            objects,
            referrer.kind,
            route_namespace,
            Target {
                group: "",
                kind: "Service",
                namespace,
                name: backend.name,
            },
        )
    {
        return Err(RefProblem {
            reason: "RefNotPermitted",
            message: format!(
                "backendRef {namespace}/{}: no ReferenceGrant allows it",
                backend.name
            ),
        });
    }
    let key = ObjectRef::new(namespace, backend.name);
    let Some(service) = objects.services.get(&key) else {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("Service {key} not found"),
        });
    };
    let Some(port) = backend.port else {
        return Err(RefProblem {
            reason: "UnsupportedValue",
            message: format!("backendRef {key}: port is required for a Service"),
        });
    };
    let service_port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.port == port))
        .ok_or_else(|| RefProblem {
            reason: "BackendNotFound",
            message: format!("Service {key} has no port {port}"),
        })?;
    let protocol = match service_port.app_protocol.as_deref() {
        _ if referrer.grpc => UpstreamProtocol::H2c,
        Some("kubernetes.io/h2c") => UpstreamProtocol::H2c,
        _ => UpstreamProtocol::Http1,
    };
    let cluster_name = if referrer.grpc {
        format!("{key}:{port}{GRPC_CLUSTER_SUFFIX}")
    } else {
        format!("{key}:{port}")
    };
    let mut policy = service_policy::from_annotations(service.metadata.annotations.as_ref());
    backend_policy::apply_for(objects, (&key, service_port.name.as_deref()), &mut policy);
    let cluster = Cluster {
        name: cluster_name.clone(),
        protocol: protocol as i32,
        lb_policy: policy.lb_policy as i32,
        connect_timeout: policy.connect_timeout,
        request_timeout: None,
        tls: backend_tls::policy_for(objects, &key, service_port.name.as_deref())
            .and_then(|policy| backend_tls::upstream_tls(objects, &policy)),
        outlier_detection: Some(policy.outlier_detection),
        hash_key: policy.hash_key,
        health_check: policy.health_check,
        panic_threshold_percent: policy.panic_threshold_percent,
        circuit_breakers: policy.circuit_breakers,
        idle_timeout: policy.idle_timeout,
        retry_budget: backend_traffic::policy_for(objects, &key)
            .and_then(|(_, p)| backend_traffic::retry_budget(p)),
    };
    Ok(ResolvedBackend {
        cluster: SharedCluster::new(cluster),
        service_port: (key, service_port.name.clone()),
        annotation_problems: policy.problems,
    })
}

/// The EndpointSlices of each Service, found once per translation: a Gateway with thousands
/// of clusters would otherwise scan every slice for each.
pub struct EndpointIndex<'a> {
    services: &'a KindMap<Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a Arc<EndpointSlice>>>,
}

/// One cluster's endpoints as a translation filled them in, with the objects they came from.
struct FilledEndpoints {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    payload: Arc<Payload>,
}

/// The endpoints the previous translation filled in, by cluster: a cluster whose Service and
/// EndpointSlices are the very same objects gets the very same payload, neither rebuilt nor
/// compared by the snapshot. An endpoint change then costs the clusters it touches.
#[derive(Default)]
pub struct EndpointsMemo {
    filled: Generations<String, FilledEndpoints>,
}

impl EndpointsMemo {
    /// What this translation filled in becomes what the next one may reuse.
    pub fn advance(&mut self) {
        self.filled.advance();
    }
}

impl<'a> EndpointIndex<'a> {
    pub fn new(objects: &'a ObjectSet) -> Self {
        let mut slices: HashMap<(&str, &str), Vec<&Arc<EndpointSlice>>> = HashMap::new();
        for (key, slice) in &objects.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry((&*key.namespace, service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        EndpointIndex {
            services: &objects.services,
            slices,
        }
    }

    /// Sets the endpoints of every cluster in a Gateway's resources from the current
    /// EndpointSlices, leaving everything else as it is. A full translation ends with this,
    /// and a change that touches only EndpointSlices takes just this step, so both give the
    /// same endpoints.
    pub fn fill(&self, set: &mut ResourceSet, memo: &mut EndpointsMemo) {
        let Some(clusters) = set.get(&ResourceType::Cluster) else {
            return;
        };
        let clusters: Vec<String> = clusters.keys().cloned().collect();
        let endpoints = set.entry(ResourceType::Endpoints).or_default();
        for name in clusters {
            // Cluster names are "namespace/service:port" (see `resolve`).
            let Some((service, port)) = name.rsplit_once(':') else {
                continue;
            };
            let port = port.strip_suffix(GRPC_CLUSTER_SUFFIX).unwrap_or(port);
            let (Some(key), Ok(port)) = (ObjectRef::parse(service), port.parse::<i32>()) else {
                continue;
            };
            let Some(service) = self.services.get(&key) else {
                continue;
            };
            let service_port = service
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .and_then(|ports| ports.iter().find(|p| p.port == port));
            let Some(service_port) = service_port else {
                continue;
            };
            let slices = self.slices_of(&key);
            let same = |f: &FilledEndpoints| {
                Arc::ptr_eq(&f.service, service)
                    && f.slices.len() == slices.len()
                    && f.slices.iter().zip(slices).all(|(a, b)| Arc::ptr_eq(a, b))
            };
            if let Some(filled) = memo.filled.reused(&name, same) {
                endpoints.insert(name, Arc::clone(&filled.payload));
                continue;
            }
            let filled = FilledEndpoints {
                service: Arc::clone(service),
                slices: slices.iter().map(|s| Arc::clone(s)).collect(),
                payload: Arc::new(Payload::Endpoints(ClusterEndpoints {
                    cluster: name.clone(),
                    endpoints: Self::endpoints_of(slices, service_port),
                })),
            };
            endpoints.insert(name.clone(), Arc::clone(&filled.payload));
            memo.filled.insert(name, filled);
        }
    }

    /// The EndpointSlices of a Service.
    fn slices_of<'s>(&'s self, service: &'s ObjectRef) -> &'s [&'s Arc<EndpointSlice>] {
        self.slices
            .get(&(&*service.namespace, &*service.name))
            .map_or(&[], Vec::as_slice)
    }

    /// The endpoints EndpointSlices list for one Service port, in a stable order.
    fn endpoints_of(slices: &[&Arc<EndpointSlice>], service_port: &ServicePort) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for slice in slices {
            // FQDN slices name hosts, not addresses; the proxy connects to IPs only.
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let port = match &slice.ports {
                // EndpointSlice ports carry the Service port's name; an unnamed port matches unnamed.
                Some(ports) => ports
                    .iter()
                    .find(|p| {
                        p.name.as_deref().unwrap_or("")
                            == service_port.name.as_deref().unwrap_or("")
                    })
                    .and_then(|p| p.port),
                None => None,
            };
            let port = port.or(match &service_port.target_port {
                Some(IntOrString::Int(p)) => Some(*p),
                None => Some(service_port.port),
                Some(IntOrString::String(_)) => None,
            });
            let Some(port) = port
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| (1..=65535).contains(p))
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().flatten() {
                // Per the EndpointSlice API, an unset ready condition means ready.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                for address in &endpoint.addresses {
                    out.push(Endpoint {
                        address: address.clone(),
                        port,
                        weight: 1,
                        ready,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        // The same address in two slices (a rollout): it is ready if either copy says so.
        out.dedup_by(|later, kept| {
            let same = later.address == kept.address && later.port == kept.port;
            if same {
                kept.ready |= later.ready;
            }
            same
        });
        out
    }
}

/// The answer of a rule that cannot be served as configured: 500, no body.
pub fn error_answer() -> Action {
    Action::DirectResponse(DirectResponse {
        status: 500,
        body: String::new(),
        headers: Vec::new(),
    })
}
