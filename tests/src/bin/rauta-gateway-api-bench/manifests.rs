//! The objects the public suite creates, as the JSON a client would send. Shapes follow its
//! templates (tests/*/ and pilot-load's `httproute` config): what each test's routes match,
//! filter and point at; names are ours.

use serde_json::{Value, json};

pub const V1: &str = "gateway.networking.k8s.io/v1";
pub const CONTROLLER: &str = rauta_tests::manifests::CONTROLLER_NAME;
/// Another implementation sharing the cluster (the suite runs several at once).
pub const OTHER_CONTROLLER: &str = "example.com/other-controller";

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

pub fn gateway_class(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": V1, "kind": "GatewayClass", "metadata": {"name": name},
        "spec": {"controllerName": controller},
    })
}

/// A Gateway with one HTTP listener on port 80 taking routes from every namespace, and (if
/// `listener_sets`) ListenerSets from every namespace.
pub fn gateway(namespace: &str, name: &str, class: &str, listener_sets: bool) -> Value {
    let mut gw = json!({
        "apiVersion": V1, "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": class,
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": {"from": "All"}}}],
        },
    });
    if listener_sets {
        gw["spec"]["allowedListeners"] = json!({"namespaces": {"from": "All"}});
    }
    gw
}

/// A Service with ports `(name, port, targetPort)`.
pub fn service(namespace: &str, name: &str, ports: &[(&str, u16, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, port, target)| json!({"name": n, "port": port, "targetPort": target}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": ports},
    })
}

/// The EndpointSlice `name` of Service `service`: one ready pod at `address`, with ports
/// `(name, port)`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    ports: &[(&str, u16)],
    address: &str,
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, port)| json!({"name": n, "port": port}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
    })
}

/// A loopback address for fake pod number `n` (127.1.0.1 and up): never a real pod, and
/// nothing listens there, so a request that reached one would be refused on this machine.
pub fn pod_ip(n: u64) -> String {
    let n = n % (250 * 256 * 254);
    format!(
        "127.{}.{}.{}",
        1 + n / (256 * 254),
        (n / 254) % 256,
        n % 254 + 1
    )
}

/// A parentRef to Gateway `namespace/name`.
pub fn gateway_ref(namespace: &str, name: &str) -> Value {
    json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name, "namespace": namespace})
}

/// An HTTPRoute as pilot-load's `httproute` config makes it (the attached-routes and
/// route-scale tests): hostname NAME-suffix, one rule, the app's Service on port 80 with a
/// weight (what a refresh bumps).
pub fn app_route(
    namespace: &str,
    name: &str,
    hostname: &str,
    parents: &[Value],
    weight: u64,
) -> Value {
    json!({
        "apiVersion": V1, "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": parents,
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": name, "port": 80, "weight": weight}]}],
        },
    })
}

/// Another controller's status entry on a route, for its own Gateway: RAUTA must keep it and
/// add exactly one of its own.
pub fn foreign_parent_status() -> Value {
    json!({
        "parentRef": gateway_ref("other", "gw"),
        "controllerName": OTHER_CONTROLLER,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    })
}

fn header_filters() -> Value {
    json!([
        {"type": "RequestHeaderModifier",
         "requestHeaderModifier": {"add": [{"name": "added-header", "value": "added-value"}]}},
        {"type": "ResponseHeaderModifier",
         "responseHeaderModifier": {"add": [{"name": "added-resp-header", "value": "added-resp-value"}]}},
    ])
}

/// The route-propagation test's route number `index`, in namespace default: host
/// INDEX-route.example.com, /INDEX to Service backend with header filters, and a catch-all
/// rule to a Service that does not exist.
pub fn probe_route(index: usize) -> Value {
    json!({
        "apiVersion": V1, "kind": "HTTPRoute",
        "metadata": {"name": format!("{index}-route"), "namespace": "default"},
        "spec": {
            "hostnames": [format!("{index}-route.example.com")],
            "parentRefs": [{"name": "gw", "namespace": "bench"}],
            "rules": [
                {"backendRefs": [{"name": "backend", "port": 80}],
                 "filters": header_filters(),
                 "matches": [{"path": {"type": "PathPrefix", "value": format!("/{index}")}}]},
                {"backendRefs": [{"name": "invalid-backend", "port": 80}],
                 "filters": header_filters(),
                 "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
            ],
        },
    })
}

/// The route-change test's route: Service backend's port 80 with a response header added by
/// a backendRef filter (`alternate`), or its port 8080 without.
pub fn change_route(alternate: bool) -> Value {
    let backend = if alternate {
        json!({"name": "backend", "port": 80, "filters": [
            {"type": "ResponseHeaderModifier",
             "responseHeaderModifier": {"add": [{"name": "my-added-header", "value": "added-value"}]}}]})
    } else {
        json!({"name": "backend", "port": 8080})
    };
    json!({
        "apiVersion": V1, "kind": "HTTPRoute",
        "metadata": {"name": "route", "namespace": "default"},
        "spec": {
            "hostnames": ["route.example.com"],
            "parentRefs": [{"name": "gw", "namespace": "bench"}],
            "rules": [{"backendRefs": [backend]}],
        },
    })
}

/// A kubernetes.io/tls Secret.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)},
    })
}

/// The ListenerSet test's ListenerSet: one HTTPS listener on 443 for `hostname`, terminating
/// TLS with the namespace's Secret ns-cert, on Gateway bench/gw.
pub fn listener_set(namespace: &str, name: &str, hostname: &str) -> Value {
    json!({
        "apiVersion": V1, "kind": "ListenerSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRef": {"name": "gw", "namespace": "bench", "kind": "Gateway",
                          "group": "gateway.networking.k8s.io"},
            "listeners": [{
                "name": name, "hostname": hostname, "protocol": "HTTPS", "port": 443,
                "tls": {"mode": "Terminate",
                        "certificateRefs": [{"kind": "Secret", "group": "", "name": "ns-cert"}]},
            }],
        },
    })
}

/// The ListenerSet test's route number `k` of an app: on the app's ListenerSet, for its
/// hostname, path /K/RANDOM (what a refresh changes), to the app's Service.
pub fn listener_set_route(
    namespace: &str,
    app: &str,
    k: usize,
    hostname: &str,
    random: u64,
) -> Value {
    json!({
        "apiVersion": V1, "kind": "HTTPRoute",
        "metadata": {"name": format!("{app}-{k}"), "namespace": namespace},
        "spec": {
            "hostnames": [hostname],
            "parentRefs": [{"name": app, "kind": "ListenerSet", "group": "gateway.networking.k8s.io"}],
            "rules": [{
                "backendRefs": [{"name": app, "port": 80}],
                "matches": [{"path": {"type": "PathPrefix", "value": format!("/{k}/{random}")}}],
            }],
        },
    })
}

/// Our entries in a route's status.parents, and whether each is Accepted.
pub fn our_parents(route: &Value) -> Vec<bool> {
    route["status"]["parents"]
        .as_array()
        .map(|parents| {
            parents
                .iter()
                .filter(|p| p["controllerName"] == CONTROLLER)
                .map(|p| {
                    p["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
