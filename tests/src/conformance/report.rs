//! The run as upstream's ConformanceReport (`gateway.networking.k8s.io/v1alpha1`, the file
//! implementations submit upstream; conformance/apis/v1 in kubernetes-sigs/gateway-api),
//! with the profiles GATEWAY-HTTP, GATEWAY-GRPC, GATEWAY-TLS, GATEWAY-TCP and GATEWAY-UDP, built
//! as upstream's suite
//! builds it (conformance/utils/suite/reports.go):
//!
//! - a case belongs to a profile when every feature it lists is one of the profile's core or
//!   extended features, and counts as extended there when any of them is not core;
//! - a case whose features RAUTA does not all claim is "not supported" and appears nowhere;
//! - a profile's `core`/`extended` result is `failure` with any failed case, else `partial`
//!   with any skipped one, else `success`; `extended` appears only when an extended case ran;
//! - `extended.supportedFeatures` / `unsupportedFeatures` are the profile's extended features
//!   RAUTA claims / does not claim.
//!
//! Upstream lists skipped tests by name only; the reason follows each name as a YAML comment.
//! A case only for implementations that lack a feature RAUTA claims (`skip_if_supported`)
//! counts as passed, as upstream's suite records it; the runner's own output says SKIP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::case::Case;
use super::runner::Outcome;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Who ran the suite (the report's `implementation`).
#[derive(Debug, Clone)]
pub struct Implementation {
    pub organization: String,
    pub project: String,
    pub url: String,
    pub version: String,
    pub contact: Vec<String>,
}

/// What a report is made from.
pub struct Run<'a> {
    /// The case directory: FEATURES.json (feature levels and channels) and VERSION (the tag).
    pub cases_dir: &'a Path,
    /// The features the GatewayClass claims (`status.supportedFeatures`).
    pub claimed: &'a BTreeSet<String>,
    pub outcomes: &'a [(&'a Case, Outcome)],
    /// The controller's mode: standalone (a directory) or Kubernetes.
    pub kubernetes: bool,
    pub implementation: &'a Implementation,
    /// RFC 3339 time of the run.
    pub date: &'a str,
}

#[derive(Debug, Deserialize)]
struct FeatureInfo {
    level: String,
    channel: String,
}

/// A conformance profile: its core features, and which features are its extended ones.
struct Profile {
    name: &'static str,
    core: &'static [&'static str],
    extended: fn(&str, &FeatureInfo) -> bool,
}

/// Extended features every Gateway profile includes (upstream's GatewayExtendedFeatures).
fn gateway_extended(name: &str, info: &FeatureInfo) -> bool {
    info.level == "extended" && (name.starts_with("Gateway") || name == "ListenerSet")
}

const PROFILES: [Profile; 5] = [
    Profile {
        name: "GATEWAY-HTTP",
        core: &["Gateway", "ReferenceGrant", "HTTPRoute"],
        // Gateway, HTTPRoute and BackendTLSPolicy extended features, and BackendTLSPolicy's
        // core ones too (upstream puts BackendTLSPolicyCoreFeatures among them).
        extended: |name, info| {
            gateway_extended(name, info)
                || (info.level == "extended" && name.starts_with("HTTPRoute"))
                || name.starts_with("BackendTLSPolicy")
        },
    },
    Profile {
        name: "GATEWAY-GRPC",
        core: &["Gateway", "ReferenceGrant", "GRPCRoute"],
        extended: gateway_extended,
    },
    Profile {
        name: "GATEWAY-TLS",
        core: &["Gateway", "ReferenceGrant", "TLSRoute"],
        extended: |name, info| {
            gateway_extended(name, info)
                || (info.level == "extended" && name.starts_with("TLSRoute"))
        },
    },
    // TCPRoute is core here although upstream's feature package files it as extended.
    Profile {
        name: "GATEWAY-TCP",
        core: &["Gateway", "ReferenceGrant", "TCPRoute"],
        extended: gateway_extended,
    },
    Profile {
        name: "GATEWAY-UDP",
        core: &["Gateway", "ReferenceGrant", "UDPRoute"],
        extended: gateway_extended,
    },
];

/// The results of one support level of a profile.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LevelReport {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// (case, why it was skipped).
    pub skipped: Vec<(String, String)>,
}

impl LevelReport {
    pub fn result(&self) -> &'static str {
        if !self.failed.is_empty() {
            "failure"
        } else if !self.skipped.is_empty() {
            "partial"
        } else {
            "success"
        }
    }

    fn summary(&self) -> String {
        match self.result() {
            "failure" => format!("failed with {} test failures", self.failed.len()),
            "partial" => format!("partially succeeded with {} test skips", self.skipped.len()),
            _ => "succeeded".to_owned(),
        }
    }
}

/// One profile's part of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileReport {
    pub name: String,
    pub core: LevelReport,
    /// Present when an extended case of the profile ran (upstream leaves it out otherwise).
    pub extended: Option<LevelReport>,
    pub supported_features: Vec<String>,
    pub unsupported_features: Vec<String>,
}

impl ProfileReport {
    pub fn summary(&self) -> String {
        let mut s = format!("Core tests {}", self.core.summary());
        if let Some(e) = &self.extended {
            s.push_str(&format!(". Extended tests {}", e.summary()));
        }
        s.push('.');
        s
    }
}

/// The whole report, before rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub gateway_api_version: String,
    pub gateway_api_channel: String,
    pub profiles: Vec<ProfileReport>,
    pub succeeded_provisional: Vec<String>,
}

fn read(path: &Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The `tag:` line of the case directory's VERSION file.
fn upstream_tag(cases_dir: &Path) -> Result<String, ReportError> {
    let path = cases_dir.join("VERSION");
    read(&path)?
        .lines()
        .find_map(|l| l.strip_prefix("tag:"))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| ReportError::Parse {
            path: path.display().to_string(),
            message: "no tag: line".into(),
        })
}

fn features(cases_dir: &Path) -> Result<BTreeMap<String, FeatureInfo>, ReportError> {
    let path = cases_dir.join("FEATURES.json");
    serde_json::from_str(&read(&path)?).map_err(|e| ReportError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Builds the report of a run.
pub fn build(run: &Run<'_>) -> Result<Report, ReportError> {
    let features = features(run.cases_dir)?;
    let mut profiles = Vec::new();
    for profile in &PROFILES {
        let is_core = |f: &str| profile.core.contains(&f);
        let in_profile = |f: &str| {
            is_core(f)
                || features
                    .get(f)
                    .is_some_and(|info| (profile.extended)(f, info))
        };
        let mut core = LevelReport::default();
        let mut extended: Option<LevelReport> = None;
        for (case, outcome) in run.outcomes {
            // Upstream does not run, count or list a test whose features are not claimed.
            let counted = !matches!(outcome, Outcome::NotSupported(_));
            if !counted || !case.features.iter().all(|f| in_profile(f)) {
                continue;
            }
            let level = if case.features.iter().all(|f| is_core(f)) {
                &mut core
            } else {
                extended.get_or_insert_with(LevelReport::default)
            };
            let name = case.name.clone();
            // A case for implementations without a feature RAUTA claims: upstream's test
            // returns at once and the suite records a pass; the runner said SKIP.
            let passes_unchecked = case
                .skip_if_supported
                .iter()
                .any(|f| run.claimed.contains(f));
            match outcome {
                Outcome::Pass => level.passed.push(name),
                Outcome::Skip(_) if passes_unchecked => level.passed.push(name),
                Outcome::Fail(_) => level.failed.push(name),
                Outcome::Skip(why) => level.skipped.push((name, why.clone())),
                Outcome::NotSupported(_) => {}
            }
        }
        if core == LevelReport::default() && extended.is_none() {
            continue;
        }
        let (supported, unsupported): (Vec<String>, Vec<String>) = features
            .iter()
            .filter(|(name, info)| !is_core(name) && (profile.extended)(name, info))
            .map(|(name, _)| name.clone())
            .partition(|name| run.claimed.contains(name));
        profiles.push(ProfileReport {
            name: profile.name.to_owned(),
            core,
            extended,
            supported_features: supported,
            unsupported_features: unsupported,
        });
    }
    let experimental = run
        .claimed
        .iter()
        .any(|f| features.get(f).is_some_and(|i| i.channel == "experimental"));
    Ok(Report {
        gateway_api_version: upstream_tag(run.cases_dir)?,
        gateway_api_channel: if experimental {
            "experimental"
        } else {
            "standard"
        }
        .to_owned(),
        profiles,
        succeeded_provisional: run
            .outcomes
            .iter()
            .filter(|(c, o)| c.provisional && *o == Outcome::Pass)
            .map(|(c, _)| c.name.clone())
            .collect(),
    })
}

/// A YAML double-quoted scalar (JSON's string syntax is YAML's).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A YAML comment: one line, no line breaks from the text.
fn comment(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn render_level(
    out: &mut String,
    key: &str,
    level: &LevelReport,
    features: Option<&ProfileReport>,
) {
    out.push_str(&format!("  {key}:\n    result: {}\n", level.result()));
    out.push_str(&format!(
        "    statistics:\n      Failed: {}\n      Passed: {}\n      Skipped: {}\n",
        level.failed.len(),
        level.passed.len(),
        level.skipped.len()
    ));
    if !level.skipped.is_empty() {
        out.push_str("    skippedTests:\n");
        for (name, why) in &level.skipped {
            out.push_str(&format!("    - {}  # {}\n", quoted(name), comment(why)));
        }
    }
    if !level.failed.is_empty() {
        out.push_str("    failedTests:\n");
        for name in &level.failed {
            out.push_str(&format!("    - {}\n", quoted(name)));
        }
    }
    if let Some(p) = features {
        for (key, list) in [
            ("supportedFeatures", &p.supported_features),
            ("unsupportedFeatures", &p.unsupported_features),
        ] {
            if !list.is_empty() {
                out.push_str(&format!("    {key}:\n"));
                for f in list {
                    out.push_str(&format!("    - {}\n", quoted(f)));
                }
            }
        }
    }
}

/// The report as YAML, in upstream's field names and order.
pub fn render(report: &Report, run: &Run<'_>) -> String {
    let i = run.implementation;
    let mut out = String::new();
    out.push_str("apiVersion: gateway.networking.k8s.io/v1alpha1\nkind: ConformanceReport\n");
    out.push_str(&format!("date: {}\n", quoted(run.date)));
    out.push_str(&format!(
        "gatewayAPIChannel: {}\ngatewayAPIVersion: {}\n",
        quoted(&report.gateway_api_channel),
        quoted(&report.gateway_api_version)
    ));
    out.push_str("implementation:\n  contact:");
    if i.contact.is_empty() {
        out.push_str(" []\n");
    } else {
        out.push('\n');
        for c in &i.contact {
            out.push_str(&format!("  - {}\n", quoted(c)));
        }
    }
    out.push_str(&format!(
        "  organization: {}\n  project: {}\n  url: {}\n  version: {}\n",
        quoted(&i.organization),
        quoted(&i.project),
        quoted(&i.url),
        quoted(&i.version)
    ));
    let mode = if run.kubernetes {
        "kubernetes"
    } else {
        "standalone"
    };
    out.push_str(&format!("mode: {mode}\nprofiles:\n"));
    for p in &report.profiles {
        out.push_str(&format!("- name: {}\n", quoted(&p.name)));
        render_level(&mut out, "core", &p.core, None);
        if let Some(e) = &p.extended {
            render_level(&mut out, "extended", e, Some(p));
        }
        out.push_str(&format!("  summary: {}\n", quoted(&p.summary())));
    }
    if !report.succeeded_provisional.is_empty() {
        out.push_str("succeededProvisionalTests:\n");
        for name in &report.succeeded_provisional {
            out.push_str(&format!("- {}\n", quoted(name)));
        }
    }
    out
}

/// Builds, renders and writes the report of a run; returns it for the caller to summarise.
pub fn write(path: &Path, run: &Run<'_>) -> Result<Report, ReportError> {
    let report = build(run)?;
    std::fs::write(path, render(&report, run)).map_err(|source| ReportError::Write {
        path: path.display().to_string(),
        source,
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn case(name: &str, features: &[&str], provisional: bool) -> Case {
        serde_json::from_value(serde_json::json!({
            "name": name, "features": features, "provisional": provisional,
        }))
        .unwrap()
    }

    #[test]
    fn cases_land_in_their_profiles_and_levels() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/upstream");
        let cases = [
            case(
                "HTTPRouteSimpleSameNamespace",
                &["Gateway", "HTTPRoute"],
                false,
            ),
            case(
                "HTTPRouteCORS",
                &["Gateway", "HTTPRoute", "HTTPRouteCORS"],
                false,
            ),
            case(
                "GatewayInfrastructure",
                &["Gateway", "GatewayInfrastructurePropagation"],
                false,
            ),
            case(
                "GRPCRouteNamedRule",
                &["Gateway", "GRPCRoute", "GRPCRouteNamedRouteRule"],
                true,
            ),
            case("GRPCExactMethodMatching", &["Gateway", "GRPCRoute"], false),
            case(
                "TLSRouteInvalidReferenceGrant",
                &["Gateway", "TLSRoute", "ReferenceGrant"],
                false,
            ),
            case(
                "TLSRouteListenerTerminateSupportedKinds",
                &["Gateway", "TLSRoute", "TLSRouteModeTerminate"],
                false,
            ),
            // Only for implementations without ReferenceGrant, which is claimed.
            serde_json::from_value(serde_json::json!({
                "name": "TLSRouteForOthers", "features": ["Gateway", "TLSRoute"],
                "skip_if_supported": ["ReferenceGrant"],
            }))
            .unwrap(),
        ];
        let outcomes: Vec<(&Case, Outcome)> = vec![
            (&cases[0], Outcome::Pass),
            (&cases[1], Outcome::Fail("status 500".into())),
            (&cases[2], Outcome::Skip("needs a cluster".into())),
            (&cases[3], Outcome::Pass),
            (&cases[4], Outcome::Pass),
            (&cases[5], Outcome::Pass),
            (
                &cases[6],
                Outcome::NotSupported("missing feature TLSRouteModeTerminate".into()),
            ),
            (&cases[7], Outcome::Skip("claims ReferenceGrant".into())),
        ];
        let claimed: BTreeSet<String> = [
            "Gateway",
            "HTTPRoute",
            "ReferenceGrant",
            "HTTPRouteCORS",
            "GRPCRoute",
            "GRPCRouteNamedRouteRule",
            "TLSRoute",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let implementation = Implementation {
            organization: "o".into(),
            project: "p".into(),
            url: "u".into(),
            version: "v".into(),
            contact: vec![],
        };
        let run = Run {
            cases_dir: &dir,
            claimed: &claimed,
            outcomes: &outcomes,
            kubernetes: false,
            implementation: &implementation,
            date: "2026-01-01T00:00:00Z",
        };
        let report = build(&run).unwrap();
        let names: Vec<&str> = report.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "GATEWAY-HTTP",
                "GATEWAY-GRPC",
                "GATEWAY-TLS",
                "GATEWAY-TCP",
                "GATEWAY-UDP"
            ]
        );
        let http = &report.profiles[0];
        assert_eq!(http.core.passed, ["HTTPRouteSimpleSameNamespace"]);
        let ext = http.extended.as_ref().unwrap();
        assert_eq!(ext.failed, ["HTTPRouteCORS"]);
        assert_eq!(
            ext.skipped,
            [(
                "GatewayInfrastructure".to_owned(),
                "needs a cluster".to_owned()
            )]
        );
        assert_eq!(ext.result(), "failure");
        assert!(
            http.supported_features
                .contains(&"HTTPRouteCORS".to_owned())
        );
        assert!(
            http.unsupported_features
                .contains(&"HTTPRouteMethodMatching".to_owned())
        );
        // GRPCRouteNamedRouteRule is in no profile: its case shows only as a provisional pass.
        // A case of Gateway features only belongs to every profile.
        let grpc = &report.profiles[1];
        assert_eq!(grpc.core.passed, ["GRPCExactMethodMatching"]);
        let grpc_ext = grpc.extended.as_ref().unwrap();
        assert_eq!(grpc_ext.skipped.len(), 1);
        assert!(grpc_ext.passed.is_empty());
        assert_eq!(report.succeeded_provisional, ["GRPCRouteNamedRule"]);
        // A case whose features are not all claimed appears nowhere.
        let tls = &report.profiles[2];
        // A case for implementations without a claimed feature passes, as upstream records it.
        assert_eq!(
            tls.core.passed,
            ["TLSRouteInvalidReferenceGrant", "TLSRouteForOthers"]
        );
        let tls_ext = tls.extended.as_ref().unwrap();
        assert_eq!(
            (
                tls_ext.passed.len(),
                tls_ext.failed.len(),
                tls_ext.skipped.len()
            ),
            (0, 0, 1)
        );
        assert!(
            tls.unsupported_features
                .contains(&"TLSRouteModeTerminate".to_owned())
        );
        assert_eq!(report.gateway_api_version, "v1.6.1");

        // The YAML reads back with upstream's field names.
        let yaml: Value = serde_saphyr::from_str(&render(&report, &run)).unwrap();
        assert_eq!(yaml["kind"], "ConformanceReport");
        assert_eq!(yaml["apiVersion"], "gateway.networking.k8s.io/v1alpha1");
        assert_eq!(yaml["profiles"][0]["extended"]["statistics"]["Failed"], 1);
        assert_eq!(
            yaml["profiles"][0]["extended"]["skippedTests"][0],
            "GatewayInfrastructure"
        );
        assert_eq!(yaml["profiles"][1]["core"]["result"], "success");
        assert_eq!(
            yaml["profiles"][0]["summary"],
            "Core tests succeeded. Extended tests failed with 1 test failures."
        );
        assert_eq!(yaml["implementation"]["contact"], serde_json::json!([]));
    }
}
