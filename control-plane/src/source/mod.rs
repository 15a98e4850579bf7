//! Where Gateway API objects come from. Standalone mode reads a directory of YAML.

pub mod directory;

pub use directory::{DirectorySource, LoadProblem, LoadReport, parse_manifests};
