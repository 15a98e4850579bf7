//! The case files (`cases/<Name>.json`), as README.md in the case directory describes them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct NsName {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ParentSel {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteAccepted {
    pub namespace: String,
    pub name: String,
    pub parent: ParentSel,
    /// HTTPRoute when absent; else GRPCRoute, TLSRoute, ...
    #[serde(default)]
    pub route_kind: Option<String>,
    /// Whether every listener of the parent must be ready (upstream's TLSRoute helper skips it).
    #[serde(default = "yes")]
    pub check_listeners: bool,
    /// Whether the route's conditions must carry its current generation.
    #[serde(default = "yes")]
    pub check_route_generation: bool,
}

fn yes() -> bool {
    true
}

impl RouteAccepted {
    pub fn kind(&self) -> &str {
        self.route_kind.as_deref().unwrap_or("HTTPRoute")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub unfollow_redirect: bool,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExpectedRequest {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub absent_headers: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Response {
    #[serde(default)]
    pub status: Vec<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub valid_header_values: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub absent_headers: Vec<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub ignore_whitespace: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<Value>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Mirror {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Expect {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub gateway: Option<NsName>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub tls: Option<Value>,
    pub request: Request,
    #[serde(default)]
    pub expected_request: Option<ExpectedRequest>,
    #[serde(default)]
    pub backend_set_response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub response: Option<Response>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub mirrored_to: Vec<Mirror>,
    #[serde(default)]
    pub assert: Option<String>,
}

/// One `expect` entry: an HTTP request (no `kind`, or `http`), or one of the other kinds
/// (`grpc`, `tls_connection_rejected`, `weighted_distribution`, ...), kept as data for the
/// module that runs that kind.
#[derive(Debug, Clone)]
pub enum ExpectEntry {
    Http(Box<Expect>),
    Other { kind: String, spec: Value },
}

impl<'de> Deserialize<'de> for ExpectEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = Value::deserialize(d)?;
        match spec.get("kind").and_then(Value::as_str) {
            None | Some("http") => serde_json::from_value(spec)
                .map(|e| ExpectEntry::Http(Box::new(e)))
                .map_err(serde::de::Error::custom),
            Some(kind) => Ok(ExpectEntry::Other {
                kind: kind.to_owned(),
                spec,
            }),
        }
    }
}

impl ExpectEntry {
    /// The Gateway the entry overrides the case's with, if any.
    pub fn gateway(&self) -> Option<NsName> {
        match self {
            ExpectEntry::Http(e) => e.gateway.clone(),
            ExpectEntry::Other { spec, .. } => serde_json::from_value(spec["gateway"].clone()).ok(),
        }
    }

    /// The HTTP request, if the entry is one.
    pub fn http(&self) -> Option<&Expect> {
        match self {
            ExpectEntry::Http(e) => Some(e),
            ExpectEntry::Other { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    pub op: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
    /// Everything else: `set`, `append`, `manifest`, test-specific keys.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Phase {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub steps: Vec<Phase>,
    /// Seconds to wait before the action (creationTimestamps have one-second precision).
    #[serde(default)]
    pub delay_before_s: Option<f64>,
    #[serde(default)]
    pub expect: Vec<ExpectEntry>,
    #[serde(default)]
    pub status_expectations: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub extended_features: Vec<String>,
    #[serde(default)]
    pub provisional: bool,
    #[serde(default)]
    pub manifests: Vec<String>,
    #[serde(default)]
    pub gateway: Option<NsName>,
    #[serde(default)]
    pub routes_must_be_accepted: Vec<RouteAccepted>,
    #[serde(default)]
    pub expect: Vec<ExpectEntry>,
    #[serde(default)]
    pub status_expectations: Vec<Value>,
    #[serde(default)]
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub extra_assertions: Vec<Value>,
    #[serde(default)]
    pub needs: Vec<String>,
    /// Upstream passes the case without checks when any of these is claimed.
    #[serde(default)]
    pub skip_if_supported: Vec<String>,
    #[serde(default)]
    pub notes: String,
}

/// Loads every case in `dir/cases`, sorted by name.
pub fn load_cases(dir: &std::path::Path) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    let entries = std::fs::read_dir(dir.join("cases"))
        .map_err(|e| format!("{}/cases: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let case: Case =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        cases.push(case);
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}
