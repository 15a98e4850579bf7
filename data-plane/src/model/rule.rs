//! A rule as the request path uses it: its matches, its action (forward to weighted backends,
//! redirect, or a direct answer), its filters and timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use rauta_common::api::v1::RouteRule;
use rauta_common::api::v1::route_rule::Action;

use super::cluster::ClusterRt;
use super::clusters::Clusters;
use super::collect::exact;
use super::filters::session::SessionKeys;
use super::filters::{FilterError, Filters, Inherited, SharedPart};
use super::kept::RuleStores;
use super::matchers::{MatchError, MatchRt};
use super::redirect::{RedirectError, RedirectRt};
use crate::observe::metrics::{ProxyMetrics, RouteStats};

#[derive(Debug)]
pub struct WeightedBackend {
    pub cluster_name: Box<str>,
    /// `None` when the cluster is not (yet) in the snapshot: answered with 503.
    pub cluster: Option<Arc<ClusterRt>>,
    /// backendRef filters.
    pub filters: Filters,
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
        /// Added to the answer in order (Content-Type among them, if set).
        headers: Box<[(HeaderName, HeaderValue)]>,
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

#[derive(Debug)]
pub struct RuleRt {
    pub name: Arc<str>,
    pub(super) matches: Vec<MatchRt>,
    pub action: ActionRt,
    pub filters: Filters,
    /// Whether the fast paths may serve this rule: its action is a forward and every filter is
    /// one they implement (see [`Filters::fast_path`]).
    pub fast_path: bool,
    /// What the kernel may answer for it, on plain-HTTP listeners.
    pub kernel: Option<KernelRule>,
    /// timeouts.request: until the response headers.
    pub request_timeout: Option<std::time::Duration>,
    /// timeouts.backendRequest: one attempt at the backend.
    pub backend_timeout: Option<std::time::Duration>,
    pub counters: Arc<RouteStats>,
}

/// Why a rule is invalid (the NACK's text, after which rule it is).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("no matches")]
    NoMatches,
    #[error("no action (is the controller newer than this proxy?)")]
    NoAction,
    #[error("invalid status {0}")]
    Status(u32),
    #[error("direct response header {0:?}: not a valid header, or one the proxy manages")]
    DirectHeader(String),
    #[error("weights overflow")]
    WeightsOverflow,
    #[error("{field}: {reason}")]
    Timeout { field: &'static str, reason: String },
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Redirect(#[from] RedirectError),
}

impl ActionRt {
    /// Validates a rule's action; backends name their clusters ([`RuleRt::link`]).
    pub(super) fn build(action: Option<&Action>) -> Result<ActionRt, RuleError> {
        Ok(match action {
            None => return Err(RuleError::NoAction),
            Some(Action::DirectResponse(d)) => {
                let status = u16::try_from(d.status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(RuleError::Status(d.status))?;
                ActionRt::Direct {
                    status,
                    body: Bytes::from(d.body.clone()),
                    headers: direct_headers(&d.headers)?,
                }
            }
            Some(Action::Redirect(r)) => ActionRt::Redirect(RedirectRt::build(r)?),
            Some(Action::Forward(f)) => {
                let mut backends = Vec::with_capacity(f.clusters.len());
                let mut cumulative: u32 = 0;
                for wc in f.clusters.iter().filter(|c| c.weight > 0) {
                    cumulative = cumulative
                        .checked_add(wc.weight)
                        .ok_or(RuleError::WeightsOverflow)?;
                    backends.push(WeightedBackend {
                        cluster_name: wc.cluster.as_str().into(),
                        cluster: None,
                        filters: Filters::of_backend(wc)?,
                        cumulative,
                    });
                }
                let total = cumulative
                    .checked_add(f.invalid_weight)
                    .ok_or(RuleError::WeightsOverflow)?;
                ActionRt::Forward { backends, total }
            }
        })
    }

    /// Whether the fast paths implement this action.
    fn on_fast_path(&self) -> bool {
        match self {
            ActionRt::Forward { .. } => true,
            ActionRt::Redirect(_) | ActionRt::Direct { .. } => false,
        }
    }

    /// Whether the kernel can answer for this action: a fixed answer, or a forward whose
    /// answers are cached (the kernel then sends the cached ones).
    fn on_kernel_path(&self, filters: &Filters) -> bool {
        match self {
            ActionRt::Redirect(_) | ActionRt::Direct { .. } => true,
            ActionRt::Forward { .. } => filters.cache().is_some(),
        }
    }
}

/// What the kernel may answer for a rule: GETs and HEADs (as its match allows) of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub path: Box<str>,
    pub get: bool,
    pub head: bool,
}

impl KernelRule {
    /// The kernel's part of a rule the controller marked answerable, when the proxy's form of
    /// it is one a kernel answer can serve: one Exact path match, for GET, HEAD or any method,
    /// and an action and filters that do not depend on the request's other fields.
    fn of(
        rule: &RouteRule,
        matches: &[MatchRt],
        action: &ActionRt,
        filters: &Filters,
    ) -> Option<Self> {
        if !rule.kernel_answerable || !action.on_kernel_path(filters) || !filters.kernel() {
            return None;
        }
        let [only] = matches else { return None };
        let (path, method) = only.exact_path_only()?;
        let (get, head) = match method {
            None => (true, true),
            Some(m) if *m == Method::GET => (true, false),
            Some(m) if *m == Method::HEAD => (false, true),
            Some(_) => return None,
        };
        Some(KernelRule {
            path: path.into(),
            get,
            head,
        })
    }
}

/// A direct answer's headers: valid, and none of those that frame the message or belong to
/// the connection (the proxy writes those itself).
fn direct_headers(
    headers: &[rauta_common::api::v1::HeaderValue],
) -> Result<Box<[(HeaderName, HeaderValue)]>, RuleError> {
    const MANAGED: [HeaderName; 6] = [
        CONNECTION,
        CONTENT_LENGTH,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ];
    headers
        .iter()
        .map(|h| {
            let invalid = || RuleError::DirectHeader(h.name.clone());
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid())?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| invalid())?;
            let hop_by_hop = ["keep-alive", "proxy-connection"].contains(&name.as_str());
            match MANAGED.contains(&name) || hop_by_hop {
                true => Err(invalid()),
                false => Ok((name, value)),
            }
        })
        .collect()
}

impl RuleRt {
    /// Validates a rule; errors name what is wrong, the caller adds which rule it is. The
    /// clusters it names are found later ([`RuleRt::link`]), once the snapshot is known valid.
    pub fn build(
        rule: &RouteRule,
        metrics: &ProxyMetrics,
        session_keys: &SessionKeys,
        stores: &mut RuleStores,
        inherited: Inherited<'_>,
    ) -> Result<RuleRt, RuleError> {
        if rule.matches.is_empty() {
            return Err(RuleError::NoMatches);
        }
        let matches = exact(rule.matches.iter().map(MatchRt::build))?;
        let action = ActionRt::build(rule.action.as_ref())?;
        let filters = Filters::of_rule(rule, session_keys, stores, inherited)?;
        let timeout = |d: Option<&prost_types::Duration>, field: &'static str| {
            d.map(|d| {
                Duration::try_from(*d).map_err(|e| RuleError::Timeout {
                    field,
                    reason: e.to_string(),
                })
            })
            .transpose()
        };
        let limits = filters.request_limits().copied().unwrap_or_default();
        Ok(RuleRt {
            name: Arc::from(rule.name.as_str()),
            fast_path: action.on_fast_path() && filters.fast_path(),
            kernel: KernelRule::of(rule, &matches, &action, &filters),
            matches,
            action,
            filters,
            // The route's own timeouts, else a TrafficPolicy's.
            request_timeout: timeout(rule.request_timeout.as_ref(), "request_timeout")?
                .or(limits.request_timeout),
            backend_timeout: timeout(
                rule.backend_request_timeout.as_ref(),
                "backend_request_timeout",
            )?
            .or(limits.backend_timeout),
            counters: metrics.route_counters(&rule.name),
        })
    }

    /// What the rule holds of the routing state around it (clusters, response stores).
    pub fn shared_parts<'a>(&'a self, f: &mut impl FnMut(SharedPart<'a>)) {
        match &self.action {
            ActionRt::Forward { backends, .. } => {
                for backend in backends {
                    f(SharedPart::Cluster(
                        &backend.cluster_name,
                        backend.cluster.as_ref(),
                    ));
                    backend.filters.shared_parts(f);
                }
            }
            ActionRt::Redirect(_) | ActionRt::Direct { .. } => {}
        }
        self.filters.shared_parts(f);
    }

    /// Points the backends and mirrors at the snapshot's clusters.
    pub fn link(&mut self, clusters: &Clusters) {
        if let ActionRt::Forward { backends, .. } = &mut self.action {
            for backend in backends {
                backend.cluster = clusters.get(&backend.cluster_name);
                backend.filters.link(clusters);
            }
        }
        self.filters.link(clusters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_pick_follows_cumulative_weights_and_invalid_share() {
        let action = ActionRt::Forward {
            backends: vec![
                WeightedBackend {
                    cluster_name: "".into(),
                    cluster: None,
                    filters: Filters::default(),
                    cumulative: 1,
                },
                WeightedBackend {
                    cluster_name: "".into(),
                    cluster: None,
                    filters: Filters::default(),
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

    fn flagged(path_kind: i32, method: &str) -> RouteRule {
        use rauta_common::api::v1::{DirectResponse, PathMatch, RouteMatch};
        RouteRule {
            name: "r".into(),
            matches: vec![RouteMatch {
                path: Some(PathMatch {
                    kind: path_kind,
                    value: "/healthz".into(),
                }),
                method: method.into(),
                ..Default::default()
            }],
            action: Some(Action::DirectResponse(DirectResponse {
                status: 200,
                ..Default::default()
            })),
            kernel_answerable: true,
            ..Default::default()
        }
    }

    fn kernel_of(rule: &RouteRule) -> Option<KernelRule> {
        let metrics = ProxyMetrics::new().unwrap();
        let keys = SessionKeys::build(&[]).unwrap();
        RuleRt::build(
            rule,
            &metrics,
            &keys,
            &mut RuleStores::default(),
            Inherited::default(),
        )
        .unwrap()
        .kernel
    }

    /// The kernel's part of a rule exists only where the controller marked the rule and the
    /// proxy's own form of it is one a fixed answer serves, whatever the flag says.
    #[test]
    fn only_marked_rules_the_kernel_can_answer_get_a_kernel_part() {
        use rauta_common::api::v1::{ForwardAction, PathMatchKind, ResponseCache};
        let exact = PathMatchKind::Exact as i32;
        assert_eq!(
            kernel_of(&flagged(exact, "")),
            Some(KernelRule {
                path: "/healthz".into(),
                get: true,
                head: true
            })
        );
        assert_eq!(
            kernel_of(&flagged(exact, "HEAD")).map(|k| (k.get, k.head)),
            Some((false, true))
        );
        let mut unmarked = flagged(exact, "");
        unmarked.kernel_answerable = false;
        assert_eq!(kernel_of(&unmarked), None);
        assert_eq!(kernel_of(&flagged(PathMatchKind::Prefix as i32, "")), None);
        assert_eq!(kernel_of(&flagged(exact, "POST")), None);
        let mut cors = flagged(exact, "");
        cors.cors = Some(Box::default());
        assert_eq!(kernel_of(&cors), None, "an answer per Origin");
        let mut forward = flagged(exact, "");
        forward.action = Some(Action::Forward(ForwardAction::default()));
        assert_eq!(kernel_of(&forward), None, "a forward without a cache");
        forward.cache = Some(Box::new(ResponseCache {
            max_ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            max_body_bytes: 1,
            statuses: vec![],
            max_entries: 1,
        }));
        assert!(kernel_of(&forward).is_some(), "cached answers of a forward");
    }
}
