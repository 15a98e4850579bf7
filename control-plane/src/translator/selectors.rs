//! Label selectors on Namespaces, as allowedRoutes (listeners) and allowedListeners
//! (Gateways) use them. The generated types of the two fields differ; both read as
//! [`NamespaceSelector`].

use std::collections::BTreeMap;

use crate::objects::{ObjectRef, ObjectSet};

/// One matchExpressions entry.
pub struct Requirement<'a> {
    pub key: &'a str,
    pub operator: &'a str,
    pub values: &'a [String],
}

/// A label selector: every matchLabels pair and every requirement must hold.
pub struct NamespaceSelector<'a> {
    pub match_labels: Option<&'a BTreeMap<String, String>>,
    pub requirements: Vec<Requirement<'a>>,
}

impl NamespaceSelector<'_> {
    /// Whether the labels of Namespace `namespace` satisfy the selector.
    pub fn selects(&self, objects: &ObjectSet, namespace: &str) -> bool {
        let mut labels = objects
            .namespaces
            .get(&ObjectRef::new("", namespace))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        // The API server puts this label on every Namespace; a directory of YAML may not.
        labels
            .entry("kubernetes.io/metadata.name".to_owned())
            .or_insert_with(|| namespace.to_owned());
        let labels_ok = self
            .match_labels
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        let requirements_ok = self.requirements.iter().all(|r| {
            let value = labels.get(r.key);
            match r.operator {
                "In" => value.is_some_and(|v| r.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        });
        labels_ok && requirements_ok
    }
}
