//! Which answers the kernel holds, computed from the routing state alone, and their bytes: the
//! complete HTTP/1.1 response user space would send for the same request (same status line
//! and headers, built by the same functions), with `connection: close` and a `date` that is
//! re-rendered every second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, DATE, LOCATION};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::maps::{AnswerKey, METHOD_GET, METHOD_HEAD};
use crate::model::request::{RequestHeaders, RequestView};
use crate::model::rule::{ActionRt, KernelRule, RuleRt};
use crate::model::{ListenerSpec, RoutingState};
use crate::serve::cached::{CACHE_STATUS, HIT};
use crate::serve::local_reply::{direct, local};

/// A response before its per-second parts (Date, Age) are added.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub status: StatusCode,
    /// In the order they are sent; Content-Length, Connection and Date are added (a Date
    /// already here, as a cached answer has, is kept).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// For a cached answer: its Age when it was stored, and when; sent as `age` grown by the
    /// time since.
    pub age: Option<(u64, Instant)>,
}

/// One entry the kernel should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `METHOD_GET` | `METHOD_HEAD`.
    pub methods: u32,
    pub template: Arc<Template>,
    /// Not served from then on; `None`: while the configuration keeps it.
    pub expires: Option<Instant>,
    /// The rule (or cache) it comes from, for /config_dump.
    pub source: Arc<str>,
}

/// A cached backend answer the kernel may send: what the response cache hands over
/// ([`super::KernelPath::set_cached`]).
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    /// The Gateway listener's port (as in the listener spec; the bound port is derived).
    pub port: u16,
    /// Lower-case host without port; "" for any host.
    pub host: String,
    /// The request target exactly as the client sends it.
    pub target: String,
    pub get: bool,
    pub head: bool,
    pub template: Arc<Template>,
    pub expires: Instant,
    pub source: Arc<str>,
}

fn methods(get: bool, head: bool) -> u32 {
    (if get { METHOD_GET } else { 0 }) | (if head { METHOD_HEAD } else { 0 })
}

/// The answers for a routing state: per plain-HTTP listener, one entry per exact domain of a
/// virtual host for each rule the kernel may answer, and "any host" entries when the table's
/// only virtual host is "*" (with wildcard domains or other hosts beside it, a host the kernel
/// cannot tell apart could belong to another virtual host). The first rule of a key wins, as
/// precedence order does in user space.
pub fn desired(
    state: &RoutingState,
    listeners: &[ListenerSpec],
    port_offset: u16,
) -> BTreeMap<AnswerKey, Answer> {
    let mut out = BTreeMap::new();
    for spec in listeners.iter().filter(|s| !s.tls && s.relay.is_none()) {
        let (Some(table), Some(local_port)) = (
            state.route_table(&spec.name),
            spec.port.checked_add(port_offset),
        ) else {
            continue;
        };
        let hosts = table
            .exact_domains()
            .map(|(domain, vhost)| (Some(domain), vhost))
            .chain(table.only_catch_all().map(|vhost| (None, vhost)));
        for (host, vhost) in hosts {
            for rule in vhost.rules() {
                let Some(kernel) = &rule.kernel else { continue };
                let Some(template) = template(rule, kernel, spec.port, host) else {
                    continue;
                };
                let Some(key) = AnswerKey::new(local_port, host.unwrap_or(""), &kernel.path) else {
                    continue;
                };
                // hyper sends no Content-Length at all to a HEAD whose answer has an empty
                // body (and `content-length: 0` to a GET): such HEADs stay in user space.
                let head = kernel.head && !template.body.is_empty();
                if !kernel.get && !head {
                    continue;
                }
                out.entry(key).or_insert_with(|| Answer {
                    methods: methods(kernel.get, head),
                    template: Arc::new(template),
                    expires: None,
                    source: Arc::clone(&rule.name),
                });
            }
        }
    }
    out
}

/// The response caches' fresh answers the kernel may send, as user space sends them from the
/// cache (`serve::cached::hit_response`, then the rule's response headers). A rule's store is
/// shared by its copies (one per match, per virtual host, per listener) and outlives
/// snapshots, so an answer is sent for a listener only where this state routes a GET for its
/// host and target, on that listener, to this very kernel-answerable copy of the rule; and
/// never for an empty host (that key means "any host" to the program).
pub fn cached(state: &RoutingState, listeners: &[ListenerSpec], now: Instant) -> Vec<CachedAnswer> {
    let mut out = Vec::new();
    let no_headers = HeaderMap::new();
    for spec in listeners.iter().filter(|s| !s.tls && s.relay.is_none()) {
        let Some(table) = state.route_table(&spec.name) else {
            continue;
        };
        let rules = table.virtual_hosts().iter().flat_map(|v| v.rules());
        for rule in rules {
            let (Some(kernel), Some(cache)) = (&rule.kernel, rule.filters.cache()) else {
                continue;
            };
            for (key, kept) in cache.store.entries() {
                if key.https || key.host.is_empty() || !kept.fresh(now) {
                    continue;
                }
                let (path, query) = match key.target.split_once('?') {
                    Some((path, query)) => (path, Some(query)),
                    None => (&*key.target, None),
                };
                let view = RequestView {
                    path,
                    query,
                    method: if kernel.get { "GET" } else { "HEAD" },
                    headers: RequestHeaders::Map(&no_headers),
                };
                let routed_here = table
                    .virtual_host(&key.host)
                    .and_then(|v| v.route(&view))
                    .is_some_and(|(r, _)| std::ptr::eq(r, rule));
                if !routed_here || path != &*kernel.path {
                    continue;
                }
                let mut headers = kept.headers.clone();
                headers.insert(CACHE_STATUS, HeaderValue::from_static(HIT));
                if let Some(ops) = rule.filters.response_headers() {
                    ops.apply(&mut headers);
                }
                out.push(CachedAnswer {
                    port: spec.port,
                    host: key.host.to_string(),
                    target: key.target.to_string(),
                    get: kernel.get,
                    head: kernel.head,
                    template: Arc::new(Template {
                        status: kept.status,
                        headers,
                        body: kept.body.clone(),
                        age: Some((kept.age(now).as_secs(), now)),
                    }),
                    expires: kept.expires,
                    source: Arc::clone(&rule.name),
                });
            }
        }
    }
    out
}

/// Adds the cached answers to `answers` where the configuration has none for the key.
pub fn add_cached(
    answers: &mut BTreeMap<AnswerKey, Answer>,
    cached: &[CachedAnswer],
    port_offset: u16,
) {
    for c in cached {
        let key = c
            .port
            .checked_add(port_offset)
            .and_then(|port| AnswerKey::new(port, &c.host, &c.target));
        if let Some(key) = key {
            let head = c.head && !c.template.body.is_empty();
            answers.entry(key).or_insert_with(|| Answer {
                methods: methods(c.get, head),
                template: Arc::clone(&c.template),
                expires: Some(c.expires),
                source: Arc::clone(&c.source),
            });
        }
    }
}

/// The response user space gives this rule's request on `host` (`None`: any host), or `None`
/// when the kernel cannot send it: a forward (only cached answers of it, which come from the
/// cache), a redirect whose Location needs the request's host, a status hyper frames without
/// a body (1xx, 204, 304).
fn template(
    rule: &RuleRt,
    kernel: &KernelRule,
    gateway_port: u16,
    host: Option<&str>,
) -> Option<Template> {
    let mut response = match &rule.action {
        ActionRt::Direct {
            status,
            body,
            headers,
        } => direct(*status, body, headers),
        ActionRt::Redirect(redirect) => {
            let location =
                |host| redirect.location("http", host, &kernel.path, None, gateway_port, None);
            let location = match host {
                Some(host) => location(host),
                None if location("a.invalid") == location("b.invalid") => location("a.invalid"),
                None => return None,
            };
            let mut r = local(redirect.status, Bytes::new());
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_str(&location).ok()?);
            r
        }
        ActionRt::Forward { .. } => return None,
    };
    if let Some(ops) = rule.filters.response_headers() {
        ops.apply(response.headers_mut());
    }
    let status = response.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return None;
    }
    let body = match &rule.action {
        ActionRt::Direct { body, .. } => body.clone(),
        _ => Bytes::new(),
    };
    Some(Template {
        status,
        headers: response.headers().clone(),
        body,
        age: None,
    })
}

/// The response's bytes and the length of its head, with `date` (an IMF-fixdate), as hyper
/// writes them: the status line, the headers in order, `connection: close`, `content-length`,
/// `date`, the blank line, the body.
pub fn render(template: &Template, date: &str, now: Instant) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(256 + template.body.len());
    let reason = template
        .status
        .canonical_reason()
        .unwrap_or("<unknown status code>");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", template.status.as_u16()).as_bytes());
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in &template.headers {
        if name != CONTENT_LENGTH && name != http::header::CONNECTION {
            line(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let Some((age, at)) = template.age {
        let age = age.saturating_add(now.saturating_duration_since(at).as_secs());
        line(b"age", age.to_string().as_bytes());
    }
    line(b"connection", b"close");
    line(
        b"content-length",
        template.body.len().to_string().as_bytes(),
    );
    if !template.headers.contains_key(DATE) {
        line(b"date", date.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let head_len = out.len();
    out.extend_from_slice(&template.body);
    (out, head_len)
}

/// Now as an HTTP date.
pub fn http_date() -> String {
    jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&jiff::Timestamp::now())
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "answers_tests.rs"]
mod tests;
