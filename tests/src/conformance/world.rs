//! A cluster without Kubernetes: objects written into the controller's config directory,
//! echo instances standing in for the pods of every Deployment, EndpointSlices generated from
//! Service selectors, and one rauta-proxy per Gateway under test, each on its own loopback IP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::Rng;
use serde_json::{Value, json};

use super::case::{Action, NsName};
use super::grpc::GrpcEchoServer;
use crate::echo::{EchoIdentity, EchoServer, EchoTls};
use crate::fake_kube::FakeApiServer;
use crate::harness::{Controller, Proxy};

/// The GatewayClass every Gateway in the suite is switched to, and its controller.
pub const CLASS_NAME: &str = "rauta";
pub const CONTROLLER_NAME: &str = "rauta.dev/gateway-controller";
/// Gateway listener port P is served on P + this.
pub const PORT_OFFSET: u16 = 20000;

/// (kind, namespace, name); namespace empty for cluster-scoped kinds.
pub type ObjKey = (String, String, String);

fn is_cluster_scoped(kind: &str) -> bool {
    matches!(kind, "GatewayClass" | "Namespace")
}

pub fn key_of(v: &Value) -> Option<ObjKey> {
    let kind = v.get("kind")?.as_str()?.to_owned();
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_owned();
    let ns = if is_cluster_scoped(&kind) {
        String::new()
    } else {
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned()
    };
    Some((kind, ns, name))
}

/// Reads a multi-document YAML file into JSON values.
pub fn read_manifests(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn random_alnum(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)]))
        .collect()
}

/// Pods of one Deployment.
struct Pods {
    labels: BTreeMap<String, String>,
    instances: Vec<EchoServer>,
    /// In gRPC mode (GRPC_ECHO_SERVER set), each pod's gRPC echo, by instance: it takes the
    /// container port 3000 that the HTTP echo has otherwise.
    grpc: Vec<GrpcEchoServer>,
    /// The pods of a TCP, UDP or DNS Deployment (then `instances` and `grpc` are empty).
    l4: Vec<super::l4::L4Pod>,
}

/// Where the runner puts the objects for the controller to find.
enum Cluster {
    /// Files in the directory a standalone controller watches.
    Directory(PathBuf),
    /// An API server a `--kubernetes` controller lists and watches, and what is in it.
    Kubernetes {
        api: FakeApiServer,
        synced: Mutex<BTreeMap<ObjKey, Value>>,
    },
}

pub struct World {
    cluster: Cluster,
    pub controller: Controller,
    proxies: BTreeMap<NsName, Proxy>,
    next_ip: u8,
    base: BTreeMap<ObjKey, Value>,
    case: BTreeMap<ObjKey, Value>,
    /// Base objects as they were before the case (a case may patch them).
    base_before_case: BTreeMap<ObjKey, Value>,
    deployments: BTreeMap<ObjKey, Pods>,
    /// Generations before the last action, for `generation_changed`.
    generations_before: BTreeMap<ObjKey, i64>,
    /// Values a phase patch replaced, for a later `"<original value>"` patch.
    originals: BTreeMap<(ObjKey, String), Value>,
    /// What PLACEHOLDER_USABLE_ADDRS / PLACEHOLDER_UNUSABLE_ADDRS became.
    pub usable_addresses: Vec<String>,
    pub unusable_addresses: Vec<String>,
    /// Declared last so it is removed after the processes (and their logs) are gone.
    work: tempfile::TempDir,
}

impl World {
    /// Starts the controller with the base manifests (and their backends) applied: in
    /// standalone mode, or with `kubernetes` in Kubernetes mode against the fake API server.
    pub async fn start(base_manifests: &Path, kubernetes: bool) -> Result<World, String> {
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (cluster, controller) = if kubernetes {
            let api = FakeApiServer::start().await;
            let kubeconfig = api.kubeconfig(work.path());
            let controller = Controller::start_kubernetes(&kubeconfig, work.path(), &[]);
            let synced = Mutex::new(BTreeMap::new());
            (Cluster::Kubernetes { api, synced }, controller)
        } else {
            let config = work.path().join("config");
            std::fs::create_dir(&config).map_err(|e| e.to_string())?;
            let controller = Controller::start(&config, work.path());
            (Cluster::Directory(config), controller)
        };
        let mut world = World {
            work,
            cluster,
            controller,
            proxies: BTreeMap::new(),
            next_ip: 10,
            base: BTreeMap::new(),
            case: BTreeMap::new(),
            base_before_case: BTreeMap::new(),
            deployments: BTreeMap::new(),
            generations_before: BTreeMap::new(),
            originals: BTreeMap::new(),
            usable_addresses: Vec::new(),
            unusable_addresses: Vec::new(),
        };
        let class = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": CLASS_NAME}, "spec": {"controllerName": CONTROLLER_NAME},
        });
        // Generated Secrets first: TLS backends in the base manifests mount them.
        let mut docs = super::certs::generated_objects()?;
        docs.push(class);
        docs.extend(read_manifests(base_manifests)?);
        for doc in docs {
            world.insert(doc, false).await?;
        }
        world.write_files()?;
        Ok(world)
    }

    /// Adds (or replaces) an object as `kubectl apply` would, starting pods for Deployments.
    async fn insert(&mut self, mut doc: Value, in_case: bool) -> Result<(), String> {
        let key = key_of(&doc).ok_or_else(|| format!("manifest without kind/name: {doc}"))?;
        let (kind, ns, name) = &key;
        if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
            if !is_cluster_scoped(kind) {
                meta.insert("namespace".into(), json!(ns));
            }
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
        }
        match kind.as_str() {
            "Gateway" => {
                doc["spec"]["gatewayClassName"] = json!(CLASS_NAME);
                self.fill_static_addresses(ns, name, &mut doc);
            }
            "GatewayClass" if *name != CLASS_NAME => {
                doc["spec"]["controllerName"] = json!(CONTROLLER_NAME)
            }
            "Deployment" => self.start_pods(&key, &doc).await?,
            _ => {}
        }
        if in_case {
            &mut self.case
        } else {
            &mut self.base
        }
        .insert(key, doc);
        Ok(())
    }

    async fn start_pods(&mut self, key: &ObjKey, doc: &Value) -> Result<(), String> {
        let replicas = doc["spec"]["replicas"].as_u64().unwrap_or(1).max(1);
        let labels: BTreeMap<String, String> = doc["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let replica_set = random_alnum(9);
        let grpc_mode = container_env(&doc["spec"]["template"]["spec"], "GRPC_ECHO_SERVER")
            .is_some_and(|v| !v.is_empty());
        let tls = self
            .echo_tls(&key.1, &doc["spec"]["template"]["spec"])
            .map_err(|e| format!("Deployment {}/{}: {e}", key.1, key.2))?;
        if let Some(mode) = super::l4::mode_of(&doc["spec"]["template"]["spec"]) {
            let service =
                container_env(&doc["spec"]["template"]["spec"], "SERVICE_NAME").unwrap_or_default();
            let identities = (0..replicas)
                .map(|_| EchoIdentity {
                    pod: format!("{}-{replica_set}-{}", key.2, random_alnum(5)),
                    namespace: key.1.clone(),
                    service: service.to_owned(),
                    ..Default::default()
                })
                .collect();
            let l4 = super::l4::start_pods(mode, identities, tls.as_ref())
                .await
                .map_err(|e| format!("starting {mode} pods for {}/{}: {e}", key.1, key.2))?;
            let (instances, grpc) = (Vec::new(), Vec::new());
            self.deployments.insert(
                key.clone(),
                Pods {
                    labels,
                    instances,
                    grpc,
                    l4,
                },
            );
            return Ok(());
        }
        let mut instances = Vec::new();
        let mut grpc = Vec::new();
        for _ in 0..replicas {
            let identity = EchoIdentity {
                pod: format!("{}-{replica_set}-{}", key.2, random_alnum(5)),
                namespace: key.1.clone(),
                ..Default::default()
            };
            let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let mut server = EchoServer::start(localhost, 0, Some(0), identity)
                .await
                .map_err(|e| format!("starting echo for {}/{}: {e}", key.1, key.2))?;
            if let Some(tls) = &tls {
                server
                    .serve_tls(localhost, 0, tls)
                    .await
                    .map_err(|e| format!("starting TLS echo for {}/{}: {e}", key.1, key.2))?;
            }
            if grpc_mode {
                let echo = GrpcEchoServer::start(server.identity().clone())
                    .await
                    .map_err(|e| format!("starting gRPC echo for {}/{}: {e}", key.1, key.2))?;
                grpc.push(echo);
            }
            instances.push(server);
        }
        let l4 = Vec::new();
        self.deployments.insert(
            key.clone(),
            Pods {
                labels,
                instances,
                grpc,
                l4,
            },
        );
        Ok(())
    }

    /// Replaces the static-address placeholders as upstream's suite flags would: the usable
    /// address is the one the Gateway's proxy listens on, the unusable one a TEST-NET-1
    /// address no proxy has.
    fn fill_static_addresses(&mut self, ns: &str, name: &str, doc: &mut Value) {
        let Some(addresses) = doc["spec"]["addresses"].as_array_mut() else {
            return;
        };
        for a in addresses.iter_mut() {
            let value = match a["value"].as_str() {
                Some("PLACEHOLDER_USABLE_ADDRS") => {
                    let gw = NsName {
                        namespace: ns.to_owned(),
                        name: name.to_owned(),
                    };
                    let ip = self.gateway_ip(&gw).to_string();
                    self.usable_addresses.push(ip.clone());
                    ip
                }
                Some("PLACEHOLDER_UNUSABLE_ADDRS") => {
                    let ip = "192.0.2.1".to_owned();
                    self.unusable_addresses.push(ip.clone());
                    ip
                }
                _ => continue,
            };
            *a = json!({"type": "IPAddress", "value": value});
        }
    }

    /// The TLS settings echo-basic would read from a pod's TLS_* variables and mounted files.
    fn echo_tls(&self, namespace: &str, pod: &Value) -> Result<Option<EchoTls>, String> {
        let env = |name: &str| container_env(pod, name);
        // The TCP echo reads its key from TLS_SERVER_PRIV_KEY, the HTTP echo from ..._PRIVKEY.
        let key = env("TLS_SERVER_PRIVKEY").or_else(|| env("TLS_SERVER_PRIV_KEY"));
        let (Some(cert), Some(key)) = (env("TLS_SERVER_CERT"), key) else {
            return Ok(None);
        };
        Ok(Some(EchoTls {
            chain_pem: self.mounted_file(namespace, pod, cert)?,
            key_pem: self.mounted_file(namespace, pod, key)?,
            client_cas_pem: env("TLS_CLIENT_CACERTS")
                .map(|p| self.mounted_file(namespace, pod, p))
                .transpose()?,
        }))
    }

    /// The content of a file a pod sees through a Secret or ConfigMap volume.
    fn mounted_file(&self, namespace: &str, pod: &Value, path: &str) -> Result<String, String> {
        let mounts = pod["containers"][0]["volumeMounts"].as_array();
        let (mount, file) = mounts
            .into_iter()
            .flatten()
            .find_map(|m| {
                let dir = m["mountPath"].as_str()?.trim_end_matches('/');
                let file = path.strip_prefix(dir)?.strip_prefix('/')?;
                Some((m["name"].as_str()?, file))
            })
            .ok_or_else(|| format!("{path} is not on a mounted volume"))?;
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount)
            .ok_or_else(|| format!("volume {mount} is not defined"))?;
        let (source, kind) = if volume["secret"].is_object() {
            (&volume["secret"], "Secret")
        } else {
            (&volume["configMap"], "ConfigMap")
        };
        let object_name = source["secretName"]
            .as_str()
            .or_else(|| source["name"].as_str())
            .ok_or_else(|| format!("volume {mount} names no object"))?;
        let data_key = source["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["path"] == file)
            .and_then(|i| i["key"].as_str())
            .unwrap_or(file);
        let reference = format!("{namespace}/{object_name}");
        if kind == "Secret" {
            self.secret_text(&reference, data_key)
        } else {
            self.object("ConfigMap", namespace, object_name)
                .and_then(|cm| cm["data"][data_key].as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("ConfigMap {reference} has no {data_key}"))
        }
    }

    /// Applies a case's manifests on top of the base.
    pub async fn apply_case(&mut self, dir: &Path, manifests: &[String]) -> Result<(), String> {
        self.base_before_case = self.base.clone();
        for m in manifests {
            for doc in read_manifests(&dir.join(m))? {
                self.insert(doc, true).await?;
            }
        }
        self.write_files()
    }

    /// Deletes the case's objects, restores base objects it changed, stops its proxies.
    pub fn clear_case(&mut self) -> Result<(), String> {
        let case_keys: Vec<ObjKey> = self.case.keys().cloned().collect();
        for key in &case_keys {
            self.deployments.remove(key);
        }
        self.case.clear();
        self.originals.clear();
        self.usable_addresses.clear();
        self.unusable_addresses.clear();
        self.base = std::mem::take(&mut self.base_before_case);
        let base_gateways: BTreeSet<NsName> = self.gateways_in(&self.base);
        self.proxies.retain(|gw, _| base_gateways.contains(gw));
        self.write_files()
    }

    fn gateways_in(&self, map: &BTreeMap<ObjKey, Value>) -> BTreeSet<NsName> {
        map.keys()
            .filter(|k| k.0 == "Gateway")
            .map(|k| NsName {
                namespace: k.1.clone(),
                name: k.2.clone(),
            })
            .collect()
    }

    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<&Value> {
        let ns = if is_cluster_scoped(kind) {
            ""
        } else {
            namespace
        };
        let key = (kind.to_owned(), ns.to_owned(), name.to_owned());
        self.case.get(&key).or_else(|| self.base.get(&key))
    }

    /// In Kubernetes mode, every object of these kinds as the API server holds it, status
    /// included; None in standalone mode.
    pub fn cluster_objects(&self, kinds: &[&str]) -> Option<Vec<Value>> {
        let Cluster::Kubernetes { api, .. } = &self.cluster else {
            return None;
        };
        let api_version = "gateway.networking.k8s.io/v1";
        Some(
            kinds
                .iter()
                .flat_map(|k| api.objects(api_version, k))
                .collect(),
        )
    }

    /// The generation the runner last gave an object (what an API server would report).
    pub fn generation(&self, kind: &str, namespace: &str, name: &str) -> Option<i64> {
        self.object(kind, namespace, name)
            .and_then(|v| v["metadata"]["generation"].as_i64())
    }

    pub fn generation_before_action(&self, kind: &str, namespace: &str, name: &str) -> Option<i64> {
        let ns = if is_cluster_scoped(kind) {
            ""
        } else {
            namespace
        };
        self.generations_before
            .get(&(kind.to_owned(), ns.to_owned(), name.to_owned()))
            .copied()
    }

    /// Objects of a kind in a namespace (for namespace-wide checks).
    pub fn objects_of(&self, kind: &str, namespace: &str) -> Vec<&Value> {
        self.base
            .iter()
            .chain(self.case.iter())
            .filter(|(k, _)| k.0 == kind && k.1 == namespace)
            .map(|(_, v)| v)
            .collect()
    }

    /// Carries out a phase action (create, delete, patch).
    pub async fn act(&mut self, action: &Action) -> Result<(), String> {
        let ns = if is_cluster_scoped(&action.kind) {
            String::new()
        } else {
            action.namespace.clone()
        };
        let key = (action.kind.clone(), ns, action.name.clone());
        self.generations_before = self
            .base
            .iter()
            .chain(self.case.iter())
            .filter_map(|(k, v)| Some((k.clone(), v["metadata"]["generation"].as_i64()?)))
            .collect();
        let mut rest = match self.expand_value(&Value::Object(action.rest.clone()))? {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        match action.op.as_str() {
            "delete" => {
                self.case
                    .remove(&key)
                    .or_else(|| self.base.remove(&key))
                    .ok_or_else(|| format!("delete: no {key:?}"))?;
                self.deployments.remove(&key);
            }
            "create" => {
                let manifest = match rest.get("manifest") {
                    Some(m) => m.clone(),
                    None => {
                        // A small object given inline (e.g. a ConfigMap and its data).
                        let mut m = json!({
                            "apiVersion": if matches!(action.kind.as_str(), "ConfigMap" | "Secret") { "v1" } else { "gateway.networking.k8s.io/v1" },
                            "kind": action.kind, "metadata": {"name": action.name, "namespace": action.namespace},
                        });
                        for (k, v) in &rest {
                            if k != "description" {
                                m[k] = v.clone();
                            }
                        }
                        m
                    }
                };
                self.insert(manifest, true).await?;
            }
            "patch" => {
                let in_case = self.case.contains_key(&key);
                let map = if in_case {
                    &mut self.case
                } else {
                    &mut self.base
                };
                let object = map
                    .get_mut(&key)
                    .ok_or_else(|| format!("patch: no {key:?}"))?;
                let spec_before = object.get("spec").cloned();
                if let Some(set) = rest.get_mut("set").and_then(Value::as_object_mut) {
                    for (path, value) in set.iter_mut() {
                        let slot = (key.clone(), path.clone());
                        if value == "<original value>" {
                            *value = self
                                .originals
                                .get(&slot)
                                .cloned()
                                .ok_or_else(|| format!("no original value of {path}"))?;
                        } else if let std::collections::btree_map::Entry::Vacant(e) =
                            self.originals.entry(slot)
                        {
                            e.insert(path_mut(&mut object.clone(), path)?.clone());
                        }
                    }
                }
                if let Some(i) = rest.remove("remove_address_index").and_then(|i| i.as_u64()) {
                    let list = object["spec"]["addresses"]
                        .as_array_mut()
                        .ok_or("remove_address_index: no spec.addresses")?;
                    let i = usize::try_from(i).unwrap_or(usize::MAX);
                    if i >= list.len() {
                        return Err(format!("remove_address_index: no address {i}"));
                    }
                    list.remove(i);
                }
                if let Some(which) = rest.remove("remove_address") {
                    let values = match which.as_str() {
                        Some("unusable") => self.unusable_addresses.clone(),
                        Some("usable") => self.usable_addresses.clone(),
                        _ => return Err(format!("remove_address: unknown {which}")),
                    };
                    if let Some(list) = object["spec"]["addresses"].as_array_mut() {
                        list.retain(|a| {
                            a["value"]
                                .as_str()
                                .is_none_or(|v| !values.iter().any(|u| u == v))
                        });
                    }
                }
                apply_patch(object, &rest)?;
                if object.get("spec").cloned() != spec_before {
                    let g = object["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(g + 1);
                }
            }
            other => return Err(format!("unsupported action {other:?}")),
        }
        self.write_files()
    }

    /// The address requests for a Gateway go to (its proxy's IP), starting the proxy if needed.
    pub fn gateway_ip(&mut self, gw: &NsName) -> Ipv4Addr {
        if let Some(p) = self.proxies.get(gw) {
            return p.bind;
        }
        let ip = Ipv4Addr::new(127, 0, 0, self.next_ip);
        self.next_ip = self.next_ip.wrapping_add(1).max(10);
        let proxy = Proxy::start_on(
            &self.controller.url(),
            &format!("{}/{}", gw.namespace, gw.name),
            PORT_OFFSET,
            ip,
            self.work.path(),
        );
        self.proxies.insert(gw.clone(), proxy);
        ip
    }

    /// The socket for a Gateway listener port.
    pub fn listener_addr(&mut self, gw: &NsName, port: u16) -> SocketAddr {
        SocketAddr::from((self.gateway_ip(gw), port + PORT_OFFSET))
    }

    /// The port of a Gateway's first listener.
    pub fn first_listener_port(&self, gw: &NsName) -> Option<u16> {
        let v = self.object("Gateway", &gw.namespace, &gw.name)?;
        v["spec"]["listeners"][0]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
    }

    /// Replaces `{secret:ns/name:key}` and `{configmap:ns/name:key}` with that content.
    pub fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{secret:").or_else(|| rest.find("{configmap:")) {
            let end = rest[start..]
                .find('}')
                .map(|e| start + e)
                .ok_or_else(|| format!("unterminated placeholder in {text:?}"))?;
            let (kind, spec) = rest[start + 1..end]
                .split_once(':')
                .ok_or_else(|| format!("bad placeholder in {text:?}"))?;
            let (reference, key) = spec
                .rsplit_once(':')
                .ok_or_else(|| format!("bad placeholder in {text:?}"))?;
            let value = if kind == "secret" {
                self.secret_text(reference, key)?
            } else {
                let (ns, name) = reference.split_once('/').unwrap_or(("", reference));
                self.object("ConfigMap", ns, name)
                    .and_then(|cm| cm["data"][key].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| format!("ConfigMap {reference} has no {key}"))?
            };
            out.push_str(&rest[..start]);
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn expand_value(&self, v: &Value) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => Value::String(self.expand(s)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.expand_value(i))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.expand_value(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    /// A key of a Secret ("namespace/name"), decoded.
    pub fn secret_text(&self, reference: &str, key: &str) -> Result<String, String> {
        use base64::Engine;
        let (ns, name) = reference
            .split_once('/')
            .ok_or_else(|| format!("bad secret reference {reference:?}"))?;
        let secret = self
            .object("Secret", ns, name)
            .ok_or_else(|| format!("no Secret {reference}"))?;
        let encoded = secret["data"][key]
            .as_str()
            .ok_or_else(|| format!("Secret {reference} has no {key}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("Secret {reference}: {e}"))?;
        String::from_utf8(bytes).map_err(|e| format!("Secret {reference}: {e}"))
    }

    /// Raw request targets received by the pods of a Deployment.
    pub fn received_by(&self, namespace: &str, deployment: &str) -> Vec<String> {
        let key = (
            "Deployment".to_owned(),
            namespace.to_owned(),
            deployment.to_owned(),
        );
        self.deployments
            .get(&key)
            .map(|p| p.instances.iter().flat_map(EchoServer::received).collect())
            .unwrap_or_default()
    }

    fn endpoint_slices(&self) -> Vec<Value> {
        let mut out = Vec::new();
        // Manual IPv4 slices get the infra-backend-v1 pods, as upstream fills them before its
        // requests; one slice per pod, since each local pod listens on its own port.
        for ((_, ns, name), slice) in self.case.iter().filter(|(_, v)| is_manual_slice(v)) {
            let pods = self.deployments.get(&(
                "Deployment".to_owned(),
                ns.clone(),
                MANUAL_SLICE_BACKEND.to_owned(),
            ));
            for (i, instance) in pods.into_iter().flat_map(|p| &p.instances).enumerate() {
                let mut filled = slice.clone();
                filled["metadata"]["name"] = json!(format!("{name}-{i}"));
                for port in filled["ports"].as_array_mut().into_iter().flatten() {
                    if port["port"] == 3000 {
                        port["port"] = json!(instance.http.port());
                    }
                }
                filled["endpoints"] = json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": instance.identity().pod, "namespace": ns}}]);
                out.push(filled);
            }
        }
        for ((kind, ns, name), svc) in self.base.iter().chain(self.case.iter()) {
            if kind != "Service" {
                continue;
            }
            let Some(selector) = svc["spec"]["selector"].as_object() else {
                continue;
            };
            let pods = self.deployments.iter().filter(|((_, dns, _), pods)| {
                dns == ns
                    && !selector.is_empty()
                    && selector
                        .iter()
                        .all(|(k, v)| pods.labels.get(k).map(String::as_str) == v.as_str())
            });
            for ((_, _, deployment), pods) in pods {
                for (i, pod) in pods.l4.iter().enumerate() {
                    let ports = super::l4::slice_ports(svc, pod);
                    out.push(json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": format!("{name}-{deployment}-{i}"), "namespace": ns,
                                     "labels": {"kubernetes.io/service-name": name}},
                        "addressType": "IPv4",
                        "ports": ports,
                        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                                       "targetRef": {"kind": "Pod", "name": pod.pod_name(), "namespace": ns}}],
                    }));
                }
                for (i, instance) in pods.instances.iter().enumerate() {
                    let ports: Vec<Value> = svc["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| {
                            let local =
                                match p["targetPort"].as_u64().or_else(|| p["port"].as_u64())? {
                                    3000 => pods
                                        .grpc
                                        .get(i)
                                        .map_or(instance.http.port(), |g| g.addr.port()),
                                    3001 => instance.h2c?.port(),
                                    8443 => instance.https?.port(),
                                    _ => return None,
                                };
                            let mut port = json!({"port": local, "protocol": "TCP"});
                            if let Some(n) = p["name"].as_str() {
                                port["name"] = json!(n);
                            }
                            Some(port)
                        })
                        .collect();
                    if ports.is_empty() {
                        continue;
                    }
                    out.push(json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": format!("{name}-{deployment}-{i}"), "namespace": ns,
                                     "labels": {"kubernetes.io/service-name": name}},
                        "addressType": "IPv4",
                        "ports": ports,
                        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                                       "targetRef": {"kind": "Pod", "name": instance.identity().pod, "namespace": ns}}],
                    }));
                }
            }
        }
        out
    }

    /// Hands the current objects to the controller: files rewritten, or the API server's
    /// objects created, updated and deleted to match.
    fn write_files(&self) -> Result<(), String> {
        let relevant = |v: &&Value| {
            !matches!(v["kind"].as_str(), Some("Deployment" | "Pod")) && !is_manual_slice(v)
        };
        let slices = self.endpoint_slices();
        let base: Vec<&Value> = self.base.values().filter(relevant).collect();
        let case: Vec<&Value> = self.case.values().filter(relevant).collect();
        match &self.cluster {
            Cluster::Directory(config) => {
                let render = |docs: &[&Value]| {
                    docs.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n---\n")
                };
                write_atomic(config, "base.yaml", &render(&base))?;
                write_atomic(config, "case.yaml", &render(&case))?;
                write_atomic(
                    config,
                    "endpoints.yaml",
                    &render(&slices.iter().collect::<Vec<_>>()),
                )
            }
            Cluster::Kubernetes { api, synced } => {
                let mut synced = synced.lock().map_err(|e| e.to_string())?;
                let desired: BTreeMap<ObjKey, &Value> = base
                    .into_iter()
                    .chain(case)
                    .chain(slices.iter())
                    .filter_map(|v| Some((key_of(v)?, v)))
                    .collect();
                for (key, old) in synced.iter() {
                    if !desired.contains_key(key) {
                        let api_version = old["apiVersion"].as_str().unwrap_or_default();
                        api.delete(api_version, &key.0, &key.1, &key.2);
                    }
                }
                synced.retain(|key, _| desired.contains_key(key));
                for (key, doc) in desired {
                    if synced.get(&key) != Some(doc) {
                        api.apply(doc.clone());
                        synced.insert(key, doc.clone());
                    }
                }
                Ok(())
            }
        }
    }
}

/// The value of an environment variable of a pod spec's first container.
fn container_env<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    pod["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// The Deployment whose pods fill manual EndpointSlices (HTTPRouteServiceTypes).
const MANUAL_SLICE_BACKEND: &str = "infra-backend-v1";

/// An IPv4 EndpointSlice a case ships without endpoints, for the harness to fill. IPv6 slices
/// stay empty: the local pods listen on IPv4 loopback only, like a single-stack cluster.
fn is_manual_slice(v: &Value) -> bool {
    v["kind"] == "EndpointSlice"
        && v["addressType"] == "IPv4"
        && v["endpoints"].as_array().is_none_or(Vec::is_empty)
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let tmp = dir.parent().unwrap_or(dir).join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)))
        .map_err(|e| format!("writing {name}: {e}"))
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil-from-days (Howard Hinnant), to avoid a date-time dependency for one timestamp.
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Applies a phase patch: `set` (dotted path → value), `append` (list path → element) and the
/// test-specific `remove_listener` (listener name).
fn apply_patch(object: &mut Value, patch: &serde_json::Map<String, Value>) -> Result<(), String> {
    for (op, body) in patch {
        match op.as_str() {
            "set" => {
                for (path, value) in body.as_object().ok_or("set: not a map")? {
                    *path_mut(object, path)? = value.clone();
                }
            }
            "append" => {
                for (path, value) in body.as_object().ok_or("append: not a map")? {
                    let slot = path_mut(object, path)?;
                    if slot.is_null() {
                        *slot = json!([]);
                    }
                    slot.as_array_mut()
                        .ok_or_else(|| format!("append: {path} is not a list"))?
                        .push(value.clone());
                }
            }
            "remove_listener" => {
                let name = body.as_str().ok_or("remove_listener: not a name")?;
                let listeners = object["spec"]["listeners"]
                    .as_array_mut()
                    .ok_or("no spec.listeners")?;
                listeners.retain(|l| l["name"].as_str() != Some(name));
            }
            "description" | "manifest" => {}
            other => return Err(format!("unsupported patch operation {other:?}")),
        }
    }
    Ok(())
}

/// Splits a dotted path; `\\.` is a dot inside a key (`data.ca\\.crt`).
fn split_path(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                chars.next();
                current.push('.');
            }
            '.' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

fn path_mut<'a>(object: &'a mut Value, path: &str) -> Result<&'a mut Value, String> {
    let mut cur = object;
    for part in split_path(path) {
        let part = part.as_str();
        cur = match cur {
            Value::Object(map) => map.entry(part.to_owned()).or_insert(Value::Null),
            Value::Array(list) => {
                let i: usize = part
                    .parse()
                    .map_err(|_| format!("{path}: {part} is not an index"))?;
                list.get_mut(i)
                    .ok_or_else(|| format!("{path}: index {i} out of range"))?
            }
            Value::Null => {
                *cur = json!({});
                cur.as_object_mut()
                    .ok_or("unreachable")?
                    .entry(part.to_owned())
                    .or_insert(Value::Null)
            }
            _ => return Err(format!("{path}: {part} is not a field")),
        };
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_dots_stay_in_keys() {
        assert_eq!(split_path("data.ca\\.crt"), ["data", "ca.crt"]);
        assert_eq!(split_path("spec.rules.0"), ["spec", "rules", "0"]);
    }

    #[test]
    fn patches_set_append_and_remove() {
        let mut v = json!({"spec": {"listeners": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"set": {"spec.listeners.0.port": 8080, "spec.new.x": 1}, "append": {"spec.listeners": {"name": "c"}}, "remove_listener": "b"});
        apply_patch(&mut v, patch.as_object().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"spec": {"listeners": [{"name": "a", "port": 8080}, {"name": "c"}], "new": {"x": 1}}})
        );
        assert!(apply_patch(&mut v, json!({"frobnicate": 1}).as_object().unwrap()).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
