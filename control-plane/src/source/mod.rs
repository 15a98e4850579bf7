//! Where Gateway API objects come from: a directory of YAML (standalone mode) or the
//! Kubernetes API.

pub mod directory;
pub mod kubernetes;

pub use directory::{DirectorySource, LoadProblem, LoadReport, is_manifest_name, parse_manifests};
