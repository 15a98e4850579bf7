//! Hostname intersection between a listener and a route (Gateway API "hostnames" rules).

/// Whether `host` (possibly a wildcard) falls under `wildcard` ("*.example.com" covers
/// "foo.example.com" and "a.b.example.com", not "example.com").
fn covered_by(host: &str, wildcard: &str) -> bool {
    match wildcard.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
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
    use super::intersect;

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
}
