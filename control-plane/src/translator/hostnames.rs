//! Hostname intersection between a listener and a route (Gateway API "hostnames" rules).

use std::collections::{HashMap, HashSet};

/// Whether `host` (possibly a wildcard) falls under `wildcard` ("*.example.com" covers
/// "foo.example.com" and "a.b.example.com", not "example.com").
fn covered_by(host: &str, wildcard: &str) -> bool {
    match wildcard.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}

/// Whether every host `domain` stands for ("*", a wildcard or a name) is also matched by a
/// listener with hostname `listener` (None matches any host).
fn within(domain: &str, listener: Option<&str>) -> bool {
    match listener {
        None => true,
        Some(l) => domain == l || covered_by(domain, l),
    }
}

/// The listener hostnames of one port (lower case), indexed for listener isolation. With
/// ListenerSets a port can have thousands of listeners; the listeners that can own a domain
/// are found from the domain's own name and suffixes instead of by scanning them all.
pub struct PortHostnames<'a> {
    /// Every hostname.
    all: HashSet<&'a str>,
    /// Wildcard hostnames by what follows their `*`.
    wildcards: HashMap<&'a str, &'a str>,
}

impl<'a> PortHostnames<'a> {
    pub fn new(hostnames: &'a [String]) -> Self {
        PortHostnames {
            all: hostnames.iter().map(String::as_str).collect(),
            wildcards: hostnames
                .iter()
                .filter_map(|h| Some((h.strip_prefix('*')?, h.as_str())))
                .collect(),
        }
    }

    /// Listener isolation: whether requests for `domain`, which a route serves through the
    /// listener with hostname `listener`, belong instead to another listener on this port: one
    /// whose hostname is more specific than `listener`'s and still matches every host of
    /// `domain`. The most specific listener that matches a request is the only one whose
    /// routes may serve it.
    pub fn owned_by_more_specific_listener(&self, domain: &str, listener: Option<&str>) -> bool {
        if self.all.is_empty() {
            return false; // No listener has a hostname: none is more specific.
        }
        let listener = listener.map(|l| match l.bytes().any(|b| b.is_ascii_uppercase()) {
            true => std::borrow::Cow::Owned(l.to_ascii_lowercase()),
            false => std::borrow::Cow::Borrowed(l),
        });
        let owns =
            |other: &str| Some(other) != listener.as_deref() && within(other, listener.as_deref());
        // The hostnames `domain` is within: itself, and each wildcard whose suffix (after
        // the `*`) is a proper suffix of it.
        let proper_suffixes = domain
            .char_indices()
            .skip(1)
            .map(|(i, _)| &domain[i..])
            // "*" covers every domain but the empty one.
            .chain((!domain.is_empty()).then_some(""));
        (self.all.contains(domain) && owns(domain))
            || proper_suffixes
                .filter_map(|suffix| self.wildcards.get(suffix))
                .any(|other| owns(other))
    }
}

/// The hostnames a route serves on a listener. `None` means the route does not match the
/// listener at all; `Some(vec![])` never happens; "*" stands for "any host".
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let listener = listener.filter(|h| !h.is_empty());
    if route.is_empty() {
        return Some(vec![listener.unwrap_or("*").to_ascii_lowercase()]);
    }
    let Some(listener) = listener else {
        return Some(route.iter().map(|h| h.to_ascii_lowercase()).collect());
    };
    let listener = listener.to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    for host in route.iter().map(|h| h.to_ascii_lowercase()) {
        let matched = if host == listener || covered_by(&host, &listener) {
            Some(host)
        } else if covered_by(&listener, &host) {
            Some(listener.clone())
        } else {
            None
        };
        if let Some(h) = matched
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::{PortHostnames, intersect, within};

    /// Listener isolation by scanning every listener of the port: the definition the index
    /// must agree with.
    fn owned_by_scan(domain: &str, listener: Option<&str>, port_listeners: &[String]) -> bool {
        let listener = listener.map(str::to_ascii_lowercase);
        port_listeners.iter().any(|other| {
            Some(other) != listener.as_ref()
                && within(domain, Some(other))
                && within(other, listener.as_deref())
        })
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_hostnames_on_either_side_means_any() {
        assert_eq!(intersect(None, &[]), Some(s(&["*"])));
        assert_eq!(intersect(Some("a.com"), &[]), Some(s(&["a.com"])));
        assert_eq!(
            intersect(None, &s(&["a.com", "*.b.com"])),
            Some(s(&["a.com", "*.b.com"]))
        );
    }

    #[test]
    fn wildcards_narrow_to_the_more_specific_side() {
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["foo.example.com", "other.org"])),
            Some(s(&["foo.example.com"]))
        );
        assert_eq!(
            intersect(Some("foo.example.com"), &s(&["*.example.com"])),
            Some(s(&["foo.example.com"]))
        );
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["*.foo.example.com"])),
            Some(s(&["*.foo.example.com"]))
        );
        assert_eq!(intersect(Some("*.example.com"), &s(&["example.com"])), None);
        assert_eq!(intersect(Some("a.com"), &s(&["b.com"])), None);
        assert_eq!(
            intersect(Some("A.com"), &s(&["a.COM"])),
            Some(s(&["a.com"]))
        );
    }

    #[test]
    fn more_specific_listeners_own_their_hosts() {
        let port = s(&["*.example.com", "*.foo.example.com", "abc.foo.example.com"]);
        let index = PortHostnames::new(&port);
        let owned = |domain: &str, listener: Option<&str>| {
            let indexed = index.owned_by_more_specific_listener(domain, listener);
            assert_eq!(
                indexed,
                owned_by_scan(domain, listener, &port),
                "{domain} {listener:?}"
            );
            indexed
        };
        // Through the hostname-less listener: everything under a listener hostname is taken.
        assert!(owned("*.example.com", None));
        assert!(owned("bar.example.com", None));
        assert!(owned("abc.foo.example.com", None));
        assert!(!owned("bar.com", None));
        assert!(!owned("*", None));
        // Through *.example.com: only what a more specific listener matches entirely.
        assert!(!owned("*.example.com", Some("*.example.com")));
        assert!(owned("*.foo.example.com", Some("*.example.com")));
        assert!(owned("abc.foo.example.com", Some("*.example.com")));
        assert!(!owned("x.example.com", Some("*.example.com")));
        // A listener's own hostname is its own, and the most specific one owns everything.
        assert!(!owned("*.foo.example.com", Some("*.foo.example.com")));
        assert!(!owned("abc.foo.example.com", Some("ABC.foo.example.com")));
    }

    #[test]
    fn the_index_agrees_with_scanning_every_listener() {
        let names = [
            "*",
            "*.com",
            "a.com",
            "*.a.com",
            "b.a.com",
            "*.b.a.com",
            "c.b.a.com",
            "ab.com",
            "*b.com",
            "*.org",
            "x.org",
        ];
        // Every subset of up to four listener hostnames, every domain, every listener.
        let mut subsets: Vec<Vec<String>> = vec![Vec::new()];
        for name in names {
            let grown: Vec<Vec<String>> = subsets
                .iter()
                .filter(|s| s.len() < 4)
                .map(|s| s.iter().cloned().chain([name.to_owned()]).collect())
                .collect();
            subsets.extend(grown);
        }
        let mut checked = 0;
        for port in &subsets {
            let index = PortHostnames::new(port);
            for domain in names {
                for listener in names.iter().map(|l| Some(*l)).chain([None]) {
                    assert_eq!(
                        index.owned_by_more_specific_listener(domain, listener),
                        owned_by_scan(domain, listener, port),
                        "{domain} through {listener:?} on {port:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }
}
