//! Translator unit tests: the precise cases of precedence and of each condition reason. What a
//! translation produces as a whole is checked by the goldens (golden_tests.rs, testdata/).

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{PathMatchKind, RouteTable};
use rauta_common::types::ResourceType;

use super::status::Condition;
use super::*;
use crate::source::parse_manifests;

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rauta}
spec: {controllerName: rauta.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 3}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: same-ns, port: 8080, protocol: HTTP}
  - {name: foo, port: 8081, protocol: HTTP, hostname: "*.foo.com", allowedRoutes: {namespaces: {from: All}}}
  - {name: sctp, port: 9000, protocol: SCTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: infra}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  ports:
  - {name: http, port: 8080, targetPort: 3000}
  - {name: grpc, port: 8081, targetPort: 3001, appProtocol: kubernetes.io/h2c}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: apps, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 3000}, {name: grpc, port: 3001}]
endpoints:
- addresses: [10.0.0.2]
  conditions: {ready: true}
- addresses: [10.0.0.1]
- addresses: [10.0.0.3]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: unrelated, namespace: apps, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 1}]
endpoints: [{addresses: [10.9.9.9]}]
"#;

pub(super) fn translate_yaml(extra: &str) -> Translation {
    let (objects, problems) = parse_manifests(&format!("{BASE}---\n{extra}"));
    assert!(problems.is_empty(), "{problems:?}");
    translate(&objects, DEFAULT_CONTROLLER_NAME)
}

fn gw() -> ObjectRef {
    ObjectRef::new("infra", "gw")
}

/// The table as the proxies assemble it from the table and its routes' `RouteRules`.
pub(super) fn route_table(t: &Translation, name: &str) -> RouteTable {
    super::route_rules::assembled_table(&t.gateways[&gw()], name).expect("no such route table")
}

fn parent_conditions(t: &Translation, route: &str) -> Vec<Condition> {
    let (ns, name) = route.split_once('/').unwrap();
    t.status.http_routes[&ObjectRef::new(ns, name)].parents[0]
        .conditions
        .clone()
}

pub(super) fn condition(conditions: &[Condition], type_: &str) -> (String, String) {
    let c = conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {conditions:?}"));
    (c.status.clone(), c.reason.clone())
}

pub(super) fn route(name: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: apps{extra_meta}}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: http}}]\n{spec}\n---\n"
    )
}

#[test]
fn rules_are_ordered_by_gateway_api_precedence() {
    let backend = "    backendRefs: [{name: web, port: 8080}]";
    let yaml = [
        route("a-prefix", ", creationTimestamp: '2020-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /foo}}}}]\n{backend}")),
        route("b-exact", ", creationTimestamp: '2021-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: Exact, value: /foo}}}}]\n{backend}")),
        route("c-longer", ", creationTimestamp: '2022-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /foo/bar}}}}]\n{backend}")),
        route("d-headers", ", creationTimestamp: '2023-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /foo}}, headers: [{{name: a, value: b}}]}}]\n{backend}")),
        // Same match as a-prefix but newer: loses the tie to the older route.
        route("0-newer", ", creationTimestamp: '2024-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /foo}}}}]\n{backend}")),
        // Same match and timestamp as each other: alphabetical order decides.
        route("z-same", ", creationTimestamp: '2025-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /x}}}}]\n{backend}")),
        route("y-same", ", creationTimestamp: '2025-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /x}}}}]\n{backend}")),
        // Regular expressions sit between Exact and PathPrefix.
        route("e-regex", ", creationTimestamp: '2026-01-01T00:00:00Z'", &format!("  rules:\n  - matches: [{{path: {{type: RegularExpression, value: '/r/[0-9]+'}}}}]\n{backend}")),
    ]
    .concat();
    let t = translate_yaml(&yaml);
    let table = route_table(&t, "http-80");
    assert_eq!(table.virtual_hosts.len(), 1);
    assert_eq!(table.virtual_hosts[0].domains, ["*"]);
    let order: Vec<&str> = table.virtual_hosts[0]
        .rules
        .iter()
        .map(|r| r.name.split('/').nth(1).unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "b-exact",
            "e-regex",
            "c-longer",
            "d-headers",
            "a-prefix",
            "0-newer",
            "y-same",
            "z-same"
        ]
    );
    let first = &table.virtual_hosts[0].rules[0].matches[0];
    assert_eq!(first.path.as_ref().unwrap().kind(), PathMatchKind::Exact);
}

#[test]
fn unresolvable_backends_get_their_reason_and_a_500_share() {
    let cases = [
        ("{name: missing, port: 8080}", "BackendNotFound"),
        ("{name: web, port: 9999}", "BackendNotFound"),
        ("{name: web}", "UnsupportedValue"),
        ("{name: web, port: 8080, kind: Pod}", "InvalidKind"),
        (
            "{name: web, port: 8080, namespace: infra}",
            "RefNotPermitted",
        ),
    ];
    for (backend, reason) in cases {
        let t = translate_yaml(&route(
            "r",
            "",
            &format!(
                "  rules:\n  - backendRefs: [{backend}, {{name: web, port: 8080, weight: 3}}]"
            ),
        ));
        assert_eq!(
            condition(&parent_conditions(&t, "apps/r"), "ResolvedRefs"),
            ("False".into(), reason.into()),
            "{backend}"
        );
        assert_eq!(
            condition(&parent_conditions(&t, "apps/r"), "Accepted"),
            ("True".into(), "Accepted".into())
        );
        let rule = &route_table(&t, "http-80").virtual_hosts[0].rules[0];
        let Some(Action::Forward(f)) = &rule.action else {
            panic!("{rule:?}")
        };
        assert_eq!(f.invalid_weight, 1, "{backend}");
        assert_eq!(f.clusters.len(), 1);
    }
    // Only invalid backends, or none at all: every request gets 500.
    for rules in [
        "  rules:\n  - backendRefs: [{name: missing, port: 1}]",
        "  rules:\n  - matches: [{path: {value: /}}]",
    ] {
        let t = translate_yaml(&route("r", "", rules));
        let rule = &route_table(&t, "http-80").virtual_hosts[0].rules[0];
        assert!(
            matches!(&rule.action, Some(Action::DirectResponse(d)) if d.status == 500),
            "{rule:?}"
        );
    }
}

#[test]
fn reference_grant_permits_cross_namespace_backends() {
    let grant = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: apps}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]\n  to: [{group: '', kind: Service, name: web}]\n---\n";
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: other}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - backendRefs: [{name: web, namespace: apps, port: 8080}]\n";
    let without = translate_yaml(route);
    assert_eq!(
        condition(&parent_conditions(&without, "other/r"), "ResolvedRefs").1,
        "RefNotPermitted"
    );
    let with = translate_yaml(&format!("{grant}{route}"));
    assert_eq!(
        condition(&parent_conditions(&with, "other/r"), "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
}

#[test]
fn parent_attachment_reasons() {
    let spec = "  rules:\n  - backendRefs: [{name: web, port: 8080}]";
    let with_parent = |parent: &str, hostnames: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: apps, generation: 7}}\nspec:\n  parentRefs: [{parent}]\n  hostnames: {hostnames}\n{spec}\n"
        )
    };
    let accepted = |t: &Translation| condition(&parent_conditions(t, "apps/r"), "Accepted");

    let t = translate_yaml(&with_parent(
        "{name: gw, namespace: infra, sectionName: nope}",
        "[]",
    ));
    assert_eq!(accepted(&t), ("False".into(), "NoMatchingParent".into()));
    let t = translate_yaml(&with_parent(
        "{name: gw, namespace: infra, port: 1234}",
        "[]",
    ));
    assert_eq!(accepted(&t), ("False".into(), "NoMatchingParent".into()));
    // The same-ns listener only admits routes from the Gateway's own namespace.
    let t = translate_yaml(&with_parent(
        "{name: gw, namespace: infra, sectionName: same-ns}",
        "[]",
    ));
    assert_eq!(
        accepted(&t),
        ("False".into(), "NotAllowedByListeners".into())
    );
    let t = translate_yaml(&with_parent(
        "{name: gw, namespace: infra, sectionName: foo}",
        "[bar.com]",
    ));
    assert_eq!(
        accepted(&t),
        ("False".into(), "NoMatchingListenerHostname".into())
    );
    // A route for a Gateway of another controller gets no status from us.
    let t = translate_yaml(&with_parent("{name: foreign, namespace: infra}", "[]"));
    assert!(t.status.http_routes.is_empty());

    let t = translate_yaml(&with_parent(
        "{name: gw, namespace: infra}",
        "[a.foo.com, other.org]",
    ));
    assert_eq!(accepted(&t), ("True".into(), "Accepted".into()));
    assert!(
        parent_conditions(&t, "apps/r")
            .iter()
            .all(|c| c.observed_generation == 7)
    );
    let parent = &t.status.http_routes[&ObjectRef::new("apps", "r")].parents[0];
    assert_eq!(
        (
            parent.parent_ref.group.as_str(),
            parent.parent_ref.kind.as_str()
        ),
        ("gateway.networking.k8s.io", "Gateway")
    );
    // Attached to http (any host) with both names, and to foo with the intersection only.
    let domains = |table: &str| {
        route_table(&t, table)
            .virtual_hosts
            .iter()
            .map(|v| v.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(domains("http-80"), ["a.foo.com", "other.org"]);
    // Listener isolation: the listener's own hostname has a virtual host even where no route
    // serves it, so such requests get 404 instead of falling through to another listener.
    assert_eq!(domains("http-8081"), ["*.foo.com", "a.foo.com"]);
    assert!(
        route_table(&t, "http-8081").virtual_hosts[0]
            .rules
            .is_empty()
    );
    let listeners = &t.status.gateways[&gw()].listeners;
    let attached: Vec<(&str, i32)> = listeners
        .iter()
        .map(|l| (l.name.as_str(), l.attached_routes))
        .collect();
    assert_eq!(
        attached,
        [("http", 1), ("same-ns", 0), ("foo", 1), ("sctp", 0)]
    );
}

#[test]
fn unsupported_listener_protocol_is_reported_and_not_served() {
    let t = translate_yaml("");
    let gw_status = &t.status.gateways[&gw()];
    let sctp = gw_status
        .listeners
        .iter()
        .find(|l| l.name == "sctp")
        .unwrap();
    assert_eq!(
        condition(&sctp.conditions, "Accepted"),
        ("False".into(), "UnsupportedProtocol".into())
    );
    assert!(
        gw_status
            .conditions
            .iter()
            .all(|c| c.is_true() && c.observed_generation == 3)
    );
    let listeners: Vec<&String> = t.gateways[&gw()][&ResourceType::Listener].keys().collect();
    assert_eq!(listeners, ["http-80", "http-8080", "http-8081"]);
}

#[test]
fn invalid_regular_expressions_reject_the_route_instead_of_misrouting() {
    for bad in [
        "[{path: {type: RegularExpression, value: '/a(('}}]",
        "[{headers: [{type: RegularExpression, name: x, value: '(?=look)'}]}]",
        "[{queryParams: [{type: RegularExpression, name: q, value: '[z-a]'}]}]",
    ] {
        let t = translate_yaml(&route(
            "r",
            "",
            &format!("  rules:\n  - matches: {bad}\n    backendRefs: [{{name: web, port: 8080}}]"),
        ));
        let conditions = parent_conditions(&t, "apps/r");
        let (status, reason) = condition(&conditions, "Accepted");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "UnsupportedValue"),
            "{bad}"
        );
        let message = &conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .unwrap()
            .message;
        assert!(message.contains("invalid RegularExpression"), "{message}");
        assert!(route_table(&t, "http-80").virtual_hosts.is_empty(), "{bad}");
    }
}

#[test]
fn invalid_or_unsupported_filters_reject_the_route() {
    let cases = [
        // ReplacePrefixMatch needs a PathPrefix match.
        "  rules:\n  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n    backendRefs: [{name: web, port: 8080}]",
        "  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]",
        "  rules:\n  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'bad name', value: x}]}}]\n    backendRefs: [{name: web, port: 8080}]",
        // A permanent cookie needs its lifetime; a session name must be a token.
        "  rules:\n  - sessionPersistence: {cookieConfig: {lifetimeType: Permanent}}\n    backendRefs: [{name: web, port: 8080}]",
        "  rules:\n  - sessionPersistence: {sessionName: 'a b'}\n    backendRefs: [{name: web, port: 8080}]",
        "  rules:\n  - sessionPersistence: {type: Header, sessionName: Content-Length}\n    backendRefs: [{name: web, port: 8080}]",
    ];
    for spec in cases {
        let t = translate_yaml(&route("r", "", spec));
        assert_eq!(
            condition(&parent_conditions(&t, "apps/r"), "Accepted"),
            ("False".into(), "UnsupportedValue".into()),
            "{spec}"
        );
    }
}

#[test]
fn conflicting_listeners_are_reported_and_not_served() {
    let yaml = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: conflicts, namespace: infra}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: first, port: 7000, protocol: HTTP, hostname: a.example}
  - {name: same-host, port: 7000, protocol: HTTP, hostname: A.example}
  - {name: other-host, port: 7000, protocol: HTTP, hostname: b.example}
  - {name: plain, port: 7001, protocol: HTTP}
  - {name: tls-same-port, port: 7001, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}
"#;
    let t = translate_yaml(yaml);
    let status = &t.status.gateways[&ObjectRef::new("infra", "conflicts")];
    let listener = |name: &str| status.listeners.iter().find(|l| l.name == name).unwrap();
    assert_eq!(
        condition(&listener("first").conditions, "Conflicted"),
        ("False".into(), "NoConflicts".into())
    );
    assert_eq!(
        condition(&listener("other-host").conditions, "Conflicted"),
        ("False".into(), "NoConflicts".into())
    );
    assert_eq!(
        condition(&listener("same-host").conditions, "Conflicted"),
        ("True".into(), "HostnameConflict".into())
    );
    assert_eq!(
        condition(&listener("same-host").conditions, "Programmed").0,
        "False"
    );
    // Still one route table for the port, with the two distinct hostnames only.
    let resources = &t.gateways[&ObjectRef::new("infra", "conflicts")];
    let table = super::route_rules::assembled_table(resources, "http-7000").unwrap();
    let domains: Vec<&str> = table
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(domains, ["a.example", "b.example"]);
}

const FAKE_CA: &str = "-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n";

fn backend_tls_objects(policies: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: ca, namespace: apps}}
data: {{ca.crt: "{FAKE_CA}"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: not-a-ca, namespace: apps}}
data: {{ca.crt: "hello"}}
---
{}{policies}"#,
        route(
            "tls",
            "",
            "  rules: [{backendRefs: [{name: web, port: 8080}, {name: web, port: 8081}]}]"
        )
    )
}

fn policy(name: &str, created: &str, target: &str, validation: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: apps, generation: 2, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: [{target}]\n  validation: {validation}\n---\n"
    )
}

fn policy_conditions(t: &Translation, name: &str) -> Vec<Condition> {
    let status = &t.status.backend_tls_policies[&ObjectRef::new("apps", name)];
    assert_eq!(status.ancestors.len(), 1, "{status:?}");
    assert_eq!(status.ancestors[0].parent_ref.name, "gw");
    status.ancestors[0].conditions.clone()
}

fn cluster(t: &Translation, name: &str) -> rauta_common::api::v1::Cluster {
    match &*t.gateways[&gw()][&ResourceType::Cluster][name] {
        Payload::Cluster(c) => (**c).clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn backend_tls_policy_conflicts_and_section_precedence() {
    let policies = [
        policy("older", "2026-01-01T00:00:00Z", "{group: '', kind: Service, name: web}", "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: older.example.com}"),
        policy("newer", "2026-02-01T00:00:00Z", "{group: '', kind: Service, name: web}", "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: newer.example.com}"),
        // Same age as "older": the name breaks the tie.
        policy("a-tie", "2026-01-01T00:00:00Z", "{group: '', kind: Service, name: web, sectionName: grpc}", "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: section.example.com}"),
        policy("b-tie", "2026-01-01T00:00:00Z", "{group: '', kind: Service, name: web, sectionName: grpc}", "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: loser.example.com}"),
    ]
    .concat();
    let t = translate_yaml(&backend_tls_objects(&policies));
    assert_eq!(
        condition(&policy_conditions(&t, "older"), "Accepted").1,
        "Accepted"
    );
    assert_eq!(
        condition(&policy_conditions(&t, "newer"), "Accepted"),
        ("False".into(), "Conflicted".into())
    );
    assert_eq!(
        condition(&policy_conditions(&t, "a-tie"), "Accepted").1,
        "Accepted"
    );
    assert_eq!(
        condition(&policy_conditions(&t, "b-tie"), "Accepted").1,
        "Conflicted"
    );
    // The port named by a section policy uses it; the other port the whole-Service winner.
    assert_eq!(
        cluster(&t, "apps/web:8081").tls.unwrap().server_name,
        "section.example.com"
    );
    assert_eq!(
        cluster(&t, "apps/web:8080").tls.unwrap().server_name,
        "older.example.com"
    );
}

#[test]
fn backend_tls_policy_with_invalid_ca_refs_fails_closed() {
    let policies = [
        policy("missing", "2026-01-01T00:00:00Z", "{group: '', kind: Service, name: web, sectionName: http}", "{caCertificateRefs: [{group: '', kind: ConfigMap, name: nope}], hostname: a.example.com}"),
        policy("malformed", "2026-01-01T00:00:00Z", "{group: '', kind: Service, name: web, sectionName: grpc}", "{caCertificateRefs: [{group: '', kind: ConfigMap, name: not-a-ca}], hostname: a.example.com}"),
        policy("kind", "2026-01-01T00:00:00Z", "{group: '', kind: Service, name: web, sectionName: grpc}", "{caCertificateRefs: [{group: '', kind: Secret, name: ca}], hostname: a.example.com}"),
    ]
    .concat();
    let t = translate_yaml(&backend_tls_objects(&policies));
    for (name, reason) in [
        ("missing", "InvalidCACertificateRef"),
        ("malformed", "InvalidCACertificateRef"),
        ("kind", "InvalidKind"),
    ] {
        let c = policy_conditions(&t, name);
        assert_eq!(
            condition(&c, "Accepted"),
            ("False".into(), "NoValidCACertificate".into()),
            "{name}"
        );
        assert_eq!(
            condition(&c, "ResolvedRefs"),
            ("False".into(), reason.into()),
            "{name}"
        );
    }
    // The cluster still speaks TLS, with nothing to trust: connections fail (a 5xx), never
    // fall back to cleartext.
    let tls = cluster(&t, "apps/web:8080").tls.unwrap();
    assert!(tls.ca_certificates_pem.is_empty() && !tls.system_roots);
}

#[test]
fn gateway_backend_client_certificate_reasons() {
    let gateway = |name: &str, r: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: rauta\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n  tls: {{backend: {{clientCertificateRef: {r}}}}}\n---\n"
        )
    };
    let docs = [
        gateway("ok", "{name: client}"),
        gateway("missing", "{name: nope}"),
        gateway("group", "{group: example.com, kind: Secret, name: client}"),
        gateway("kind", "{kind: ConfigMap, name: client}"),
        gateway("cross-ns", "{name: client, namespace: apps}"),
    ]
    .concat();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: client, namespace: infra}\nstringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"\n  tls.key: \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"\n---\n";
    let t = translate_yaml(&format!("{secret}{docs}"));
    for (name, status, reason) in [
        ("ok", "True", "ResolvedRefs"),
        ("missing", "False", "InvalidClientCertificateRef"),
        ("group", "False", "InvalidClientCertificateRef"),
        ("kind", "False", "InvalidClientCertificateRef"),
        ("cross-ns", "False", "RefNotPermitted"),
    ] {
        let s = &t.status.gateways[&ObjectRef::new("infra", name)];
        assert_eq!(
            condition(&s.conditions, "ResolvedRefs"),
            (status.into(), reason.into()),
            "{name}"
        );
        assert!(condition(&s.conditions, "Accepted").0 == "True", "{name}");
    }
    // Without the field there is no Gateway-level ResolvedRefs condition.
    assert!(
        t.status.gateways[&gw()]
            .conditions
            .iter()
            .all(|c| c.type_ != "ResolvedRefs")
    );
}

#[test]
fn gateway_addresses_of_unsupported_types_are_refused() {
    let gateway = |name: &str, addresses: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: rauta\n  addresses: {addresses}\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n---\n"
        )
    };
    let docs = [
        gateway("typed", "[{type: example.com/custom, value: x}]"),
        gateway("not-ip", "[{type: IPAddress, value: not-an-ip}]"),
        gateway("any", "[{type: IPAddress}]"),
        gateway("fixed", "[{value: 10.0.0.7}]"),
    ]
    .concat();
    let t = translate_yaml(&docs);
    let status = |name: &str| t.status.gateways[&ObjectRef::new("infra", name)].clone();
    for name in ["typed", "not-ip"] {
        assert_eq!(
            condition(&status(name).conditions, "Accepted"),
            ("False".into(), "UnsupportedAddress".into()),
            "{name}"
        );
    }
    assert_eq!(
        condition(&status("any").conditions, "Accepted").1,
        "Accepted"
    );
    assert!(
        status("any").requested_addresses.is_empty(),
        "no value: any address"
    );
    assert_eq!(
        status("fixed").requested_addresses,
        [("IPAddress".to_owned(), "10.0.0.7".to_owned())]
    );
}

#[test]
fn listener_and_gateway_reasons() {
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: infra}\nstringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"\n  tls.key: \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"\n---\n";
    let listeners = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: reasons, namespace: infra}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: plain, port: 7000, protocol: HTTP}
  - {name: same-port-tls, port: 7000, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
  - {name: missing-cert, port: 7001, protocol: HTTPS, tls: {certificateRefs: [{name: nope}]}}
  - {name: foreign-cert, port: 7002, protocol: HTTPS, tls: {certificateRefs: [{name: cert, namespace: apps}]}}
  - {name: no-tls, port: 7003, protocol: HTTPS}
  - {name: grpc-only, port: 7004, protocol: HTTP, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
  - {name: tcp-and-grpc, port: 7005, protocol: HTTP, allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: GRPCRoute}]}}
---
"#;
    let frontend = |name: &str, refs: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: rauta\n  tls: {{frontend: {{default: {{validation: {{caCertificateRefs: [{refs}], mode: AllowInsecureFallback}}}}}}}}\n  listeners: [{{name: https, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}]\n---\n"
        )
    };
    let params = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: params, namespace: infra}\nspec:\n  gatewayClassName: rauta\n  infrastructure: {parametersRef: {group: example.com, kind: Config, name: x}}\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n---\n";
    let t = translate_yaml(&format!(
        "{secret}{listeners}{}{}{params}",
        frontend("ca-missing", "{group: '', kind: ConfigMap, name: nope}"),
        frontend("ca-kind", "{group: '', kind: Secret, name: cert}"),
    ));
    let gateway = |name: &str| t.status.gateways[&ObjectRef::new("infra", name)].clone();
    let listener = |gw: &str, name: &str| {
        gateway(gw)
            .listeners
            .into_iter()
            .find(|l| l.name == name)
            .unwrap()
            .conditions
    };
    let r = |gw: &str, name: &str, ty: &str| condition(&listener(gw, name), ty);
    let no = |reason: &str| ("False".to_owned(), reason.to_owned());
    let yes = |reason: &str| ("True".to_owned(), reason.to_owned());
    assert_eq!(
        r("reasons", "same-port-tls", "Conflicted"),
        yes("ProtocolConflict")
    );
    assert_eq!(
        r("reasons", "same-port-tls", "Accepted"),
        no("PortUnavailable")
    );
    assert_eq!(
        r("reasons", "missing-cert", "ResolvedRefs"),
        no("InvalidCertificateRef")
    );
    assert_eq!(
        r("reasons", "foreign-cert", "ResolvedRefs"),
        no("RefNotPermitted")
    );
    assert_eq!(
        r("reasons", "no-tls", "Accepted"),
        no("InvalidTLSConfiguration")
    );
    assert_eq!(
        r("reasons", "grpc-only", "ResolvedRefs"),
        yes("ResolvedRefs")
    );
    assert_eq!(
        r("reasons", "tcp-and-grpc", "ResolvedRefs"),
        no("InvalidRouteKinds")
    );
    let kinds = |name: &str| {
        gateway("reasons")
            .listeners
            .into_iter()
            .find(|l| l.name == name)
            .unwrap()
            .supported_kinds
    };
    assert_eq!(kinds("grpc-only"), ["GRPCRoute"]);
    assert_eq!(kinds("tcp-and-grpc"), ["GRPCRoute"], "the valid kinds only");
    assert_eq!(kinds("plain"), ["HTTPRoute", "GRPCRoute"]);
    assert_eq!(
        r("ca-missing", "https", "Accepted"),
        no("NoValidCACertificate")
    );
    assert_eq!(
        r("ca-missing", "https", "ResolvedRefs"),
        no("InvalidCACertificateRef")
    );
    assert_eq!(
        r("ca-kind", "https", "ResolvedRefs"),
        no("InvalidCACertificateKind")
    );
    assert_eq!(
        condition(
            &gateway("ca-missing").conditions,
            "InsecureFrontendValidationMode"
        ),
        yes("ConfigurationChanged")
    );
    assert_eq!(
        condition(&gateway("params").conditions, "Accepted"),
        no("InvalidParameters")
    );
    // Some listeners invalid: still accepted, with the reason saying so.
    assert_eq!(
        condition(&gateway("reasons").conditions, "Accepted"),
        yes("ListenersNotValid")
    );
}

/// A GRPCRoute on the same Service port as HTTPRoutes use over HTTP/1.1.
const GRPC_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: rpc, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra, sectionName: http}]\n  hostnames: [rpc.example]\n  rules:\n  - matches: [{method: {service: pkg.Echo, method: Say}}, {method: {service: pkg.Admin}}]\n    backendRefs: [{name: web, port: 8080}]\n---\n";

#[test]
fn endpoint_refresh_matches_a_full_translation() {
    let routes = route(
        "web",
        "",
        "  rules: [{backendRefs: [{name: web, port: 8080}, {name: web, port: 8081}]}]",
    ) + GRPC_ROUTE;
    let (before_objects, problems) = parse_manifests(&format!("{BASE}---\n{routes}"));
    assert!(problems.is_empty(), "{problems:?}");
    let mut translator = Translator::new(DEFAULT_CONTROLLER_NAME);
    let before = translator.translate(&before_objects);
    let moved = format!(
        "{routes}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-new, namespace: apps, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 3000}}]\nendpoints: [{{addresses: [10.0.0.9]}}]\n---\n"
    );
    let (objects, problems) = parse_manifests(&format!("{BASE}---\n{moved}"));
    assert!(problems.is_empty(), "{problems:?}");
    let full = translate(&objects, DEFAULT_CONTROLLER_NAME);
    let mut refreshed = before.gateways.clone();
    translator.refresh_endpoints(&objects, &mut refreshed);
    assert_eq!(refreshed, full.gateways);
    assert_ne!(
        before.gateways, full.gateways,
        "the slice did change the endpoints"
    );
    // The same objects again: every cluster's endpoints are handed on as they were.
    let mut again = refreshed.clone();
    translator.refresh_endpoints(&objects, &mut again);
    let endpoints =
        |g: &BTreeMap<ObjectRef, ResourceSet>| g[&gw()][&ResourceType::Endpoints].clone();
    let (first, second) = (endpoints(&refreshed), endpoints(&again));
    assert!(!first.is_empty() && first.len() == second.len());
    assert!(
        first
            .iter()
            .zip(&second)
            .all(|((_, a), (_, b))| Arc::ptr_eq(a, b))
    );
}

#[test]
fn a_route_whose_rules_cannot_be_read_is_reported_not_dropped() {
    let (objects, problems) = parse_manifests(&format!(
        "{BASE}---\n{}",
        route(
            "r",
            "",
            "  rules: [{backendRefs: [{name: web, port: 8080}]}]"
        )
    ));
    assert!(problems.is_empty(), "{problems:?}");
    let mut gateways: BTreeMap<ObjectRef, gateway::GatewayView<'_>> = objects
        .gateways
        .iter()
        .map(|(key, gw)| (key.clone(), gateway::GatewayView::new(&objects, key, gw)))
        .collect();
    // As a GRPCRoute whose rules do not read back as HTTP rules would be.
    let routes = route_view::all(&objects);
    fn unreadable<'a>(entry: &route_view::RouteEntry<'a>) -> route_view::RouteView<'a> {
        let mut view = entry.view();
        view.rules = Err("GRPCRoute rules cannot be read as HTTP rules: test".into());
        view
    }
    let mut status = status::StatusReport::default();
    let compiled = attachment::attach_routes(
        &objects,
        DEFAULT_CONTROLLER_NAME,
        &routes,
        unreadable,
        &mut gateways,
        &mut status,
        &mut incremental::Compiler::fresh(&objects),
    );
    let parent = &status.http_routes[&ObjectRef::new("apps", "r")].parents[0];
    assert_eq!(
        condition(&parent.conditions, "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
    assert!(parent.conditions[0].message.contains("cannot be read"));
    assert!(compiled.values().all(|c| c.entries.is_empty()));
}
