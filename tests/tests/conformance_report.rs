//! `rauta-conformance --report`: a real run of a few cases (of each of the five profiles, and one whose
//! feature RAUTA does not claim) writes upstream's ConformanceReport, and the file says what
//! happened.

use std::process::Command;

use rauta_tests::harness::{Workspace, bin};
use serde_json::Value;

#[test]
fn a_run_writes_an_upstream_conformance_report() {
    let ws = Workspace::new();
    let path = ws.path().join("report.yaml");
    let mut command = Command::new(bin("rauta-conformance"));
    for case in [
        "HTTPRouteSimpleSameNamespace",
        "HTTPRouteCORS",
        "GRPCExactMethodMatching",
        "TLSRouteInvalidReferenceGrant",
        "TCPRouteInvalidBackendRefNonexistent",
        "UDPRoute",
        "GatewayInfrastructure",
    ] {
        command.args(["--run", case]);
    }
    let output = command
        .arg("--report")
        .arg(&path)
        .args(["--report-url", "https://example.test/rauta"])
        .output()
        .expect("running rauta-conformance");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("conformance: 6 passed, 0 failed, 1 skipped"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&path).expect("report file");
    let report: Value = serde_saphyr::from_str(&text).expect("report is YAML");
    assert_eq!(report["apiVersion"], "gateway.networking.k8s.io/v1alpha1");
    assert_eq!(report["kind"], "ConformanceReport");
    assert_eq!(report["gatewayAPIVersion"], "v1.6.1");
    assert_eq!(report["mode"], "standalone");
    assert_eq!(report["implementation"]["project"], "rauta");
    assert_eq!(
        report["implementation"]["url"],
        "https://example.test/rauta"
    );
    let profile = |name: &str| {
        report["profiles"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no profile {name} in\n{text}"))
    };

    let http = profile("GATEWAY-HTTP");
    assert_eq!(http["core"]["result"], "success");
    assert_eq!(http["core"]["statistics"]["Passed"], 1);
    assert_eq!(http["extended"]["result"], "success");
    assert_eq!(http["extended"]["statistics"]["Passed"], 1);
    assert_eq!(
        http["summary"],
        "Core tests succeeded. Extended tests succeeded."
    );
    let supported = http["extended"]["supportedFeatures"].as_array().unwrap();
    assert!(supported.iter().any(|f| f == "HTTPRouteCORS"));
    assert!(
        supported
            .iter()
            .any(|f| f == "GatewayHTTPListenerIsolation")
    );
    // GatewayInfrastructure's feature is not claimed: upstream would not run it, and the
    // report lists the feature as unsupported and the test nowhere.
    let unsupported = http["extended"]["unsupportedFeatures"].as_array().unwrap();
    assert!(
        unsupported
            .iter()
            .any(|f| f == "GatewayInfrastructurePropagation")
    );
    assert!(!text.contains("GatewayInfrastructure\""), "{text}");

    // Cases of Gateway and GRPCRoute (TLSRoute) features only are the core of GATEWAY-GRPC
    // (GATEWAY-TLS); HTTPRoute cases belong to neither.
    let grpc = profile("GATEWAY-GRPC");
    assert_eq!(grpc["core"]["statistics"]["Passed"], 1);
    assert_eq!(grpc["core"]["result"], "success");
    assert!(grpc["extended"].is_null(), "{text}");
    let tls = profile("GATEWAY-TLS");
    assert_eq!(tls["core"]["statistics"]["Passed"], 1);
    assert_eq!(tls["summary"], "Core tests succeeded.");
    // TCPRoute and UDPRoute are the core of their own profiles.
    for name in ["GATEWAY-TCP", "GATEWAY-UDP"] {
        let p = profile(name);
        assert_eq!(p["core"]["statistics"]["Passed"], 1, "{name}: {text}");
        assert_eq!(p["core"]["result"], "success", "{name}: {text}");
    }
}
