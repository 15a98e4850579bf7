//! What a proxy reports about itself (its node id, Gateway, build, addresses and NACK texts),
//! checked and bounded before it reaches logs, the admin service or a Gateway's status: a
//! proxy is a client of the controller, and its words are outside input.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rauta_common::api::v1::Node;

/// Longest node id (a DNS subdomain's length, so pod names fit).
pub const MAX_NODE_ID: usize = 253;
/// Most addresses one proxy may report for its Gateway's status.
pub const MAX_ADDRESSES: usize = 16;
/// Longest NACK message kept, in bytes.
pub const MAX_NACK_MESSAGE: usize = 1024;
/// Longest build version kept, in bytes.
pub const MAX_BUILD_VERSION: usize = 64;

/// A proxy's first request, checked: who it is and what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedNode {
    pub id: String,
    pub gateway_namespace: String,
    pub gateway_name: String,
    pub build_version: String,
    /// IP addresses (in canonical form) and DNS hostnames, at most [`MAX_ADDRESSES`], no repeats.
    pub addresses: Vec<String>,
    /// Reported addresses left out: not an IP address or hostname, repeated, or over the limit.
    pub dropped_addresses: usize,
}

/// Why a node was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("the first request must carry node.id, node.gateway_namespace and node.gateway_name")]
    Missing,
    #[error("node.id must be at most {MAX_NODE_ID} characters of visible ASCII")]
    BadId,
    #[error("node.gateway_namespace {0} is not a namespace name (a DNS-1123 label)")]
    BadNamespace(String),
    #[error("node.gateway_name {0} is not an object name (a DNS-1123 subdomain)")]
    BadName(String),
}

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending with an
/// alphanumeric, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `s` fit for a log line or a status message: control and bidirectional-formatting
/// characters become spaces, and it is cut (on a character boundary) to `max` bytes, the cut
/// marked with "...".
pub fn clean_text(s: &str, max: usize) -> String {
    const MARK: &str = "...";
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() || is_bidi_control(c) {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > max {
            // Make room for the marker: drop whole characters from the end.
            while out.len() + MARK.len() > max {
                if out.pop().is_none() {
                    break;
                }
            }
            out.push_str(MARK);
            return out;
        }
        out.push(c);
    }
    out
}

/// Characters that reorder how the text around them is displayed (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A short, quoted, cleaned form of a value the peer sent, for error messages and logs.
pub fn shown(s: &str) -> String {
    format!("{:?}", clean_text(s, 64))
}

/// Checks a proxy's node: a refused node refuses the stream.
pub fn check_node(node: &Node) -> Result<CheckedNode, NodeError> {
    if node.id.is_empty() || node.gateway_namespace.is_empty() || node.gateway_name.is_empty() {
        return Err(NodeError::Missing);
    }
    if node.id.len() > MAX_NODE_ID || !node.id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NodeError::BadId);
    }
    if !is_dns_label(&node.gateway_namespace) {
        return Err(NodeError::BadNamespace(shown(&node.gateway_namespace)));
    }
    if !is_dns_subdomain(&node.gateway_name) {
        return Err(NodeError::BadName(shown(&node.gateway_name)));
    }
    let (addresses, dropped_addresses) = check_addresses(&node.addresses);
    Ok(CheckedNode {
        id: node.id.clone(),
        gateway_namespace: node.gateway_namespace.clone(),
        gateway_name: node.gateway_name.clone(),
        build_version: clean_text(&node.build_version, MAX_BUILD_VERSION),
        addresses,
        dropped_addresses,
    })
}

/// The addresses fit for a Gateway's status.addresses (IP addresses, canonical form, or
/// DNS-1123 hostnames), at most [`MAX_ADDRESSES`], and how many were left out.
pub fn check_addresses(reported: &[String]) -> (Vec<String>, usize) {
    let mut seen = BTreeSet::new();
    let mut kept = Vec::new();
    for a in reported {
        if kept.len() == MAX_ADDRESSES {
            break;
        }
        let value = match a.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) if is_dns_subdomain(a) => a.clone(),
            Err(_) => continue,
        };
        if seen.insert(value.clone()) {
            kept.push(value);
        }
    }
    let dropped = reported.len() - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, addresses: &[&str]) -> Node {
        Node {
            id: id.into(),
            gateway_namespace: "infra".into(),
            gateway_name: "gw".into(),
            build_version: "0.1.0".into(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn node_ids_are_short_visible_ascii() {
        assert!(check_node(&node("proxy-7d9f-x2x4q", &[])).is_ok());
        assert_eq!(
            check_node(&node(&"a".repeat(MAX_NODE_ID), &[])).map(|n| n.id.len()),
            Ok(MAX_NODE_ID)
        );
        for bad in [
            "a".repeat(MAX_NODE_ID + 1),
            "evil\nproxy".into(),
            "with space".into(),
            "caf\u{e9}".into(),
            "\u{1b}[31mred".into(),
        ] {
            assert_eq!(
                check_node(&node(&bad, &[])),
                Err(NodeError::BadId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_gateway_must_be_a_kubernetes_name() {
        let mut n = node("p", &[]);
        n.gateway_namespace = "Infra".into();
        assert!(matches!(check_node(&n), Err(NodeError::BadNamespace(_))));
        n.gateway_namespace = "infra".into();
        n.gateway_name = format!("gw\n{}", "x".repeat(10_000));
        let err = check_node(&n).unwrap_err().to_string();
        assert!(matches!(check_node(&n), Err(NodeError::BadName(_))));
        assert!(err.len() < 200 && !err.contains('\n'), "{err}");
        n.gateway_name = "my-gw.v2".into();
        assert!(check_node(&n).is_ok());
    }

    #[test]
    fn addresses_are_ip_addresses_or_hostnames_and_few() {
        let (kept, dropped) = check_addresses(&[
            "10.0.0.1".into(),
            "evil\nname".into(),
            "lb.example.com".into(),
            "::0001".into(),
            "10.0.0.1".into(),
            "Upper.Example".into(),
            "".into(),
            "1.2.3.4:80".into(),
        ]);
        assert_eq!(kept, ["10.0.0.1", "lb.example.com", "::1"]);
        assert_eq!(dropped, 5);
        let many: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let (kept, dropped) = check_addresses(&many);
        assert_eq!((kept.len(), dropped), (MAX_ADDRESSES, 1000 - MAX_ADDRESSES));
    }

    #[test]
    fn text_is_cut_and_cleaned() {
        assert_eq!(clean_text("fine: route x", 1024), "fine: route x");
        assert_eq!(clean_text("a\nb\r\tc\u{202e}d\u{0}", 1024), "a b  c d ");
        let long = "é".repeat(1000);
        let cut = clean_text(&long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with("..."), "{}", cut.len());
        assert!(cut.starts_with("éé"));
        assert_eq!(clean_text("abcdef", 5), "ab...");
        assert_eq!(clean_text("abcde", 5), "abcde");
    }
}
