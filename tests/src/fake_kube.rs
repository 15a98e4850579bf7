//! An in-process Kubernetes API server for tests: the real HTTP protocol (over TLS, with a
//! bearer token) that kube-rs speaks — list, watch streams with resource versions,
//! get/create/replace/delete, and merge patches of the status subresource with resourceVersion
//! preconditions — over an in-memory object store the test edits directly. TokenReviews
//! check the ServiceAccount tokens the test issues (`issue_token`), as the real API server
//! checks projected tokens: username, audiences, expiry.
//!
//! What it leaves out: admission, schema validation, field selectors, server-side apply,
//! label selectors on lists.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

type Body = BoxBody<Bytes, Infallible>;

/// `group/version/plural`, the identity of a collection.
type Collection = String;

#[derive(Debug, Clone)]
struct Event {
    version: u64,
    collection: Collection,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    version: u64,
    objects: BTreeMap<Collection, BTreeMap<(String, String), Value>>,
    events: Vec<Event>,
    /// Collections answered with 404, as for a CRD that is not installed.
    unserved: BTreeSet<String>,
    /// Mutating requests received, as "METHOD path".
    writes: Vec<String>,
    /// Bumped to end every open watch, as when an API server restarts.
    watch_epoch: u64,
    /// Watches from before this resource version get 410 Gone (history compacted).
    compacted: u64,
    /// RBAC: when set, only what a grant allows; the rest is answered 403 and recorded.
    grants: Option<Vec<Grant>>,
    denied: Vec<String>,
    /// ServiceAccount tokens the test issued, by token.
    tokens: BTreeMap<String, IssuedToken>,
    /// TokenReviews answered.
    token_reviews: usize,
}

/// A ServiceAccount token the fake API server vouches for.
#[derive(Debug, Clone)]
struct IssuedToken {
    username: String,
    audiences: Vec<String>,
    /// Unix second from which the token is refused.
    expires: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The audience of tokens for the API server itself (the ones every pod gets by default).
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// One RBAC rule, from a ClusterRole (any namespace) or a Role (its namespace).
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub namespace: Option<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    /// Only these objects (resourceNames); empty: any. As in Kubernetes, a rule with names
    /// never allows what names no object (list, watch, create).
    pub resource_names: Vec<String>,
}

impl Grant {
    /// Whether the rule allows `verb` on any object of a kind.
    pub fn allows(&self, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> bool {
        self.allows_named(verb, group, resource, namespace, None)
    }

    /// Whether the rule allows `verb` on the object `name` (None: a request naming none).
    pub fn allows_named(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        let has = |list: &[String], item: &str| list.iter().any(|x| x == item || x == "*");
        (self.namespace.is_none() || self.namespace.as_deref() == namespace)
            && has(&self.api_groups, group)
            && has(&self.resources, resource)
            && has(&self.verbs, verb)
            && (self.resource_names.is_empty()
                || name.is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
    }
}

/// The plural resource name of a kind, as the API server derives it.
fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

fn collection_of(api_version: &str, kind: &str) -> Collection {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}/{}", plural(kind))
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(code, &status_body(code, reason, message))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (k, v) in fields {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// What a request path names.
struct Target {
    collection: Collection,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Target {
        collection: format!("{group}/{version}/{plural}"),
        plural: plural.to_owned(),
        namespace,
        name,
        status,
    })
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

struct Shared {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
    token: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `object` under a new resource version and records the event.
    fn put(&self, store: &mut Store, collection: &str, mut object: Value, kind: &'static str) {
        store.version += 1;
        let version = store.version;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(version.to_string());
        let namespace = meta["namespace"].as_str().unwrap_or_default().to_owned();
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let objects = store.objects.entry(collection.to_owned()).or_default();
        if kind == "DELETED" {
            objects.remove(&(namespace.clone(), name));
        } else {
            objects.insert((namespace.clone(), name), object.clone());
        }
        store.events.push(Event {
            version,
            collection: collection.to_owned(),
            namespace,
            kind,
            object,
        });
        self.changed.send_replace(version);
    }

    fn handle(self: &Arc<Self>, req: Request<Bytes>) -> Response<Body> {
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(format!("Bearer {}", self.token).as_str());
        if !authorized {
            return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
        let Some(target) = parse_path(req.uri().path()) else {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let mut store = self.lock();
        let params = query(req.uri());
        let verb = match (req.method().clone(), &target.name) {
            (Method::GET, None) if params.contains_key("watch") => "watch",
            (Method::GET, None) => "list",
            (Method::GET, Some(_)) => "get",
            (Method::POST, _) => "create",
            (Method::PUT, _) => "update",
            (Method::PATCH, _) => "patch",
            (Method::DELETE, _) => "delete",
            _ => "other",
        };
        let group = target.collection.split('/').next().unwrap_or_default();
        let resource = match target.status {
            true => format!("{}/status", target.plural),
            false => target.plural.clone(),
        };
        let allowed = store.grants.as_ref().is_none_or(|grants| {
            grants.iter().any(|g| {
                g.allows_named(
                    verb,
                    group,
                    &resource,
                    target.namespace.as_deref(),
                    target.name.as_deref(),
                )
            })
        });
        if !allowed {
            store.denied.push(format!(
                "{verb} {group}/{resource} in {:?}",
                target.namespace
            ));
            return failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("cannot {verb} resource \"{resource}\" in API group \"{group}\""),
            );
        }
        if target.collection == "authentication.k8s.io/v1/tokenreviews" {
            return match req.method() {
                &Method::POST => {
                    store.token_reviews += 1;
                    let body: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
                    respond(StatusCode::CREATED, &token_review(&store, body))
                }
                _ => failure(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "tokenreviews can only be created",
                ),
            };
        }
        if store.unserved.contains(&target.plural) {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        let method = req.method().clone();
        if method != Method::GET {
            store.writes.push(format!("{method} {}", req.uri().path()));
        }
        let namespace = target.namespace.clone().unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(req.body()).ok();
        let existing = target.name.as_ref().and_then(|name| {
            store
                .objects
                .get(&target.collection)
                .and_then(|c| c.get(&(namespace.clone(), name.clone())))
                .cloned()
        });
        let not_found = || {
            failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "{} \"{}\" not found",
                    target.plural,
                    target.name.as_deref().unwrap_or_default()
                ),
            )
        };
        let conflict = || {
            failure(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        };
        match (method, &target.name) {
            (Method::GET, None)
                if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) =>
            {
                let from: u64 = params
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = params
                    .get("timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(290);
                if from < store.compacted {
                    // As etcd after compaction: the client must list again.
                    let gone = status_body(StatusCode::GONE, "Expired", "too old resource version");
                    let line = format!("{}\n", json!({"type": "ERROR", "object": gone}));
                    return Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(line)).boxed())
                        .expect("response");
                }
                let epoch = store.watch_epoch;
                drop(store);
                self.watch(target, from, Duration::from_secs(timeout), epoch)
            }
            (Method::GET, None) => {
                let items: Vec<Value> = store
                    .objects
                    .get(&target.collection)
                    .map(|c| {
                        c.iter()
                            .filter(|((ns, _), _)| target.namespace.is_none() || *ns == namespace)
                            .map(|(_, o)| o.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let (group_version, _) = target.collection.rsplit_once('/').unwrap_or_default();
                let api_version = group_version.trim_start_matches('/');
                respond(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": api_version, "kind": "List",
                        "metadata": {"resourceVersion": store.version.to_string()},
                        "items": items,
                    }),
                )
            }
            (Method::GET, Some(_)) => match existing {
                Some(object) => respond(StatusCode::OK, &object),
                None => not_found(),
            },
            (Method::POST, None) => {
                let Some(mut object) = body else {
                    return failure(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
                };
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let exists = store
                    .objects
                    .get(&target.collection)
                    .is_some_and(|c| c.contains_key(&(namespace.clone(), name.clone())));
                if exists {
                    return failure(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{} \"{name}\" already exists", target.plural),
                    );
                }
                if target.namespace.is_some() {
                    object["metadata"]["namespace"] = json!(namespace);
                }
                self.put(&mut store, &target.collection, object, "ADDED");
                let stored = store.objects[&target.collection][&(namespace, name)].clone();
                respond(StatusCode::CREATED, &stored)
            }
            (Method::PUT, Some(_)) => {
                let (Some(current), Some(object)) = (existing, body) else {
                    return not_found();
                };
                let precondition = object["metadata"]["resourceVersion"].as_str();
                if precondition
                    .is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str())
                {
                    return conflict();
                }
                // The status subresource takes only status; the main resource keeps it.
                let next = match target.status {
                    true => {
                        let mut next = current;
                        next["status"] = object["status"].clone();
                        next
                    }
                    false => object,
                };
                self.put(&mut store, &target.collection, next, "MODIFIED");
                respond(StatusCode::OK, &self_get(&store, &target, &namespace))
            }
            (Method::PATCH, Some(_)) => {
                let (Some(mut current), Some(patch)) = (existing, body) else {
                    return not_found();
                };
                let precondition = patch["metadata"]["resourceVersion"].as_str();
                if precondition
                    .is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str())
                {
                    return conflict();
                }
                // The status subresource takes only status; the main resource everything but.
                match target.status {
                    true => merge_patch(&mut current["status"], &patch["status"]),
                    false => {
                        let mut patch = patch;
                        if let Some(map) = patch.as_object_mut() {
                            map.remove("status");
                        }
                        merge_patch(&mut current, &patch);
                    }
                }
                self.put(&mut store, &target.collection, current, "MODIFIED");
                respond(StatusCode::OK, &self_get(&store, &target, &namespace))
            }
            (Method::DELETE, Some(_)) => {
                let Some(current) = existing else {
                    return not_found();
                };
                self.put(&mut store, &target.collection, current.clone(), "DELETED");
                respond(StatusCode::OK, &current)
            }
            _ => failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported by the fake API server",
            ),
        }
    }

    /// A watch stream: every event of the collection after `from`, then new ones as they
    /// happen, until `timeout` or until the test ends all watches.
    fn watch(
        self: &Arc<Self>,
        target: Target,
        from: u64,
        timeout: Duration,
        epoch: u64,
    ) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let shared = Arc::clone(self);
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut seen = from;
            loop {
                let (events, scanned, current_epoch) = {
                    let store = shared.lock();
                    // Events are kept in version order: skip what this watch has sent
                    // without looking at it (tens of thousands of objects, each watch woken
                    // by every write).
                    let first = store.events.partition_point(|e| e.version <= seen);
                    let events: Vec<Event> = store.events[first..]
                        .iter()
                        .filter(|e| e.collection == target.collection)
                        .filter(|e| {
                            target
                                .namespace
                                .as_ref()
                                .is_none_or(|ns| *ns == e.namespace)
                        })
                        .cloned()
                        .collect();
                    // Every event up to here was looked at, whichever collection it was of.
                    let scanned = store.events.last().map_or(seen, |e| e.version);
                    (events, scanned, store.watch_epoch)
                };
                if current_epoch != epoch {
                    return;
                }
                for e in events {
                    let line = format!("{}\n", json!({"type": e.kind, "object": e.object}));
                    if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                        return;
                    }
                }
                seen = seen.max(scanned);
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    () = tokio::time::sleep_until(deadline) => return,
                    () = tx.closed() => return,
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))))
            .expect("response")
    }
}

/// The answer to a TokenReview, as the API server gives it: authenticated when the token is
/// one the test issued for one of the requested audiences (the API server's own when none
/// are requested), with the audiences both share.
fn token_review(store: &Store, mut review: Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![API_SERVER_AUDIENCE.to_owned()]);
    review["status"] = match store.tokens.get(token) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(issued) if issued.expires <= unix_now() => {
            json!({"authenticated": false, "error": "token has expired"})
        }
        Some(issued) => {
            let shared: Vec<&String> = wanted
                .iter()
                .filter(|a| issued.audiences.contains(a))
                .collect();
            if shared.is_empty() {
                json!({
                    "authenticated": false,
                    "error": format!(
                        "token audiences {:?} is invalid for the target audiences {wanted:?}",
                        issued.audiences
                    ),
                })
            } else {
                let namespace = issued
                    .username
                    .split(':')
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned();
                json!({
                    "authenticated": true,
                    "audiences": shared,
                    "user": {
                        "username": issued.username,
                        "uid": format!("uid-{}", issued.username.len()),
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
                    },
                })
            }
        }
    };
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenReview");
    review
}

fn self_get(store: &Store, target: &Target, namespace: &str) -> Value {
    let name = target.name.clone().unwrap_or_default();
    store
        .objects
        .get(&target.collection)
        .and_then(|c| c.get(&(namespace.to_owned(), name)))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The running fake API server.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn certificates() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fake-kubernetes-ca");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der)
    .expect("server config");
    (ca_cert.pem(), config)
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let (ca_pem, config) = certificates();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: watch::Sender::new(0),
            token: format!("token-{}", rand::random::<u64>()),
        });
        let server = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // As the real API server (Go sets TCP_NODELAY on every connection): with Nagle,
                // a watch event written right after another waits for the client's delayed
                // ACK, up to 40 ms.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let shared = Arc::clone(&server);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let shared = Arc::clone(&shared);
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(shared.handle(Request::from_parts(parts, bytes)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeApiServer {
            addr,
            shared,
            ca_pem,
            task,
        }
    }

    /// Writes a kubeconfig for this server (CA and bearer token inline) and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\nusers:\n- name: test\n  user:\n    token: {}\n",
            self.addr, self.shared.token
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Creates or updates every object in a multi-document YAML text, as `kubectl apply`
    /// would: status is kept, generation grows when the spec changes.
    pub fn apply_yaml(&self, text: &str) {
        let documents: Vec<Value> = serde_saphyr::from_multiple(text).expect("YAML");
        for document in documents.into_iter().filter(|d| d.is_object()) {
            self.apply(document);
        }
    }

    pub fn apply(&self, mut object: Value) {
        let api_version = object["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_owned();
        let kind = object["kind"].as_str().expect("kind").to_owned();
        let collection = collection_of(&api_version, &kind);
        let cluster_scoped = matches!(kind.as_str(), "GatewayClass" | "Namespace");
        if !cluster_scoped && object["metadata"]["namespace"].is_null() {
            object["metadata"]["namespace"] = json!("default");
        }
        let mut store = self.shared.lock();
        let key = (
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            object["metadata"]["name"]
                .as_str()
                .expect("name")
                .to_owned(),
        );
        let current = store
            .objects
            .get(&collection)
            .and_then(|c| c.get(&key))
            .cloned();
        // A generation the test gives is kept (the conformance runner keeps its own books).
        let given = object["metadata"]["generation"].as_i64();
        let event = match &current {
            Some(current) => {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = current["spec"] != object["spec"];
                object["metadata"]["generation"] =
                    json!(given.unwrap_or(generation + i64::from(changed)));
                object["metadata"]["uid"] = current["metadata"]["uid"].clone();
                if object.get("status").is_none() && !current["status"].is_null() {
                    object["status"] = current["status"].clone();
                }
                "MODIFIED"
            }
            None => {
                object["metadata"]["generation"] = json!(given.unwrap_or(1));
                object["metadata"]["uid"] = json!(format!("uid-{}", rand::random::<u64>()));
                "ADDED"
            }
        };
        self.shared.put(&mut store, &collection, object, event);
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let collection = collection_of(api_version, kind);
        let mut store = self.shared.lock();
        let object = store
            .objects
            .get(&collection)
            .and_then(|c| c.get(&(namespace.to_owned(), name.to_owned())))
            .cloned();
        if let Some(object) = object {
            self.shared.put(&mut store, &collection, object, "DELETED");
        }
    }

    /// The stored object, status included.
    pub fn object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let collection = collection_of(api_version, kind);
        self.shared
            .lock()
            .objects
            .get(&collection)
            .and_then(|c| c.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
    }

    /// Enforces RBAC from now on: only what `grants` allow.
    pub fn enforce(&self, grants: Vec<Grant>) {
        self.shared.lock().grants = Some(grants);
    }

    /// A token for ServiceAccount `namespace/name` with these audiences, as a projected
    /// token volume holds (a JWT whose claims say when it expires, an hour from now), which
    /// TokenReviews accept from now on.
    pub fn issue_token(&self, namespace: &str, name: &str, audiences: &[&str]) -> String {
        self.issue_token_for(namespace, name, audiences, Duration::from_secs(3600))
    }

    /// [`FakeApiServer::issue_token`] with a token that expires after `lifetime` (whole
    /// seconds).
    pub fn issue_token_for(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        lifetime: Duration,
    ) -> String {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let exp = unix_now() + lifetime.as_secs();
        let username = format!("system:serviceaccount:{namespace}:{name}");
        let claims =
            json!({"aud": audiences, "exp": exp, "sub": username, "jti": rand::random::<u64>()});
        let token = format!(
            "{}.{}.{:016x}",
            b64(&json!({"alg": "RS256", "kid": "fake"})),
            b64(&claims),
            rand::random::<u64>()
        );
        self.shared.lock().tokens.insert(
            token.clone(),
            IssuedToken {
                username,
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                expires: exp,
            },
        );
        token
    }

    /// Makes a token invalid from now on, as deleting its ServiceAccount does.
    pub fn revoke_token(&self, token: &str) {
        self.shared.lock().tokens.remove(token);
    }

    /// TokenReviews answered so far.
    pub fn token_reviews(&self) -> usize {
        self.shared.lock().token_reviews
    }

    /// Requests RBAC refused, as "verb group/resource in namespace".
    pub fn denied(&self) -> Vec<String> {
        self.shared.lock().denied.clone()
    }

    /// Every stored object of a kind.
    pub fn objects(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let collection = collection_of(api_version, kind);
        self.shared
            .lock()
            .objects
            .get(&collection)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Mutating requests received so far ("PATCH /apis/.../status").
    pub fn writes(&self) -> Vec<String> {
        self.shared.lock().writes.clone()
    }

    /// Answers 404 for this plural resource (a CRD that is not installed), or serves it again.
    pub fn set_served(&self, plural: &str, served: bool) {
        let mut store = self.shared.lock();
        match served {
            true => store.unserved.remove(plural),
            false => store.unserved.insert(plural.to_owned()),
        };
    }

    /// Forgets the event history, as etcd compaction does: a watch resuming from before now
    /// gets 410 Gone and its client must list again.
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        store.compacted = store.version + 1;
        store.events.clear();
    }

    /// Ends every open watch stream, as an API server restart does; clients re-watch.
    pub fn end_watches(&self) {
        let mut store = self.shared.lock();
        store.watch_epoch += 1;
        let version = store.version;
        drop(store);
        self.shared.changed.send_replace(version);
    }
}
