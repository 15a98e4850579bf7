//! manifests/ deploys what works: the controller and the proxy are started with the exact
//! arguments and environment their Deployments give them, against the fake API server
//! enforcing exactly the RBAC the manifests grant, and a request goes through. The ports the
//! Services, probes and flags name are checked against each other.

use std::path::PathBuf;
use std::time::Duration;

use rauta_tests::fake_kube::{FakeApiServer, Grant};
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, eventually, eventually_served_by, free_port,
};
use rauta_tests::manifests::{CONTROLLER_NAME, documents, http_route, service};
use serde_json::Value;

fn manifests() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("manifests/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            serde_saphyr::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        })
        .filter(Value::is_object)
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in manifests/"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The value of `--name=value` or `--name value` in a container's args.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{name}="))
            .map(str::to_owned)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

/// The args without these flags (each written `--name=value`).
fn without(args: &[String], names: &[&str]) -> Vec<String> {
    args.iter()
        .filter(|a| !names.iter().any(|n| a.starts_with(&format!("{n}="))))
        .cloned()
        .collect()
}

/// The containerPort a named port stands for.
fn container_port(deployment: &Value, name: &str) -> u64 {
    container(deployment)["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// Every rule bound to the service account, as the fake API server enforces them.
fn grants(docs: &[Value], namespace: &str, account: &str) -> Vec<Grant> {
    let mut out = Vec::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let bound = binding["subjects"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace
            })
        });
        if !bound {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().expect("roleRef.kind");
        let role_name = binding["roleRef"]["name"].as_str().expect("roleRef.name");
        let role = find(docs, role_kind, role_name);
        let scope = (binding["kind"] == "RoleBinding")
            .then(|| binding["metadata"]["namespace"].as_str().map(str::to_owned))
            .flatten();
        for rule in role["rules"].as_array().expect("rules") {
            out.push(Grant {
                namespace: scope.clone(),
                api_groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                resource_names: strings(&rule["resourceNames"]),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployments_serve_traffic_with_the_rbac_they_are_given() {
    let docs = manifests();
    let controller_deployment = find(&docs, "Deployment", "rauta-controller");
    let proxy_deployment = find(&docs, "Deployment", "rauta-proxy");
    let controller_args = strings(&container(controller_deployment)["args"]);
    let proxy_args = strings(&container(proxy_deployment)["args"]);
    let account = controller_deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let namespace = controller_deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    find(&docs, "ServiceAccount", account);

    // The names and ports that tie the pieces together agree.
    let grpc_port = port_of(&flag(&controller_args, "--grpc-listen").expect("--grpc-listen"));
    assert_eq!(container_port(controller_deployment, "grpc"), grpc_port);
    let controller_service = find(&docs, "Service", "rauta-controller");
    let service_port = controller_service["spec"]["ports"][0]["port"]
        .as_u64()
        .unwrap();
    assert_eq!(
        flag(&proxy_args, "--controller").as_deref(),
        Some(format!("http://rauta-controller.{namespace}.svc:{service_port}").as_str())
    );
    let admin_port = port_of(&flag(&proxy_args, "--admin-listen").expect("--admin-listen"));
    assert_eq!(container_port(proxy_deployment, "admin"), admin_port);
    let offset: u64 = flag(&proxy_args, "--listener-port-offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let gateway = find(&docs, "Gateway", "rauta");
    let listener_port = gateway["spec"]["listeners"][0]["port"].as_u64().unwrap();
    assert_eq!(
        container_port(proxy_deployment, "http"),
        listener_port + offset
    );
    let gateway_ref = format!(
        "{}/{}",
        gateway["metadata"]["namespace"].as_str().unwrap(),
        gateway["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(flag(&proxy_args, "--gateway"), Some(gateway_ref.clone()));
    assert_eq!(
        find(&docs, "GatewayClass", "rauta")["spec"]["controllerName"],
        CONTROLLER_NAME
    );

    // The grants are narrow: no writes outside status and the Lease in our namespace.
    let grants = grants(&docs, namespace, account);
    assert!(!grants.is_empty());
    let allowed =
        |verb, group, resource, ns| grants.iter().any(|g| g.allows(verb, group, resource, ns));
    assert!(!allowed(
        "patch",
        "gateway.networking.k8s.io",
        "httproutes",
        Some("apps")
    ));
    assert!(!allowed(
        "update",
        "coordination.k8s.io",
        "leases",
        Some("default")
    ));
    assert!(!allowed("patch", "", "services", Some("apps")));

    // The cluster: the manifests' own objects, and an app with a route to the Gateway.
    let ws = Workspace::new();
    let echo = Echo::start("app-1-a", "apps", ws.path());
    let fake = FakeApiServer::start().await;
    fake.enforce(grants);
    for doc in &docs {
        fake.apply(doc.clone());
    }
    let rule = "  - backendRefs:\n    - {name: app, port: 8080}\n";
    let (gw_ns, gw_name) = gateway_ref.split_once('/').unwrap();
    fake.apply_yaml(&documents(&[
        service("apps", "app", &[echo.http]),
        http_route("apps", "app", (gw_ns, gw_name), &[], rule),
    ]));

    // The controller exactly as deployed, but for where it listens (this machine, not a pod).
    let kubeconfig = fake.kubeconfig(ws.path());
    let metrics = format!("--metrics-listen=127.0.0.1:{}", free_port());
    let mut args = without(&controller_args, &["--grpc-listen", "--metrics-listen"]);
    args.push(metrics);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let controller = Controller::start_as_deployed(
        &args,
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("POD_NAME", "rauta-controller-7d9f-x2x4q"),
            ("POD_NAMESPACE", namespace),
        ],
        ws.path(),
    );
    let extra = without(
        &proxy_args,
        &[
            "--controller",
            "--gateway",
            "--admin-listen",
            "--listener-port-offset",
        ],
    );
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let proxy = Proxy::start_with(
        &controller.url(),
        &gateway_ref,
        free_port() - 80,
        std::net::Ipv4Addr::LOCALHOST,
        ws.path(),
        &extra,
    );
    proxy.wait_ready().await;
    let url = format!("http://{}/", proxy.listener(80));
    eventually_served_by(&url, &echo.pod, Duration::from_secs(20)).await;
    eventually(Duration::from_secs(20), || async {
        let gateway = fake
            .object("gateway.networking.k8s.io/v1", "Gateway", gw_ns, gw_name)
            .unwrap();
        gateway["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Programmed" && c["status"] == "True")
            })
    })
    .await;
    let lease = fake
        .object(
            "coordination.k8s.io/v1",
            "Lease",
            namespace,
            "rauta-controller",
        )
        .expect("lease");
    assert_eq!(
        lease["spec"]["holderIdentity"],
        "rauta-controller-7d9f-x2x4q"
    );
    assert_eq!(fake.denied(), Vec::<String>::new(), "requests RBAC refused");
}
