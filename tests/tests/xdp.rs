//! The XDP fast path end to end (root only; skipped with a message otherwise): two network
//! namespaces joined by a veth pair, the controller and the proxy (`--xdp-interface`) in the
//! server one with SYN cookies always on, curl in the client one. Eligible exact GETs and
//! HEADs are answered by the kernel (its counter moves, user space's does not); ineligible
//! requests (POST with a body, a Cookie, a second request on a kept-alive connection) are
//! served by user space with the same bytes but the Date; a redirect is answered by the
//! kernel; no connection is left half-open; a config edit that removes the rule stops its
//! kernel answers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rauta_tests::harness::{Workspace, bin, metric_value};
use rauta_tests::manifests::infra;

const SERVER_IP: &str = "10.99.0.1";

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why these tests cannot run here, if they cannot.
fn unsupported() -> Option<&'static str> {
    let uid = run(&["id", "-u"]);
    if uid.trim() != "0" {
        return Some("not running as root");
    }
    for tool in ["ip", "curl", "ss"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some("ip, curl or ss missing");
        }
    }
    None
}

/// A server and a client namespace joined by a veth pair; deleted on drop (with the veth).
struct Net {
    server: String,
    client: String,
    server_if: String,
}

impl Net {
    fn new() -> Net {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "rx{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            server: format!("{id}s"),
            client: format!("{id}c"),
            server_if: format!("{id}a"),
        };
        let client_if = format!("{id}b");
        let (s, c) = (net.server.as_str(), net.client.as_str());
        run(&["ip", "netns", "add", s]);
        run(&["ip", "netns", "add", c]);
        run(&[
            "ip",
            "link",
            "add",
            &net.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
        ]);
        run(&["ip", "link", "set", &net.server_if, "netns", s]);
        run(&["ip", "link", "set", &client_if, "netns", c]);
        run(&[
            "ip",
            "-n",
            s,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            &net.server_if,
        ]);
        run(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            "10.99.0.2/24",
            "dev",
            &client_if,
        ]);
        for (ns, dev) in [(s, net.server_if.as_str()), (c, client_if.as_str())] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // No socket before the first ACK: what the kernel path relies on.
        run(&[
            "ip",
            "netns",
            "exec",
            s,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_syncookies=2",
        ]);
        // A veth only receives XDP_TX frames when its peer has an XDP program.
        let object =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data-plane/xdp/rauta_xdp.o");
        run(&[
            "ip",
            "-n",
            c,
            "link",
            "set",
            &client_if,
            "xdpdrv",
            "obj",
            &object.to_string_lossy(),
            "sec",
            "xdp",
            "program",
            "xdp_pass",
        ]);
        net
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd
    }

    /// curl in the client namespace: the raw response (head and body) or "" on failure.
    fn curl(&self, args: &[&str]) -> String {
        let out = self
            .exec(&self.client, &["curl", "-s", "-i", "--max-time", "5"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn admin(&self, path: &str) -> String {
        let out = self
            .exec(&self.server, &["curl", "-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:15000{path}"))
            .output()
            .expect("curl admin");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// TCP sockets on port 80 in `ns` whose state is not one of `allowed`.
    fn sockets_not_in(&self, ns: &str, allowed: &[&str]) -> Vec<String> {
        let out = self
            .exec(ns, &["ss", "-Htan", "( sport = :80 or dport = :80 )"])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !allowed.iter().any(|a| l.starts_with(a)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A process started in a namespace, killed on drop; its log printed if the test failed.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(net: &Net, log: PathBuf, program: &str, args: &[&str]) -> Proc {
        let mut cmd = net.exec(&net.server, &[&bin(program).to_string_lossy()]);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        Proc {
            child: cmd.spawn().expect("spawn"),
            log,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- {} -----\n{text}", self.log.display());
        }
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The counters after the proxy's next one-second read of the kernel's.
fn counters(net: &Net) -> (f64, f64) {
    std::thread::sleep(Duration::from_millis(1300));
    let m = net.admin("/metrics");
    let user: f64 = m
        .lines()
        .filter(|l| l.starts_with("rauta_proxy_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (metric_value(&m, "rauta_proxy_xdp_answered_total"), user)
}

fn without_date(response: &str) -> String {
    response
        .split("\r\n")
        .map(|l| {
            if l.starts_with("date: ") {
                "date: <date>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

const ANSWER: &str = "apiVersion: gateway.rauta.dev/v1alpha1\nkind: DirectResponse\nmetadata: {name: healthz, namespace: apps}\nspec:\n  status: 200\n  contentType: application/json\n  body: '{\"status\":\"ok\"}'\n  headers: [{name: Cache-Control, value: max-age=5}]\n---\napiVersion: gateway.rauta.dev/v1alpha1\nkind: DirectResponse\nmetadata: {name: fallback, namespace: apps}\nspec:\n  status: 404\n  body: 'not here'\n";

fn route(with_health: bool) -> String {
    let health = "  - matches: [{path: {type: Exact, value: /health}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: DirectResponse, name: healthz}}]\n";
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [example.com]\n  rules:\n{}  - matches: [{{path: {{type: Exact, value: /old}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, statusCode: 301}}}}]\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    filters: [{{type: ExtensionRef, extensionRef: {{group: gateway.rauta.dev, kind: DirectResponse, name: fallback}}}}]\n",
        if with_health { health } else { "" }
    )
}

fn kernel_targets(net: &Net) -> Vec<String> {
    let dump: serde_json::Value =
        serde_json::from_str(&net.admin("/config_dump")).unwrap_or_default();
    dump["kernel"]["entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["target"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Known failure (issue 17): on a veth in native mode, a request frame usually has too little
/// tailroom for the answer, the program grows it at the front instead, and that XDP_TX frame
/// never reaches the peer; the client retransmits after 200 ms and the retransmission (a
/// copied frame with room) is answered, so every answer is counted twice and costs an RTO.
/// Generic mode has no such loss. Run it with `--ignored`.
#[test]
#[ignore = "native XDP on veth loses the first reply (see the comment)"]
fn exact_gets_are_answered_by_the_kernel_native() {
    exact_gets_are_answered_by_the_kernel("native");
}

#[test]
fn exact_gets_are_answered_by_the_kernel_generic() {
    exact_gets_are_answered_by_the_kernel("generic");
}

fn exact_gets_are_answered_by_the_kernel(mode: &str) {
    if let Some(why) = unsupported() {
        println!("SKIP xdp end-to-end tests: {why} (they need root, ip, curl and ss)");
        return;
    }
    let ws = Workspace::new();
    ws.write("infra.yaml", &infra(&[]));
    ws.write("answers.yaml", ANSWER);
    ws.write("route.yaml", &route(true));
    let net = Net::new();
    let config = ws.config.to_string_lossy().into_owned();
    let _controller = Proc::start(
        &net,
        ws.path().join("controller.log"),
        "rauta-controller",
        &[
            "--config-dir",
            &config,
            "--grpc-listen",
            "127.0.0.1:18000",
            "--plaintext",
        ],
    );
    let _proxy = Proc::start(
        &net,
        ws.path().join("proxy.log"),
        "rauta-proxy",
        &[
            "--controller",
            "http://127.0.0.1:18000",
            "--gateway",
            "infra/gw",
            "--admin-listen",
            "127.0.0.1:15000",
            "--xdp-interface",
            &net.server_if,
            "--xdp-mode",
            mode,
        ],
    );
    eventually("the proxy's kernel entries", || {
        let t = kernel_targets(&net);
        t.contains(&"/health".to_owned()) && t.contains(&"/old".to_owned())
    });
    let url = |path: &str| format!("http://{SERVER_IP}{path}");
    let host = ["-H", "Host: example.com"];

    // Eligible GETs: answered by the kernel.
    let (answered, user) = counters(&net);
    let health = url("/health");
    let kernel_answer = net.curl(&[host[0], host[1], &health]);
    assert!(
        kernel_answer.starts_with("HTTP/1.1 200 OK\r\n"),
        "{kernel_answer:?}"
    );
    assert!(
        kernel_answer.ends_with("\r\n\r\n{\"status\":\"ok\"}"),
        "{kernel_answer:?}"
    );
    assert!(
        kernel_answer.contains("connection: close\r\n"),
        "{kernel_answer:?}"
    );
    for _ in 0..2 {
        assert_eq!(
            without_date(&net.curl(&[host[0], host[1], &health])),
            without_date(&kernel_answer)
        );
    }
    // HEAD: the same head, no body.
    let head = net.curl(&["-I", host[0], host[1], &health]);
    assert_eq!(
        without_date(&head),
        without_date(kernel_answer.split_inclusive("\r\n\r\n").next().unwrap())
    );
    // The redirect, by the kernel too.
    let redirect = net.curl(&[host[0], host[1], &url("/old")]);
    assert!(
        redirect.starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
        "{redirect:?}"
    );
    assert!(
        redirect.contains("location: https://example.com/old\r\n"),
        "{redirect:?}"
    );
    let (answered_now, user_now) = counters(&net);
    assert_eq!(answered_now - answered, 5.0, "kernel answers");
    assert_eq!(user_now, user, "user space served none of them");

    // Ineligible: served by user space, with the same bytes but the Date.
    let close = ["-H", "Connection: close"];
    let post = net.curl(&[host[0], host[1], close[0], close[1], "-d", "x", &health]);
    let cookie = net.curl(&[
        host[0],
        host[1],
        close[0],
        close[1],
        "-H",
        "Cookie: a=b",
        &health,
    ]);
    for served in [&post, &cookie] {
        assert_eq!(without_date(served), without_date(&kernel_answer));
    }
    // A second request on a kept-alive connection (the first one is not eligible).
    let kept = net.curl(&[host[0], host[1], &url("/elsewhere"), &health]);
    assert!(
        kept.contains("not here") && kept.ends_with("{\"status\":\"ok\"}"),
        "{kept:?}"
    );
    let (answered_after, user_after) = counters(&net);
    assert_eq!(
        answered_after, answered_now,
        "the kernel answered an ineligible request"
    );
    assert_eq!(user_after - user_now, 4.0, "user space requests");

    // Nothing half-open on either side.
    let open = || {
        let mut open = net.sockets_not_in(&net.server, &["LISTEN", "TIME-WAIT"]);
        open.extend(net.sockets_not_in(&net.client, &["TIME-WAIT"]));
        open
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !open().is_empty() {
        if Instant::now() > deadline {
            let ss = |ns: &str| {
                let out = net.exec(ns, &["ss", "-tanoi"]).output().expect("ss");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            panic!(
                "half-open connections: {:?}\nserver:\n{}\nclient:\n{}\n{}",
                open(),
                ss(&net.server),
                ss(&net.client),
                net.admin("/metrics")
                    .lines()
                    .filter(|l| l.starts_with("rauta_proxy_xdp"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // A config edit that drops the rule stops its kernel answers.
    ws.write("route.yaml", &route(false));
    eventually("/health served by the fallback", || {
        net.curl(&[host[0], host[1], &health]).contains("not here")
    });
    assert!(!kernel_targets(&net).contains(&"/health".to_owned()));
    let (before, _) = counters(&net);
    assert!(net.curl(&[host[0], host[1], &health]).contains("not here"));
    let (after, _) = counters(&net);
    assert_eq!(after, before, "the kernel still answers a removed rule");
}
