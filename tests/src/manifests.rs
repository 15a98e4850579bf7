//! Gateway API manifests for tests, as YAML text (what a user would write).

use std::net::SocketAddr;

pub const CONTROLLER_NAME: &str = "rauta.dev/gateway-controller";

pub fn gateway_class(name: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: {name}\nspec:\n  controllerName: {CONTROLLER_NAME}\n"
    )
}

/// A Gateway with HTTP listeners `(name, port, hostname)`, allowing routes from all namespaces.
pub fn gateway(
    namespace: &str,
    name: &str,
    class: &str,
    listeners: &[(&str, u16, Option<&str>)],
) -> String {
    let mut s = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  gatewayClassName: {class}\n  listeners:\n"
    );
    for (lname, port, hostname) in listeners {
        s.push_str(&format!("  - name: {lname}\n    protocol: HTTP\n    port: {port}\n    allowedRoutes:\n      namespaces:\n        from: All\n"));
        if let Some(h) = hostname {
            s.push_str(&format!("    hostname: \"{h}\"\n"));
        }
    }
    s
}

/// A Service with port 8080 named "http", and one EndpointSlice per endpoint address (each
/// echo instance listens on its own port).
pub fn service(namespace: &str, name: &str, endpoints: &[SocketAddr]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ports:\n  - name: http\n    port: 8080\n    targetPort: 3000\n"
    );
    for (i, ep) in endpoints.iter().enumerate() {
        s.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: {}\nendpoints:\n- addresses: [\"{}\"]\n  conditions:\n    ready: true\n",
            ep.port(),
            ep.ip()
        ));
    }
    s
}

/// A Service whose port 8081 speaks h2c (appProtocol kubernetes.io/h2c), with one
/// EndpointSlice per endpoint address.
pub fn h2c_service(namespace: &str, name: &str, endpoints: &[SocketAddr]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  ports: [{{name: h2, port: 8081, targetPort: 3001, appProtocol: kubernetes.io/h2c}}]\n"
    );
    for (i, ep) in endpoints.iter().enumerate() {
        s.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: h2, port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
            ep.port(),
            ep.ip()
        ));
    }
    s
}

/// [`service`] with `rauta.dev/*` (or any) annotations on the Service.
pub fn annotated_service(
    namespace: &str,
    name: &str,
    endpoints: &[SocketAddr],
    annotations: &[(&str, &str)],
) -> String {
    let plain = service(namespace, name, endpoints);
    let meta = format!("metadata:\n  name: {name}\n  namespace: {namespace}\n");
    let mut annotated = format!("{meta}  annotations:\n");
    for (k, v) in annotations {
        annotated.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    plain.replacen(&meta, &annotated, 1)
}

/// An HTTPRoute; `rules` is the YAML list under `spec.rules`, indented by two spaces.
pub fn http_route(
    namespace: &str,
    name: &str,
    gateway: (&str, &str),
    hostnames: &[&str],
    rules: &str,
) -> String {
    let hosts: Vec<String> = hostnames.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  parentRefs:\n  - name: {}\n    namespace: {}\n  hostnames: [{}]\n  rules:\n{rules}",
        gateway.1,
        gateway.0,
        hosts.join(", ")
    )
}

/// An HTTPRoute in `apps` attached to Gateway infra/gw: one PathPrefix rule to `backend` port 8080.
pub fn prefix_route(name: &str, path: &str, backend: &str) -> String {
    let rule = format!(
        "  - matches:\n    - path: {{type: PathPrefix, value: {path}}}\n    backendRefs:\n    - {{name: {backend}, port: 8080}}\n"
    );
    http_route("apps", name, ("infra", "gw"), &[], &rule)
}

/// GatewayClass "rauta", Gateway infra/gw with one HTTP listener on port 80, and the
/// Services `(name, endpoints)` in namespace `apps`.
pub fn infra(services: &[(&str, &[std::net::SocketAddr])]) -> String {
    let mut docs = vec![
        gateway_class("rauta"),
        gateway("infra", "gw", "rauta", &[("http", 80, None)]),
    ];
    docs.extend(
        services
            .iter()
            .map(|(name, eps)| service("apps", name, eps)),
    );
    documents(&docs)
}

/// GatewayClass "rauta", Gateway infra/gw with one HTTP listener on port 80, then `docs`, as
/// one multi-document YAML file.
pub fn on_http_gateway(docs: &[String]) -> String {
    let mut all = vec![
        gateway_class("rauta"),
        gateway("infra", "gw", "rauta", &[("http", 80, None)]),
    ];
    all.extend_from_slice(docs);
    documents(&all)
}

/// Joins manifests into one multi-document YAML file.
pub fn documents(docs: &[String]) -> String {
    docs.join("---\n")
}

/// A kubernetes.io/tls Secret.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: {name}\n  namespace: {namespace}\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert_pem),
        b64(key_pem)
    )
}

/// A Gateway with HTTPS listeners `(name, port, hostname, secret)` terminating TLS with the
/// Secret of that name, allowing routes from all namespaces.
pub fn https_gateway(
    namespace: &str,
    name: &str,
    class: &str,
    listeners: &[(&str, u16, Option<&str>, &str)],
) -> String {
    let mut s = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  gatewayClassName: {class}\n  listeners:\n"
    );
    for (lname, port, hostname, secret) in listeners {
        s.push_str(&format!(
            "  - name: {lname}\n    protocol: HTTPS\n    port: {port}\n    tls:\n      mode: Terminate\n      certificateRefs:\n      - name: {secret}\n    allowedRoutes:\n      namespaces:\n        from: All\n"
        ));
        if let Some(h) = hostname {
            s.push_str(&format!("    hostname: \"{h}\"\n"));
        }
    }
    s
}
