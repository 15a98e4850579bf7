//! Listener semantics that span several listeners of one Gateway: listener isolation (which
//! listener's routes may answer a host) and attachedRoutes on listeners that are not served.

use std::collections::BTreeSet;

use rauta_common::api::v1::RouteTable;
use rauta_common::types::ResourceType;

use super::*;
use crate::source::parse_manifests;

/// Four HTTP listeners on one port, from the least to the most specific hostname (the shape of
/// upstream's GatewayHTTPListenerIsolation test), one Service, and `routes`.
fn isolation_gateway(routes: &str) -> Translation {
    let yaml = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: rauta}}
spec: {{controllerName: rauta.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: rauta
  listeners:
  - {{name: empty-hostname, port: 80, protocol: HTTP}}
  - {{name: wildcard-example-com, port: 80, protocol: HTTP, hostname: "*.example.com"}}
  - {{name: wildcard-foo-example-com, port: 80, protocol: HTTP, hostname: "*.foo.example.com"}}
  - {{name: abc-foo-example-com, port: 80, protocol: HTTP, hostname: abc.foo.example.com}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: infra}}
spec:
  ports: [{{name: http, port: 8080, targetPort: 3000}}]
---
{routes}"#
    );
    let (objects, problems) = parse_manifests(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    translate(&objects, DEFAULT_CONTROLLER_NAME)
}

/// A route attached to one listener (by sectionName) whose only rule matches `/<listener>`.
fn route_on(listener: &str, hostnames: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {listener}, namespace: infra}}\nspec:\n  parentRefs: [{{name: gw, sectionName: {listener}}}]\n  hostnames: {hostnames}\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /{listener}}}}}]\n    backendRefs: [{{name: web, port: 8080}}]\n---\n"
    )
}

fn table(t: &Translation) -> RouteTable {
    let gw = ObjectRef::new("infra", "gw");
    super::route_rules::assembled_table(&t.gateways[&gw], "http-80").expect("no table http-80")
}

/// The routes whose rules can answer `host`, looked up as the proxy looks up a virtual host
/// (data-plane model/route_table.rs: exact name, then the longest wildcard, then "*").
fn routes_serving(table: &RouteTable, host: &str) -> BTreeSet<String> {
    let by_domain = |wanted: &dyn Fn(&str) -> bool| {
        table
            .virtual_hosts
            .iter()
            .filter(|v| v.domains.iter().any(|d| wanted(d)))
            .max_by_key(|v| v.domains[0].len())
    };
    let vhost = by_domain(&|d| d == host)
        .or_else(|| {
            by_domain(&|d| {
                d.strip_prefix('*').is_some_and(|s| {
                    s.starts_with('.') && host.len() > s.len() && host.ends_with(s)
                })
            })
        })
        .or_else(|| by_domain(&|d| d == "*"));
    vhost
        .into_iter()
        .flat_map(|v| &v.rules)
        .filter_map(|r| r.name.split('/').nth(1).map(str::to_owned))
        .collect()
}

const LISTENERS: [&str; 4] = [
    "empty-hostname",
    "wildcard-example-com",
    "wildcard-foo-example-com",
    "abc-foo-example-com",
];

/// Which listener's routes must answer each host: the most specific matching listener's only.
fn assert_isolated(t: &Translation) {
    let expected = [
        ("bar.com", "empty-hostname"),
        ("bar.example.com", "wildcard-example-com"),
        ("bar.foo.example.com", "wildcard-foo-example-com"),
        ("abc.foo.example.com", "abc-foo-example-com"),
    ];
    for (host, owner) in expected {
        assert_eq!(
            routes_serving(&table(t), host),
            BTreeSet::from([owner.to_owned()]),
            "routes answering {host}"
        );
    }
}

#[test]
fn listener_isolation_without_route_hostnames() {
    let routes: String = LISTENERS.iter().map(|l| route_on(l, "[]")).collect();
    assert_isolated(&isolation_gateway(&routes));
}

#[test]
fn listener_isolation_holds_against_route_hostnames() {
    // Every route names every host; the intersection with its listener's hostname narrows them,
    // and isolation keeps each host with its most specific listener (upstream's
    // gateway-http-listener-isolation-with-hostname-intersection.yaml).
    let hostnames = r#"[bar.com, "*.example.com", "*.foo.example.com", abc.foo.example.com]"#;
    let routes: String = LISTENERS.iter().map(|l| route_on(l, hostnames)).collect();
    let t = isolation_gateway(&routes);
    assert_isolated(&t);
    // Through the wildcard listener, the route also serves hosts no listener hostname matches
    // better ("x.example.com"), but nothing under *.foo.example.com.
    assert_eq!(
        routes_serving(&table(&t), "x.example.com"),
        BTreeSet::from(["wildcard-example-com".to_owned()])
    );
}

#[test]
fn an_exact_route_hostname_does_not_escape_isolation() {
    // The hostname-less listener's route names bar.example.com exactly; the *.example.com
    // listener still owns that host, so its (non-matching) routes answer: 404, not 200.
    let routes = [
        route_on("empty-hostname", "[bar.example.com, bar.com]"),
        route_on("wildcard-example-com", "[]"),
    ]
    .concat();
    let t = isolation_gateway(&routes);
    assert_eq!(
        routes_serving(&table(&t), "bar.example.com"),
        BTreeSet::from(["wildcard-example-com".to_owned()])
    );
    assert_eq!(
        routes_serving(&table(&t), "bar.com"),
        BTreeSet::from(["empty-hostname".to_owned()])
    );
}

#[test]
fn routes_attached_to_an_invalid_listener_are_counted_not_served() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rauta}
spec: {controllerName: rauta.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - name: https
    port: 443
    protocol: HTTPS
    tls: {certificateRefs: [{name: does-not-exist}]}
  - {name: custom, port: 9000, protocol: example.com/custom}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec:
  ports: [{name: http, port: 8080, targetPort: 3000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: secure, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: https}]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: everywhere, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
"#;
    let (objects, problems) = parse_manifests(yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let t = translate(&objects, DEFAULT_CONTROLLER_NAME);
    let gw = ObjectRef::new("infra", "gw");
    let listener = |name: &str| {
        t.status.gateways[&gw]
            .listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
            .clone()
    };
    let https = listener("https");
    assert_eq!(https.attached_routes, 2, "secure and everywhere");
    let programmed = https.conditions.iter().find(|c| c.type_ == "Programmed");
    assert_eq!(programmed.map(|c| c.status.as_str()), Some("False"));
    assert_eq!(listener("http").attached_routes, 1);
    // No route kind attaches to a protocol RAUTA does not serve.
    assert_eq!(listener("custom").attached_routes, 0);
    // The route stays accepted (it attached), but the listener serves nothing: no socket.
    let secure = &t.status.http_routes[&ObjectRef::new("infra", "secure")].parents[0];
    let accepted = secure.conditions.iter().find(|c| c.type_ == "Accepted");
    assert_eq!(accepted.map(|c| c.status.as_str()), Some("True"));
    let listeners = &t.gateways[&gw][&ResourceType::Listener];
    assert!(listeners.contains_key("http-80"));
    assert!(!listeners.contains_key("https-443"), "{listeners:?}");
}
