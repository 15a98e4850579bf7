//! Which rules of a plain-HTTP route table the proxies may answer in the kernel (XDP): those
//! whose answer to a GET or HEAD for their exact path cannot depend on anything the kernel
//! does not look at. The kernel matches (port, Host, request target) exactly and checks
//! nothing else, so a rule qualifies only when no other rule could take such a request:
//! - its one match is an Exact path with method GET, HEAD or none, and no header or query
//!   condition (the request's other fields then cannot change the outcome);
//! - its answer is fixed: a DirectResponse, a RequestRedirect, or a forward with a
//!   ResponseCache (the proxy then answers from the cache), with no CORS (it depends on
//!   Origin), no session persistence (a token per client) and no mirror (the kernel would
//!   skip the copy);
//! - no earlier rule of its virtual host could match the path, whatever its other conditions
//!   (a header match there would take some of these requests);
//! - its virtual host is an exact domain, or "*" as the table's only virtual host (the kernel
//!   cannot match wildcard domains, and "*" must not answer for a host another virtual host
//!   owns). On "*", a redirect must name its hostname: its Location would otherwise depend on
//!   the request's Host. A cached answer is keyed by the request's own Host, which the table
//!   routed to this rule, so it is safe on any virtual host; the proxy learns those keys from
//!   the requests it served.

use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{PathMatchKind, RouteMatch, RouteRule};

/// Whether the rule could qualify in some virtual host: rules for which this is false never
/// do, so callers need not track them.
pub fn may_qualify(rule: &RouteRule) -> bool {
    exact_get_path(rule).is_some()
}

/// Which of a virtual host's rules, in its order, qualify. `domains`: the virtual host's;
/// `alone`: it is its table's only virtual host.
pub fn verdicts(domains: &[String], alone: bool, rules: &[&RouteRule]) -> Vec<bool> {
    let any_host = domains.iter().any(|d| d == "*");
    let exact = !domains.iter().any(|d| d.starts_with('*'));
    let mut out = vec![false; rules.len()];
    for (i, rule) in rules.iter().enumerate() {
        let Some(path) = exact_get_path(rule) else {
            continue;
        };
        let fixed = match &rule.action {
            Some(Action::DirectResponse(_)) => true,
            Some(Action::Redirect(r)) => !any_host || !r.hostname.is_empty(),
            Some(Action::Forward(_)) => rule.cache.is_some(),
            None => false,
        };
        let per_client =
            rule.cors.is_some() || rule.session_persistence.is_some() || !rule.mirrors.is_empty();
        let cached = matches!(rule.action, Some(Action::Forward(_)));
        let host_ok = cached || exact || (any_host && alone);
        if !fixed || per_client || !host_ok {
            continue;
        }
        let shadowed = rules[..i]
            .iter()
            .flat_map(|r| &r.matches)
            .any(|m| could_match(m, path));
        out[i] = !shadowed;
    }
    out
}

/// The exact path of a rule whose only match is an Exact path for GET, HEAD or any method,
/// with no header or query condition.
fn exact_get_path(rule: &RouteRule) -> Option<&str> {
    let [m] = rule.matches.as_slice() else {
        return None;
    };
    let path = m.path.as_ref()?;
    let plain = m.headers.is_empty()
        && m.query_params.is_empty()
        && matches!(m.method.as_str(), "" | "GET" | "HEAD");
    (plain && path.kind() == PathMatchKind::Exact).then_some(path.value.as_str())
}

/// Whether a match could take some request for `path` with GET or HEAD (its header and query
/// conditions are assumed met).
fn could_match(m: &RouteMatch, path: &str) -> bool {
    if !matches!(m.method.as_str(), "" | "GET" | "HEAD") {
        return false;
    }
    let Some(p) = &m.path else { return true };
    match p.kind() {
        PathMatchKind::Exact => p.value == path,
        PathMatchKind::Prefix => {
            let prefix = p.value.trim_end_matches('/');
            prefix.is_empty()
                || (path.starts_with(prefix)
                    && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
        }
        // A pattern that does not compile never matches in the proxy, but say it could.
        PathMatchKind::Regex => {
            rauta_common::matching::full_match(&p.value).map_or(true, |re| re.is_match(path))
        }
        PathMatchKind::Unspecified => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rauta_common::api::v1::{
        DirectResponse, ForwardAction, HeaderMatch, PathMatch, Redirect, VirtualHost,
    };

    fn path_match(kind: PathMatchKind, value: &str, method: &str) -> RouteMatch {
        RouteMatch {
            path: Some(PathMatch {
                kind: kind as i32,
                value: value.into(),
            }),
            method: method.into(),
            ..Default::default()
        }
    }

    fn direct(path: &str) -> RouteRule {
        RouteRule {
            name: format!("direct{path}"),
            matches: vec![path_match(PathMatchKind::Exact, path, "")],
            action: Some(Action::DirectResponse(DirectResponse {
                status: 200,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn forward(m: RouteMatch) -> RouteRule {
        RouteRule {
            name: "forward".into(),
            matches: vec![m],
            action: Some(Action::Forward(ForwardAction::default())),
            ..Default::default()
        }
    }

    fn vhost(domain: &str, rules: Vec<RouteRule>) -> VirtualHost {
        VirtualHost {
            name: domain.into(),
            domains: vec![domain.into()],
            rules,
        }
    }

    /// Sets `kernel_answerable` on the rules that qualify.
    fn mark(virtual_hosts: &mut [VirtualHost]) {
        let alone = virtual_hosts.len() == 1;
        for vhost in virtual_hosts.iter_mut() {
            let rules: Vec<&RouteRule> = vhost.rules.iter().collect();
            let marks = verdicts(&vhost.domains, alone, &rules);
            for (rule, mark) in vhost.rules.iter_mut().zip(marks) {
                rule.kernel_answerable = mark;
            }
        }
    }

    fn marks(vhosts: &[VirtualHost]) -> Vec<Vec<bool>> {
        vhosts
            .iter()
            .map(|v| v.rules.iter().map(|r| r.kernel_answerable).collect())
            .collect()
    }

    #[test]
    fn fixed_answers_for_exact_gets_qualify() {
        let mut redirect = direct("/old");
        redirect.action = Some(Action::Redirect(Redirect::default()));
        let mut cached = forward(path_match(PathMatchKind::Exact, "/flags", "GET"));
        cached.cache = Some(Box::default());
        let uncached = forward(path_match(PathMatchKind::Exact, "/api", ""));
        let mut hosts = vec![vhost(
            "example.com",
            vec![direct("/healthz"), redirect, cached, uncached],
        )];
        mark(&mut hosts);
        assert_eq!(marks(&hosts), [[true, true, true, false]]);
    }

    #[test]
    fn conditions_the_kernel_cannot_check_disqualify() {
        let mut post = direct("/a");
        post.matches[0].method = "POST".into();
        let mut header = direct("/b");
        header.matches[0].headers.push(HeaderMatch::default());
        let mut prefix = direct("/c");
        prefix.matches[0] = path_match(PathMatchKind::Prefix, "/c", "");
        let mut two = direct("/d");
        two.matches.push(path_match(PathMatchKind::Exact, "/e", ""));
        let mut cors = direct("/f");
        cors.cors = Some(Box::default());
        let mut hosts = vec![vhost("example.com", vec![post, header, prefix, two, cors])];
        mark(&mut hosts);
        assert_eq!(marks(&hosts), [[false, false, false, false, false]]);
    }

    #[test]
    fn an_earlier_rule_that_could_take_the_path_disqualifies() {
        let mut by_header = forward(path_match(PathMatchKind::Prefix, "/health", ""));
        by_header.matches[0].headers.push(HeaderMatch::default());
        let regex = forward(path_match(PathMatchKind::Regex, "/ro+bots.txt", ""));
        let post_only = forward(path_match(PathMatchKind::Prefix, "/", "POST"));
        let mut hosts = vec![vhost(
            "example.com",
            vec![
                by_header,
                regex,
                post_only,
                direct("/health/live"),
                direct("/robots.txt"),
                direct("/healthz"),
                direct("/healthz"),
            ],
        )];
        mark(&mut hosts);
        assert_eq!(
            marks(&hosts),
            [[false, false, false, false, false, true, false]]
        );
    }

    #[test]
    fn any_host_qualifies_only_alone_and_wildcards_never() {
        let mut alone = vec![vhost("*", vec![direct("/healthz")])];
        mark(&mut alone);
        assert_eq!(marks(&alone), [[true]]);

        let mut cached = forward(path_match(PathMatchKind::Exact, "/flags", ""));
        cached.cache = Some(Box::default());
        let mut cached_wildcard = cached.clone();
        cached_wildcard.matches[0].path.as_mut().unwrap().value = "/other".into();
        let mut host_redirect = direct("/old");
        host_redirect.action = Some(Action::Redirect(Redirect::default()));
        let mut shared = vec![
            vhost("*", vec![direct("/healthz"), cached, host_redirect]),
            vhost("example.com", vec![direct("/healthz")]),
            vhost("*.example.com", vec![direct("/healthz"), cached_wildcard]),
        ];
        mark(&mut shared);
        assert_eq!(
            marks(&shared),
            [vec![false, true, false], vec![true], vec![false, true]]
        );
    }
}
