//! manifests/ deploys what works: the controller and the proxy are started with the exact
//! arguments and environment their Deployments give them, against the fake API server
//! enforcing exactly the RBAC the manifests grant, and a request goes through. The ports the
//! Services, probes and flags name are checked against each other. What the kubelet would do
//! is done here: `$(VAR)` in arguments expanded from the container's environment, volumes
//! mounted (the projected ServiceAccount token issued by the fake API server, ConfigMaps
//! copied from it) at stand-in paths, and the Service's DNS name resolved to 127.0.0.1.

use std::path::{Path, PathBuf};
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

/// The container's environment as the kubelet sets it for a pod on this machine: fieldRefs
/// to the pod's IP, name and namespace, and literal values.
fn environment(deployment: &Value, pod: &str) -> Vec<(String, String)> {
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    container(deployment)["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_owned();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("status.podIP") => "127.0.0.1".to_owned(),
                Some("metadata.name") => pod.to_owned(),
                Some("metadata.namespace") => namespace.to_owned(),
                Some(other) => panic!("fieldRef {other} not simulated"),
                None => e["value"].as_str().unwrap_or_default().to_owned(),
            };
            (name, value)
        })
        .collect()
}

/// `$(NAME)` in arguments replaced by the environment's values, as the kubelet does.
fn expand(args: &[String], env: &[(String, String)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            env.iter()
                .fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
        })
        .collect()
}

/// Mounts the container's volumes under `root` as the kubelet would and returns the
/// (mount path, local directory) pairs: a projected ServiceAccount token is one the fake API
/// server issues for the pod's ServiceAccount and audience; a ConfigMap's keys are files
/// (waiting for the ConfigMap, as a pod does).
async fn mount_volumes(
    deployment: &Value,
    fake: &FakeApiServer,
    root: &Path,
) -> Vec<(String, PathBuf)> {
    let pod = &deployment["spec"]["template"]["spec"];
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let account = pod["serviceAccountName"].as_str().unwrap_or("default");
    let mut mounts = Vec::new();
    for mount in container(deployment)["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = mount["name"].as_str().expect("volume mount name");
        let path = mount["mountPath"].as_str().expect("mountPath").to_owned();
        let volume = pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume {name}"));
        let dir = root.join("volumes").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(sources) = volume["projected"]["sources"].as_array() {
            for source in sources {
                let token = &source["serviceAccountToken"];
                let audience = token["audience"].as_str().expect("a token audience");
                let file = token["path"].as_str().expect("token path");
                let issued = fake.issue_token(namespace, account, &[audience]);
                std::fs::write(dir.join(file), issued).unwrap();
            }
        } else if let Some(config_map) = volume["configMap"]["name"].as_str() {
            eventually(Duration::from_secs(20), || async {
                fake.object("v1", "ConfigMap", namespace, config_map)
                    .is_some()
            })
            .await;
            let object = fake
                .object("v1", "ConfigMap", namespace, config_map)
                .unwrap();
            for (key, value) in object["data"].as_object().expect("ConfigMap data") {
                std::fs::write(dir.join(key), value.as_str().unwrap()).unwrap();
            }
        } else if volume.get("emptyDir").is_some() {
            // An empty directory: made above.
        } else {
            panic!("volume {name}: kind not simulated");
        }
        mounts.push((path, dir));
    }
    mounts
}

/// Arguments with paths under mounts (or a mount itself, `--flag=PATH`) pointed at the local
/// directories standing in for them.
fn remount(args: &[String], mounts: &[(String, PathBuf)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            mounts.iter().fold(a.clone(), |a, (path, dir)| {
                let a = a.replace(&format!("{path}/"), &format!("{}/", dir.display()));
                match a.strip_suffix(&format!("={path}")) {
                    Some(flag) => format!("{flag}={}", dir.display()),
                    None => a,
                }
            })
        })
        .collect()
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
    let controller_host = format!("rauta-controller.{namespace}.svc");
    assert_eq!(
        flag(&proxy_args, "--controller").as_deref(),
        Some(format!("https://{controller_host}:{service_port}").as_str())
    );
    // Secure as shipped: no plaintext, no opting out of authentication.
    for args in [&controller_args, &proxy_args] {
        assert!(
            !args
                .iter()
                .any(|a| a == "--plaintext" || a.starts_with("--proxy-auth=none")),
            "{args:?}"
        );
    }
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
    let allowed_on = |verb, resource, ns, name| {
        grants
            .iter()
            .any(|g| g.allows_named(verb, "", resource, ns, Some(name)))
    };
    assert!(allowed_on(
        "update",
        "secrets",
        Some(namespace),
        "rauta-controller-ca"
    ));
    assert!(!allowed_on(
        "update",
        "secrets",
        Some(namespace),
        "someone-elses"
    ));
    assert!(!allowed_on(
        "update",
        "configmaps",
        Some("apps"),
        "rauta-controller-ca"
    ));
    assert!(!allowed("create", "", "secrets", Some("apps")));
    assert!(allowed(
        "create",
        "authentication.k8s.io",
        "tokenreviews",
        None
    ));

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
    let pod = "rauta-controller-7d9f-x2x4q";
    let env = environment(controller_deployment, pod);
    let mut args = expand(
        &without(&controller_args, &["--grpc-listen", "--metrics-listen"]),
        &env,
    );
    args.push(metrics);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("KUBECONFIG", kubeconfig.as_str()));
    let controller = Controller::start_as_deployed(&args, &env, ws.path());

    // The proxy likewise, with its volumes mounted and the controller's Service name
    // standing for this machine.
    let mounts = mount_volumes(proxy_deployment, &fake, ws.path()).await;
    let proxy_env = environment(proxy_deployment, "rauta-proxy-5c8d-q7k2m");
    let extra = remount(
        &expand(
            &without(
                &proxy_args,
                &[
                    "--controller",
                    "--gateway",
                    "--admin-listen",
                    "--listener-port-offset",
                ],
            ),
            &proxy_env,
        ),
        &mounts,
    );
    assert!(
        extra.iter().all(|a| !a.contains("/var/run/")),
        "a path outside the mounts: {extra:?}"
    );
    let mut extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    extra.extend(["--controller-server-name", &controller_host]);
    let proxy = Proxy::start_with(
        &format!("https://{}", controller.grpc),
        &gateway_ref,
        free_port() - 80,
        std::net::Ipv4Addr::LOCALHOST,
        ws.path(),
        &extra,
    );
    proxy.wait_ready().await;
    let url = format!("http://{}/", proxy.listener(80));
    eventually_served_by(&url, &echo.pod, Duration::from_secs(20)).await;
    // --state-dir is a mounted volume, where the proxy persists what it serves.
    let state_dir = flag(&proxy_args, "--state-dir").expect("--state-dir");
    let (_, local) = mounts
        .iter()
        .find(|(path, _)| *path == state_dir)
        .expect("--state-dir is a volume mount");
    eventually(Duration::from_secs(20), || async {
        local
            .join(rauta_proxy::config::persisted::STATE_FILE)
            .exists()
    })
    .await;
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
            && gateway["status"]["addresses"]
                == serde_json::json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    })
    .await;
    // The proxy came in as the fleet's ServiceAccount, over TLS from the controller's CA.
    let log = controller.process.log_text();
    assert!(
        log.contains("serviceaccount rauta-system/rauta-proxy"),
        "{log}"
    );
    assert!(log.contains("created a CA"), "{log}");
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

/// The opt-in kernel fast path variant is 40-proxy.yaml's Deployment with only what XDP needs
/// changed (so the two cannot drift apart), and the proxy accepts its flags.
#[test]
fn the_xdp_variant_is_the_proxy_deployment_plus_what_xdp_needs() {
    let base = find(&manifests(), "Deployment", "rauta-proxy").clone();
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/optional/proxy-xdp.yaml");
    let text = std::fs::read_to_string(&path).expect("manifests/optional/proxy-xdp.yaml");
    let variant: Value = serde_saphyr::from_str(&text).expect("one Deployment");
    let args = strings(&container(&variant)["args"]);
    assert_eq!(flag(&args, "--xdp-interface").as_deref(), Some("eth0"));
    assert_eq!(flag(&args, "--xdp-mode").as_deref(), Some("generic"));
    let mut undone = variant.clone();
    let spec = &mut undone["spec"]["template"]["spec"];
    assert_eq!(
        spec["securityContext"]["sysctls"][0],
        serde_json::json!({"name": "net.ipv4.tcp_syncookies", "value": "2"})
    );
    spec.as_object_mut().unwrap().remove("securityContext");
    let c = &mut spec["containers"][0];
    c["args"] = serde_json::json!(without(&args, &["--xdp-interface", "--xdp-mode"]));
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN"])
    );
    c["securityContext"] =
        base["spec"]["template"]["spec"]["containers"][0]["securityContext"].clone();
    assert_eq!(undone, base, "proxy-xdp.yaml drifted from 40-proxy.yaml");

    // The flags parse (an interface that does not exist: one warning, user space serves).
    let help = std::process::Command::new(rauta_tests::harness::bin("rauta-proxy"))
        .arg("--help")
        .output()
        .expect("rauta-proxy --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--xdp-interface") && help.contains("--xdp-mode"),
        "{help}"
    );
}

#[test]
fn the_proxy_fleet_scales_on_cpu_with_stated_bounds() {
    let docs = manifests();
    let hpa = find(&docs, "HorizontalPodAutoscaler", "rauta-proxy");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (&target["kind"], &target["name"]),
        (&"Deployment".into(), &"rauta-proxy".into())
    );
    let deployment = find(&docs, "Deployment", "rauta-proxy");
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the autoscaler owns the replica count; a fixed one would be put back on each apply"
    );
    let (min, max) = (
        hpa["spec"]["minReplicas"].as_u64().expect("minReplicas"),
        hpa["spec"]["maxReplicas"].as_u64().expect("maxReplicas"),
    );
    // The disruption budget lets one proxy go at a time: at least two keep serving.
    assert!((3..=max).contains(&min), "{min}..{max}");
    let metric = &hpa["spec"]["metrics"][0]["resource"];
    assert_eq!(metric["name"], "cpu");
    assert!(
        metric["target"]["averageUtilization"]
            .as_u64()
            .is_some_and(|u| (1..=100).contains(&u))
    );
    // Utilization is relative to the request: without one the autoscaler cannot act.
    assert!(
        container(deployment)["resources"]["requests"]["cpu"].is_string(),
        "the proxy container requests CPU"
    );
}
