//! Where Gateway API objects come from. Standalone mode reads a directory of YAML.

pub mod directory;

pub use directory::{DirectorySource, LoadProblem, LoadReport, is_manifest_name, parse_manifests};
