//! The immutable routing state the request path reads: listeners → route tables → virtual
//! hosts → ordered rules → clusters. Built and validated from a [`ResourceStore`] off the request
//! path, then published with one atomic swap.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    ListenerProtocol, PathMatchKind, RouteTable, ValueMatchKind, VirtualHost,
};
use rauta_common::types::ResourceType;
use regex::Regex;

use crate::cluster::ClusterRt;
use crate::cors::CorsRt;
use crate::filters::{HeaderOps, RedirectRt, Rewrite};
use crate::metrics::{ProxyMetrics, RouteStats};
use crate::mirror::MirrorRt;
use crate::session::{SessionKeys, SessionRt};
use crate::store::ResourceStore;
use crate::tls;
use crate::upstream::UpstreamPools;

#[derive(Debug)]
enum PathRt {
    Exact(Box<str>),
    /// Without a trailing slash; matches itself and anything below it.
    Prefix(Box<str>),
    /// Anchored at both ends.
    Regex(Regex),
}

impl PathRt {
    #[inline]
    fn matches(&self, path: &str) -> bool {
        match self {
            PathRt::Exact(p) => path == &**p,
            PathRt::Prefix(p) => {
                p.is_empty()
                    || (path.starts_with(&**p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathRt::Regex(re) => re.is_match(path),
        }
    }
}

/// A header or query parameter value condition.
#[derive(Debug)]
enum ValueRt<T> {
    Exact(T),
    /// Anchored at both ends; a header value that is not UTF-8 never matches.
    Regex(Regex),
}

impl ValueRt<HeaderValue> {
    #[inline]
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueRt::Exact(v) => v.as_bytes() == value,
            // Visible ASCII only, as HeaderValue::to_str.
            ValueRt::Regex(re) => value
                .iter()
                .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
                .then(|| std::str::from_utf8(value).ok())
                .flatten()
                .is_some_and(|v| re.is_match(v)),
        }
    }
}

impl ValueRt<Box<str>> {
    #[inline]
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueRt::Exact(v) => **v == *value,
            ValueRt::Regex(re) => re.is_match(value),
        }
    }
}

#[derive(Debug)]
pub struct MatchRt {
    path: PathRt,
    headers: Vec<(HeaderName, ValueRt<HeaderValue>)>,
    query: Vec<(Box<str>, ValueRt<Box<str>>)>,
    method: Option<Method>,
}

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub headers: RequestHeaders<'a>,
}

/// A request's header fields: parsed into a map by hyper, or still the raw fields of the
/// HTTP/1.1 fast path (which never builds a map).
#[derive(Debug, Clone, Copy)]
pub enum RequestHeaders<'a> {
    Map(&'a HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> RequestHeaders<'a> {
    /// The first value of a header.
    #[inline]
    pub fn get(&self, name: &HeaderName) -> Option<&'a [u8]> {
        match *self {
            RequestHeaders::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            RequestHeaders::Raw(fields) => fields
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
                .map(|h| h.value),
        }
    }

    /// Every value of a header, in order.
    pub fn get_all(self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (map, raw) = match self {
            RequestHeaders::Map(map) => (Some(map.get_all(name).iter()), None),
            RequestHeaders::Raw(fields) => (None, Some(fields.iter())),
        };
        map.into_iter().flatten().map(HeaderValue::as_bytes).chain(
            raw.into_iter()
                .flatten()
                .filter(move |h| h.name.eq_ignore_ascii_case(name.as_str()))
                .map(|h| h.value),
        )
    }
}

/// The first value of a query parameter, undecoded.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

impl MatchRt {
    #[inline]
    fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.as_str() == req.method)
            && self
                .headers
                .iter()
                .all(|(name, value)| req.headers.get(name).is_some_and(|v| value.matches(v)))
            && self.query.iter().all(|(name, value)| {
                req.query
                    .and_then(|q| query_param(q, name))
                    .is_some_and(|v| value.matches(v))
            })
    }

    /// The PathPrefix this match matched on (without trailing slash), for prefix rewrites.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathRt::Prefix(p) => Some(p),
            PathRt::Exact(_) | PathRt::Regex(_) => None,
        }
    }
}

#[derive(Debug)]
pub struct WeightedBackend {
    /// `None` when the cluster is not (yet) in the snapshot: answered with 503.
    pub cluster: Option<Arc<ClusterRt>>,
    /// backendRef filters.
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    cumulative: u32,
}

#[derive(Debug)]
pub enum ActionRt {
    Forward {
        backends: Vec<WeightedBackend>,
        total: u32,
    },
    Redirect(RedirectRt),
    Direct {
        status: StatusCode,
        body: Bytes,
    },
}

/// What a weighted pick produced.
pub enum Pick<'a> {
    Backend(&'a WeightedBackend),
    /// The share of invalid backends, or no weight at all: 500.
    Invalid,
}

impl ActionRt {
    /// Picks a backend by weight from a uniform random number.
    #[inline]
    pub fn pick(&self, random: u32) -> Pick<'_> {
        let ActionRt::Forward { backends, total } = self else {
            return Pick::Invalid;
        };
        if *total == 0 {
            return Pick::Invalid;
        }
        let r = random % total;
        backends
            .iter()
            .find(|b| r < b.cumulative)
            .map_or(Pick::Invalid, Pick::Backend)
    }
}

/// A rule's retry policy at run time.
#[derive(Debug)]
pub struct RetryRt {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub backoff: std::time::Duration,
}

impl RetryRt {
    fn build(r: &rauta_common::api::v1::RetryPolicy) -> Result<RetryRt, String> {
        let codes = r
            .codes
            .iter()
            .map(|c| u16::try_from(*c).map_err(|_| format!("invalid retry code {c}")))
            .collect::<Result<_, _>>()?;
        let backoff = match &r.backoff {
            Some(d) => {
                std::time::Duration::try_from(*d).map_err(|e| format!("retry backoff: {e}"))?
            }
            None => std::time::Duration::from_millis(25),
        };
        Ok(RetryRt {
            attempts: r.attempts.min(10),
            codes,
            backoff,
        })
    }
}

#[derive(Debug)]
pub struct RuleRt {
    pub name: Arc<str>,
    matches: Vec<MatchRt>,
    pub action: ActionRt,
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    pub rewrite: Option<Rewrite>,
    /// timeouts.request: until the response headers.
    pub request_timeout: Option<std::time::Duration>,
    /// timeouts.backendRequest: one attempt at the backend.
    pub backend_timeout: Option<std::time::Duration>,
    pub mirrors: Vec<MirrorRt>,
    pub cors: Option<CorsRt>,
    pub retry: Option<RetryRt>,
    /// Sticky sessions (sessionPersistence).
    pub session: Option<SessionRt>,
    pub counters: Arc<RouteStats>,
}

#[derive(Debug)]
pub struct VirtualHostRt {
    pub name: String,
    rules: Vec<RuleRt>,
}

impl VirtualHostRt {
    /// The rule a TLS passthrough connection uses: the first (TLSRoutes have no matches).
    pub fn first_rule(&self) -> Option<&RuleRt> {
        self.rules.first()
    }

    /// The first rule matching the request, in precedence order.
    #[inline]
    pub fn route(&self, req: &RequestView<'_>) -> Option<(&RuleRt, &MatchRt)> {
        self.rules
            .iter()
            .find_map(|r| r.matches.iter().find(|m| m.matches(req)).map(|m| (r, m)))
    }
}

#[derive(Debug, Default)]
pub struct RouteTableRt {
    exact: HashMap<Box<str>, usize>,
    /// (suffix with its leading dot, vhost), longest suffix first.
    wildcards: Vec<(Box<str>, usize)>,
    any: Option<usize>,
    vhosts: Vec<VirtualHostRt>,
}

impl RouteTableRt {
    /// The virtual host for a lower-case host without port: exact, then longest wildcard, then "*".
    #[inline]
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHostRt> {
        let index = self.exact.get(host).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
                .map(|(_, i)| *i)
                .or(self.any)
        })?;
        self.vhosts.get(index)
    }
}

/// Everything the request path needs, at one configuration version.
#[derive(Debug, Default)]
pub struct RoutingState {
    /// Listener name -> its route table (`None` until the table arrives: 404).
    listeners: HashMap<String, Option<Arc<RouteTableRt>>>,
    /// Cluster name -> (cluster version, endpoints version, runtime), to reuse unchanged clusters.
    clusters: HashMap<String, (String, String, Arc<ClusterRt>)>,
    /// HTTPS listener name -> (listener resource version, TLS configuration, names by listener).
    tls: HashMap<String, (String, Arc<rustls::ServerConfig>, Arc<tls::ListenerNames>)>,
    pub no_route: Option<Arc<RouteStats>>,
}

/// A listener the proxy must have open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub port: u16,
    /// Terminates TLS (its configuration is in the routing state, so certificates can change
    /// without reopening the socket).
    pub tls: bool,
    /// Relays TLS untouched, routed by the ClientHello's server name.
    pub passthrough: bool,
}

impl RoutingState {
    #[inline]
    pub fn route_table(&self, listener: &str) -> Option<&RouteTableRt> {
        self.listeners.get(listener).and_then(|t| t.as_deref())
    }

    /// Which Gateway listener names belong to, on an HTTPS listener.
    pub fn listener_names(&self, listener: &str) -> Option<&tls::ListenerNames> {
        self.tls.get(listener).map(|(_, _, n)| n.as_ref())
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> impl Iterator<Item = (&str, &ClusterRt)> {
        self.clusters
            .iter()
            .map(|(name, (_, _, rt))| (name.as_str(), rt.as_ref()))
    }

    /// Sets the per-endpoint ejection gauge from the clusters' current endpoints.
    pub fn record_ejections(&self, metrics: &ProxyMetrics) {
        metrics.endpoint_ejected.reset();
        for (name, (_, _, cluster)) in &self.clusters {
            for endpoint in cluster.endpoints() {
                metrics
                    .endpoint_ejected
                    .with_label_values(&[name.as_str(), &endpoint.addr.to_string()])
                    .set(i64::from(endpoint.pool.health().is_ejected()));
            }
        }
    }

    /// The TLS configuration of an HTTPS listener.
    pub fn tls_config(&self, listener: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.get(listener).map(|(_, c, _)| Arc::clone(c))
    }

    /// Validates `store` and builds the state; reuses clusters of `previous` that did not change.
    pub fn build(
        store: &ResourceStore,
        previous: &RoutingState,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
    ) -> Result<(RoutingState, Vec<ListenerSpec>), String> {
        let mut clusters = HashMap::new();
        for resource in store.resources(ResourceType::Cluster) {
            let Some(Payload::Cluster(cluster)) = &resource.payload else {
                continue;
            };
            let endpoints = store.get(ResourceType::Endpoints, &cluster.name);
            let endpoints_version = endpoints.map(|e| e.version.clone()).unwrap_or_default();
            let reuse = previous
                .clusters
                .get(&cluster.name)
                .filter(|(cv, ev, _)| *cv == resource.version && *ev == endpoints_version)
                .map(|(_, _, rt)| Arc::clone(rt));
            let rt = match reuse {
                Some(rt) => rt,
                None => {
                    let endpoints = endpoints.and_then(|e| match &e.payload {
                        Some(Payload::Endpoints(e)) => Some(e),
                        _ => None,
                    });
                    Arc::new(ClusterRt::build(
                        cluster,
                        endpoints,
                        pools,
                        metrics,
                        previous.clusters.get(&cluster.name).map(|(_, _, rt)| &**rt),
                    )?)
                }
            };
            clusters.insert(
                cluster.name.clone(),
                (resource.version.clone(), endpoints_version, rt),
            );
        }

        let mut tables = HashMap::new();
        for resource in store.resources(ResourceType::RouteTable) {
            let Some(Payload::RouteTable(table)) = &resource.payload else {
                continue;
            };
            let rt = build_route_table(table, &clusters, metrics)
                .map_err(|e| format!("route table {}: {e}", table.name))?;
            tables.insert(table.name.clone(), Arc::new(rt));
        }

        let mut listeners = HashMap::new();
        let mut tls_configs = HashMap::new();
        let mut specs: Vec<ListenerSpec> = Vec::new();
        for resource in store.resources(ResourceType::Listener) {
            let Some(Payload::Listener(l)) = &resource.payload else {
                continue;
            };
            let passthrough = l.protocol == ListenerProtocol::TlsPassthrough as i32;
            let tls = match ListenerProtocol::try_from(l.protocol) {
                Ok(ListenerProtocol::Http | ListenerProtocol::TlsPassthrough) => false,
                Ok(ListenerProtocol::Https) => {
                    // Reuse the TLS configuration while the listener resource is unchanged.
                    let (config, names) = match previous
                        .tls
                        .get(&l.name)
                        .filter(|(v, _, _)| *v == resource.version)
                    {
                        Some((_, config, names)) => (Arc::clone(config), Arc::clone(names)),
                        None => (
                            tls::server_config(&l.certificates, l.client_validation.as_ref())
                                .map_err(|e| format!("listener {}: {e}", l.name))?,
                            Arc::new(tls::ListenerNames::from_certificates(&l.certificates)),
                        ),
                    };
                    tls_configs.insert(l.name.clone(), (resource.version.clone(), config, names));
                    true
                }
                _ => {
                    return Err(format!(
                        "listener {}: unsupported protocol {}",
                        l.name, l.protocol
                    ));
                }
            };
            let port = u16::try_from(l.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("listener {}: invalid port {}", l.name, l.port))?;
            if let Some(other) = specs.iter().find(|s| s.port == port) {
                return Err(format!(
                    "listeners {} and {} both use port {port}",
                    other.name, l.name
                ));
            }
            specs.push(ListenerSpec {
                name: l.name.clone(),
                port,
                tls,
                passthrough,
            });
            listeners.insert(l.name.clone(), tables.get(&l.route_table).cloned());
        }
        let no_route = Some(metrics.route_counters(""));
        Ok((
            RoutingState {
                listeners,
                clusters,
                tls: tls_configs,
                no_route,
            },
            specs,
        ))
    }
}

fn build_route_table(
    table: &RouteTable,
    clusters: &HashMap<String, (String, String, Arc<ClusterRt>)>,
    metrics: &ProxyMetrics,
) -> Result<RouteTableRt, String> {
    let mut rt = RouteTableRt::default();
    let keys = SessionKeys::build(&table.session_keys)?;
    for vhost in &table.virtual_hosts {
        let index = rt.vhosts.len();
        rt.vhosts
            .push(build_vhost(vhost, clusters, metrics, &keys)?);
        for domain in &vhost.domains {
            let domain = domain.to_ascii_lowercase();
            if domain == "*" {
                if rt.any.replace(index).is_some() {
                    return Err("two virtual hosts claim \"*\"".into());
                }
            } else if let Some(suffix) = domain.strip_prefix('*') {
                if !suffix.starts_with('.') || suffix.len() < 2 {
                    return Err(format!("invalid wildcard domain {domain:?}"));
                }
                rt.wildcards.push((suffix.into(), index));
            } else if domain.is_empty() || domain.contains(['*', '/', ' ', ':']) {
                return Err(format!("invalid domain {domain:?}"));
            } else if rt.exact.insert(domain.clone().into(), index).is_some() {
                return Err(format!("two virtual hosts claim {domain:?}"));
            }
        }
    }
    rt.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
    Ok(rt)
}

fn regex(pattern: &str) -> Result<Regex, String> {
    rauta_common::matching::full_match(pattern)
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

fn build_vhost(
    vhost: &VirtualHost,
    clusters: &HashMap<String, (String, String, Arc<ClusterRt>)>,
    metrics: &ProxyMetrics,
    session_keys: &SessionKeys,
) -> Result<VirtualHostRt, String> {
    let mut rules = Vec::with_capacity(vhost.rules.len());
    for rule in &vhost.rules {
        let err = |msg: String| format!("virtual host {}: rule {}: {msg}", vhost.name, rule.name);
        if rule.matches.is_empty() {
            return Err(err("no matches".into()));
        }
        let mut matches = Vec::with_capacity(rule.matches.len());
        for m in &rule.matches {
            let path = m
                .path
                .as_ref()
                .ok_or_else(|| err("match without path".into()))?;
            let kind = PathMatchKind::try_from(path.kind);
            if kind != Ok(PathMatchKind::Regex) && !path.value.starts_with('/') {
                return Err(err(format!(
                    "path {:?} does not start with '/'",
                    path.value
                )));
            }
            let path = match kind {
                Ok(PathMatchKind::Exact) => PathRt::Exact(path.value.as_str().into()),
                Ok(PathMatchKind::Prefix) => {
                    PathRt::Prefix(path.value.trim_end_matches('/').into())
                }
                Ok(PathMatchKind::Regex) => PathRt::Regex(regex(&path.value).map_err(err)?),
                _ => return Err(err(format!("unsupported path match kind {}", path.kind))),
            };
            let mut headers = Vec::with_capacity(m.headers.len());
            for h in &m.headers {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| err(format!("invalid header name {:?}", h.name)))?;
                let value = match h.kind() {
                    ValueMatchKind::Exact => ValueRt::Exact(
                        HeaderValue::from_bytes(h.value.as_bytes())
                            .map_err(|_| err(format!("invalid header value for {:?}", h.name)))?,
                    ),
                    ValueMatchKind::Regex => ValueRt::Regex(regex(&h.value).map_err(err)?),
                };
                headers.push((name, value));
            }
            let mut query = Vec::with_capacity(m.query_params.len());
            for q in &m.query_params {
                let value = match q.kind() {
                    ValueMatchKind::Exact => ValueRt::Exact(q.value.as_str().into()),
                    ValueMatchKind::Regex => ValueRt::Regex(regex(&q.value).map_err(err)?),
                };
                query.push((q.name.as_str().into(), value));
            }
            let method = match m.method.as_str() {
                "" => None,
                name => Some(
                    Method::from_bytes(name.as_bytes())
                        .map_err(|_| err(format!("invalid method {name:?}")))?,
                ),
            };
            matches.push(MatchRt {
                path,
                headers,
                query,
                method,
            });
        }
        let action = match &rule.action {
            None => {
                return Err(err(
                    "no action (is the controller newer than this proxy?)".into()
                ));
            }
            Some(Action::DirectResponse(d)) => {
                let status = u16::try_from(d.status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| err(format!("invalid status {}", d.status)))?;
                ActionRt::Direct {
                    status,
                    body: Bytes::from(d.body.clone()),
                }
            }
            Some(Action::Redirect(r)) => ActionRt::Redirect(RedirectRt::build(r).map_err(err)?),
            Some(Action::Forward(f)) => {
                let mut backends = Vec::with_capacity(f.clusters.len());
                let mut cumulative: u32 = 0;
                for wc in f.clusters.iter().filter(|c| c.weight > 0) {
                    cumulative = cumulative
                        .checked_add(wc.weight)
                        .ok_or_else(|| err("weights overflow".into()))?;
                    let cluster = clusters.get(&wc.cluster).map(|(_, _, c)| Arc::clone(c));
                    let request_headers = wc
                        .request_headers
                        .as_ref()
                        .map(HeaderOps::build)
                        .transpose()
                        .map_err(err)?;
                    let response_headers = wc
                        .response_headers
                        .as_ref()
                        .map(HeaderOps::build)
                        .transpose()
                        .map_err(err)?;
                    backends.push(WeightedBackend {
                        cluster,
                        request_headers,
                        response_headers,
                        cumulative,
                    });
                }
                let total = cumulative
                    .checked_add(f.invalid_weight)
                    .ok_or_else(|| err("weights overflow".into()))?;
                ActionRt::Forward { backends, total }
            }
        };
        let request_headers = rule
            .request_headers
            .as_ref()
            .map(HeaderOps::build)
            .transpose()
            .map_err(err)?;
        let response_headers = rule
            .response_headers
            .as_ref()
            .map(HeaderOps::build)
            .transpose()
            .map_err(err)?;
        let rewrite = rule
            .url_rewrite
            .as_ref()
            .map(Rewrite::build)
            .transpose()
            .map_err(err)?;
        let timeout = |d: Option<&prost_types::Duration>, what: &str| {
            d.map(|d| std::time::Duration::try_from(*d).map_err(|e| err(format!("{what}: {e}"))))
                .transpose()
        };
        let request_timeout = timeout(rule.request_timeout.as_ref(), "request_timeout")?;
        let backend_timeout = timeout(
            rule.backend_request_timeout.as_ref(),
            "backend_request_timeout",
        )?;
        rules.push(RuleRt {
            name: Arc::from(rule.name.as_str()),
            matches,
            action,
            request_headers,
            response_headers,
            rewrite,
            request_timeout,
            backend_timeout,
            mirrors: rule
                .mirrors
                .iter()
                .map(|m| MirrorRt {
                    cluster: clusters.get(&m.cluster).map(|(_, _, c)| Arc::clone(c)),
                    numerator: m.numerator,
                    denominator: m.denominator,
                })
                .collect(),
            cors: rule
                .cors
                .as_ref()
                .map(CorsRt::build)
                .transpose()
                .map_err(err)?,
            retry: rule
                .retry
                .as_ref()
                .map(RetryRt::build)
                .transpose()
                .map_err(err)?,
            session: rule
                .session_persistence
                .as_ref()
                .map(|p| SessionRt::build(p, session_keys))
                .transpose()
                .map_err(err)?,
            counters: metrics.route_counters(&rule.name),
        });
    }
    Ok(VirtualHostRt {
        name: vhost.name.clone(),
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_at_segment_boundaries() {
        let p = PathRt::Prefix("/foo".into());
        assert!(p.matches("/foo"));
        assert!(p.matches("/foo/"));
        assert!(p.matches("/foo/bar"));
        assert!(!p.matches("/foobar"));
        assert!(!p.matches("/"));
        let root = PathRt::Prefix("".into());
        assert!(root.matches("/") && root.matches("/anything"));
        let exact = PathRt::Exact("/foo".into());
        assert!(exact.matches("/foo") && !exact.matches("/foo/"));
    }

    #[test]
    fn weighted_pick_follows_cumulative_weights_and_invalid_share() {
        let action = ActionRt::Forward {
            backends: vec![
                WeightedBackend {
                    cluster: None,
                    request_headers: None,
                    response_headers: None,
                    cumulative: 1,
                },
                WeightedBackend {
                    cluster: None,
                    request_headers: None,
                    response_headers: None,
                    cumulative: 4,
                },
            ],
            total: 5,
        };
        let picks: Vec<Option<u32>> = (0..5)
            .map(|r| match action.pick(r) {
                Pick::Backend(b) => Some(b.cumulative),
                Pick::Invalid => None,
            })
            .collect();
        assert_eq!(picks, [Some(1), Some(4), Some(4), Some(4), None]);
        assert!(matches!(
            ActionRt::Forward {
                backends: vec![],
                total: 0
            }
            .pick(7),
            Pick::Invalid
        ));
    }
}

#[cfg(test)]
mod build_tests {
    use rauta_common::api::v1::resource::Payload;
    use rauta_common::api::v1::route_rule::Action;
    use rauta_common::api::v1::{
        DeltaDiscoveryResponse, DirectResponse, HeaderMatch, Listener, PathMatch, Resource,
        RouteMatch, RouteRule, RouteTable, VirtualHost,
    };
    use rauta_common::types::ResourceType;

    use super::*;

    fn store_with(table: RouteTable, listeners: &[(&str, u32)]) -> ResourceStore {
        let mut store = ResourceStore::default();
        let resource = |name: &str, payload| Resource {
            name: name.into(),
            version: "v".into(),
            payload: Some(payload),
        };
        let tables = DeltaDiscoveryResponse {
            type_url: ResourceType::RouteTable.type_url().into(),
            resources: vec![resource(&table.name.clone(), Payload::RouteTable(table))],
            ..Default::default()
        };
        store = store
            .with_response(ResourceType::RouteTable, &tables)
            .unwrap();
        let listeners = DeltaDiscoveryResponse {
            type_url: ResourceType::Listener.type_url().into(),
            resources: listeners
                .iter()
                .map(|(n, p)| {
                    let l = Listener {
                        name: (*n).into(),
                        port: *p,
                        protocol: 1,
                        hostnames: vec![],
                        route_table: "t".into(),
                        certificates: vec![],
                        client_validation: None,
                    };
                    resource(n, Payload::Listener(l))
                })
                .collect(),
            ..Default::default()
        };
        store
            .with_response(ResourceType::Listener, &listeners)
            .unwrap()
    }

    fn rule(path: &str, header: Option<(&str, &str)>) -> RouteRule {
        RouteRule {
            name: "ns/r/rule/0".into(),
            matches: vec![RouteMatch {
                path: Some(PathMatch {
                    kind: PathMatchKind::Prefix as i32,
                    value: path.into(),
                }),
                headers: header
                    .map(|(n, v)| HeaderMatch {
                        name: n.into(),
                        value: v.into(),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }],
            action: Some(Action::DirectResponse(DirectResponse {
                status: 204,
                body: String::new(),
            })),
            ..Default::default()
        }
    }

    fn table(domains: &[&str], rules: Vec<RouteRule>) -> RouteTable {
        RouteTable {
            name: "t".into(),
            virtual_hosts: vec![VirtualHost {
                name: "vh".into(),
                domains: domains.iter().map(|d| d.to_string()).collect(),
                rules,
            }],
            ..Default::default()
        }
    }

    fn build(store: &ResourceStore) -> Result<(RoutingState, Vec<ListenerSpec>), String> {
        let metrics = ProxyMetrics::new().unwrap();
        RoutingState::build(
            store,
            &RoutingState::default(),
            &mut UpstreamPools::default(),
            &metrics,
        )
    }

    #[test]
    fn a_valid_store_builds_and_routes() {
        let store = store_with(
            table(&["*.example.com", "a.org"], vec![rule("/", None)]),
            &[("http-80", 80)],
        );
        let (state, listeners) = build(&store).unwrap();
        assert_eq!(
            listeners,
            [ListenerSpec {
                name: "http-80".into(),
                port: 80,
                tls: false,
                passthrough: false,
            }]
        );
        let table = state.route_table("http-80").unwrap();
        assert!(table.virtual_host("x.example.com").is_some());
        assert!(table.virtual_host("example.com").is_none());
        assert!(table.virtual_host("a.org").is_some());
    }

    #[test]
    fn invalid_resources_are_rejected_with_a_reason() {
        let cases = [
            (
                store_with(table(&["*"], vec![rule("no-slash", None)]), &[]),
                "does not start with '/'",
            ),
            (
                store_with(
                    table(&["*"], vec![rule("/", Some(("bad header", "v")))]),
                    &[],
                ),
                "invalid header name",
            ),
            (
                store_with(table(&["*."], vec![rule("/", None)]), &[]),
                "invalid wildcard domain",
            ),
            (
                store_with(
                    table(
                        &["*"],
                        vec![RouteRule {
                            matches: vec![RouteMatch {
                                path: Some(PathMatch {
                                    kind: PathMatchKind::Regex as i32,
                                    value: "/a((".into(),
                                }),
                                ..Default::default()
                            }],
                            ..rule("/", None)
                        }],
                    ),
                    &[],
                ),
                "invalid regular expression",
            ),
            (
                store_with(
                    table(
                        &["*"],
                        vec![RouteRule {
                            action: None,
                            ..rule("/", None)
                        }],
                    ),
                    &[],
                ),
                "no action",
            ),
            (
                store_with(table(&["*"], vec![]), &[("a", 80), ("b", 80)]),
                "both use port 80",
            ),
            (
                store_with(table(&["*"], vec![]), &[("a", 70000)]),
                "invalid port",
            ),
        ];
        for (store, reason) in cases {
            let err = build(&store)
                .err()
                .unwrap_or_else(|| panic!("expected an error containing {reason:?}"));
            assert!(err.contains(reason), "{err:?} should contain {reason:?}");
        }
    }

    #[test]
    fn malformed_responses_are_rejected_by_the_store() {
        let wrong_type = DeltaDiscoveryResponse {
            type_url: ResourceType::Cluster.type_url().into(),
            resources: vec![Resource {
                name: "t".into(),
                version: "v".into(),
                payload: Some(Payload::RouteTable(RouteTable {
                    name: "t".into(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let err = ResourceStore::default()
            .with_response(ResourceType::Cluster, &wrong_type)
            .unwrap_err();
        assert!(err.contains("payload of another type"), "{err}");
        let misnamed = DeltaDiscoveryResponse {
            resources: vec![Resource {
                name: "x".into(),
                version: "v".into(),
                payload: Some(Payload::RouteTable(RouteTable {
                    name: "t".into(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let err = ResourceStore::default()
            .with_response(ResourceType::RouteTable, &misnamed)
            .unwrap_err();
        assert!(err.contains("payload is named"), "{err}");
    }
}
