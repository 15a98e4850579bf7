//! Entry point for the controller's fuzz target (`fuzz/`) and its corpus replay in the test
//! suite: YAML as a user or the API server could hand it over, decoded into objects of every
//! kind and translated. It must never panic.

use crate::source::directory::parse_manifests;
use crate::translator::translate;

/// Decodes the input as a multi-document YAML file and translates what it holds.
pub fn yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (objects, _problems) = parse_manifests(text);
    let _ = translate(&objects, crate::translator::DEFAULT_CONTROLLER_NAME);
}
