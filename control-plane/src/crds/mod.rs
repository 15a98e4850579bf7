//! RAUTA's own custom resources (group `gateway.rauta.dev`): the Rust types the translator
//! reads, from which the CRD manifests in `manifests/` are generated (`crd_manifests`; a test
//! fails when the committed file is stale).

pub mod backend_policy;
pub mod direct_response;
pub mod policy;
pub mod rate_limit_policy;
pub mod response_cache;
pub mod security_policy;
pub mod traffic_policy;

use kube::CustomResourceExt;

/// The API group of RAUTA's own resources.
pub const GROUP: &str = "gateway.rauta.dev";

/// Every CRD RAUTA defines, as one YAML stream (`manifests/05-crds.yaml`).
pub fn crd_manifests() -> Result<String, String> {
    let crds = [
        direct_response::DirectResponse::crd(),
        response_cache::ResponseCache::crd(),
        rate_limit_policy::RateLimitPolicy::crd(),
        security_policy::SecurityPolicy::crd(),
        backend_policy::BackendPolicy::crd(),
        traffic_policy::TrafficPolicy::crd(),
    ];
    let mut out = String::from(
        "# Generated from control-plane/src/crds by `REGENERATE_CRDS=1 cargo test -p rauta-controller crd`;\n# do not edit.\n",
    );
    for crd in &crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed manifest is what the types generate; REGENERATE_CRDS=1 rewrites it.
    #[test]
    fn crd_manifest_is_up_to_date() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/05-crds.yaml");
        let generated = super::crd_manifests().unwrap();
        if std::env::var_os("REGENERATE_CRDS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "manifests/05-crds.yaml is stale: run REGENERATE_CRDS=1 cargo test -p rauta-controller crd"
        );
    }
}
