//! RequestMirror: which cluster gets a copy of a request, and how often (sent by
//! `serve::mirror`).

use std::sync::Arc;

use crate::model::cluster::ClusterRt;

#[derive(Debug)]
pub struct MirrorRt {
    pub cluster_name: Box<str>,
    /// `None` when the cluster is not in the snapshot: nothing is sent.
    pub cluster: Option<Arc<ClusterRt>>,
    pub numerator: u32,
    pub denominator: u32,
}

impl MirrorRt {
    /// Whether this request is one of the share to copy.
    pub fn sampled(&self) -> bool {
        self.denominator == 0
            || self.numerator >= self.denominator
            || (self.numerator > 0 && rand::random_range(0..self.denominator) < self.numerator)
    }
}
