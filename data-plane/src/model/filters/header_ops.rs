//! RequestHeaderModifier and ResponseHeaderModifier: set, add, then remove fields.

use http::{HeaderMap, HeaderName, HeaderValue};
use rauta_common::api::v1::HeaderModifier;

use crate::model::collect::exact;

/// Why a header modifier is invalid.
#[derive(Debug, thiserror::Error)]
pub enum HeaderOpsError {
    #[error("invalid header name {0:?}")]
    Name(String),
    #[error("invalid value for header {0:?}")]
    Value(String),
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), HeaderOpsError> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| HeaderOpsError::Name(name.to_owned()))?;
    let v = HeaderValue::from_bytes(value.as_bytes())
        .map_err(|_| HeaderOpsError::Value(name.to_owned()))?;
    Ok((n, v))
}

/// Set, add, then remove headers.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn build(m: &HeaderModifier) -> Result<HeaderOps, HeaderOpsError> {
        Ok(HeaderOps {
            set: exact(m.set.iter().map(|h| header(&h.name, &h.value)))?,
            add: exact(m.add.iter().map(|h| header(&h.name, &h.value)))?,
            remove: exact(m.remove.iter().map(|n| {
                HeaderName::from_bytes(n.as_bytes()).map_err(|_| HeaderOpsError::Name(n.clone()))
            }))?,
        })
    }

    /// Whether any change names one of these (lower-case) headers.
    pub fn touches(&self, names: &[&str]) -> bool {
        self.set
            .iter()
            .chain(&self.add)
            .map(|(n, _)| n)
            .chain(&self.remove)
            .any(|n| names.contains(&n.as_str()))
    }

    /// Whether the changes replace or remove every field called `name` (ASCII case-insensitive).
    fn overrides(&self, name: &str) -> bool {
        self.set
            .iter()
            .map(|(n, _)| n)
            .chain(&self.remove)
            .any(|n| n.as_str().eq_ignore_ascii_case(name))
    }

    /// For raw header fields (the HTTP/1.1 fast path): the fields a sequence of changes
    /// leaves, in order, as applying them one after the other to a map would.
    pub fn added_by<'o>(ops: &[&'o HeaderOps]) -> Vec<(&'o HeaderName, &'o HeaderValue)> {
        let mut added: Vec<(&HeaderName, &HeaderValue)> = Vec::new();
        for op in ops {
            for (n, v) in &op.set {
                added.retain(|(a, _)| *a != n);
                added.push((n, v));
            }
            for (n, v) in &op.add {
                added.push((n, v));
            }
            for n in &op.remove {
                added.retain(|(a, _)| *a != n);
            }
        }
        added
    }

    /// For raw header fields: whether a message's own field `name` survives the changes.
    pub fn keeps(ops: &[&HeaderOps], name: &str) -> bool {
        !ops.iter().any(|op| op.overrides(name))
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n, v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n, v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_fields_change_as_a_map_would() {
        let ops = |set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]| {
            let pair = |(n, v): &(&str, &str)| rauta_common::api::v1::HeaderValue {
                name: (*n).into(),
                value: (*v).into(),
            };
            HeaderOps::build(&HeaderModifier {
                set: set.iter().map(pair).collect(),
                add: add.iter().map(pair).collect(),
                remove: remove.iter().map(|r| (*r).into()).collect(),
            })
            .unwrap()
        };
        let rule = ops(&[("x-a", "1")], &[("x-b", "2"), ("x-gone", "0")], &["x-c"]);
        let backend = ops(&[("x-b", "3")], &[("x-a", "4")], &["x-gone"]);
        let raw: Vec<(String, String)> =
            [("X-A", "client"), ("X-C", "c"), ("X-D", "d"), ("X-B", "b")]
                .into_iter()
                .filter(|(n, _)| HeaderOps::keeps(&[&rule, &backend], n))
                .chain(
                    HeaderOps::added_by(&[&rule, &backend])
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.to_str().unwrap())),
                )
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
                .collect();
        let mut map = HeaderMap::new();
        for (n, v) in [("x-a", "client"), ("x-c", "c"), ("x-d", "d"), ("x-b", "b")] {
            map.append(n, HeaderValue::from_static(v));
        }
        rule.apply(&mut map);
        backend.apply(&mut map);
        let mut from_map: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let mut raw = raw;
        raw.sort();
        from_map.sort();
        assert_eq!(raw, from_map);
    }

    #[test]
    fn header_ops_set_add_remove() {
        let ops = HeaderOps::build(&HeaderModifier {
            set: vec![rauta_common::api::v1::HeaderValue {
                name: "x-set".into(),
                value: "s".into(),
            }],
            add: vec![rauta_common::api::v1::HeaderValue {
                name: "x-add".into(),
                value: "a".into(),
            }],
            remove: vec!["x-gone".into()],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("first"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        ops.apply(&mut h);
        assert_eq!(h.get("x-set").unwrap(), "s");
        assert_eq!(
            h.get_all("x-add").iter().collect::<Vec<_>>(),
            ["first", "a"]
        );
        assert!(h.get("x-gone").is_none());
    }
}
