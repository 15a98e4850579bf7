//! The XDP fast path end to end (root only; skipped with a message otherwise): two network
//! namespaces joined by a veth pair, the controller and the proxy (`--xdp-interface`) in the
//! server one with SYN cookies always on, curl in the client one. Eligible exact GETs and
//! HEADs are answered by the kernel (its counter moves, user space's does not); ineligible
//! requests (POST with a body, a Cookie, a second request on a kept-alive connection) are
//! served by user space with the same bytes but the Date; a redirect is answered by the
//! kernel; a cached backend answer is sent by the kernel until it expires, and not once its
//! rule moves to another path; no connection is left half-open; a config edit that removes a
//! rule stops its kernel answers, and one that brings it back restores them. Generic mode, and
//! native mode on the veth (where frames without room pass to user space).

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
        cmd.args(args);
        Proc::command(cmd, log)
    }

    fn command(mut cmd: Command, log: PathBuf) -> Proc {
        cmd.stdin(Stdio::null())
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
        .filter_map(|l| {
            if l.starts_with("date: ") {
                Some("date: <date>")
            } else if l == "connection: close" {
                // The kernel's answers close; user space's keep-alive ones do not say so.
                None
            } else {
                Some(l)
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A backend in the server namespace answering `n=<count>` with `Cache-Control: max-age=60`.
const BACKEND: &str = "127.0.0.1:18080";
const BACKEND_PY: &str = r#"
import http.server, sys
count = 0
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        global count
        count += 1
        body = f"n={count}\n".encode()
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

const ANSWER: &str = "apiVersion: gateway.rauta.dev/v1alpha1\nkind: ResponseCache\nmetadata: {name: flags, namespace: apps}\nspec: {maxTTL: 5s}\n---\napiVersion: gateway.rauta.dev/v1alpha1\nkind: DirectResponse\nmetadata: {name: healthz, namespace: apps}\nspec:\n  status: 200\n  contentType: application/json\n  body: '{\"status\":\"ok\"}'\n  headers: [{name: Cache-Control, value: max-age=5}]\n---\napiVersion: gateway.rauta.dev/v1alpha1\nkind: DirectResponse\nmetadata: {name: fallback, namespace: apps}\nspec:\n  status: 404\n  body: 'not here'\n";

fn route(with_health: bool, flags_path: &str) -> String {
    let health = "  - matches: [{path: {type: Exact, value: /health}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: DirectResponse, name: healthz}}]\n";
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [example.com]\n  rules:\n{}  - matches: [{{path: {{type: Exact, value: {flags_path}}}}}]\n    filters: [{{type: ExtensionRef, extensionRef: {{group: gateway.rauta.dev, kind: ResponseCache, name: flags}}}}]\n    backendRefs: [{{name: flags, port: 8080}}]\n  - matches: [{{path: {{type: Exact, value: /old}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, statusCode: 301}}}}]\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    filters: [{{type: ExtensionRef, extensionRef: {{group: gateway.rauta.dev, kind: DirectResponse, name: fallback}}}}]\n",
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

/// Native mode on a veth: frames usually have too little tailroom for the answer, and a frame
/// grown at the front is lost on XDP_TX (rauta_xdp.c, `grow_front`), so the program passes
/// those requests to user space. What must hold: the same bytes, and no answer lost (no 200 ms
/// retransmission), whoever answers.
#[test]
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
    // Generic mode answers every eligible request in the kernel; native mode on a veth only
    // those whose frame has room (see above).
    let strict = mode == "generic";
    let ws = Workspace::new();
    let backend: std::net::SocketAddr = BACKEND.parse().expect("backend address");
    ws.write("infra.yaml", &infra(&[("flags", &[backend])]));
    ws.write("answers.yaml", ANSWER);
    ws.write("route.yaml", &route(true, "/flags"));
    let net = Net::new();
    let _backend = Proc::command(
        net.exec(&net.server, &["python3", "-c", BACKEND_PY, "18080"]),
        ws.path().join("backend.log"),
    );
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
    // The kernel closes after its answer; in native mode user space may have answered.
    assert!(
        !strict || kernel_answer.contains("connection: close\r\n"),
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
    if strict {
        assert_eq!(answered_now - answered, 5.0, "kernel answers");
        assert_eq!(user_now, user, "user space served none of them");
    } else {
        assert_eq!(answered_now - answered + user_now - user, 5.0, "answers");
    }

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

    // A cached backend answer: kept by user space, then sent by the kernel until it expires
    // (the ResponseCache's maxTTL, 5 s), after which user space asks the backend again.
    let flags = url("/flags");
    let stored_at = Instant::now();
    let first = net.curl(&[host[0], host[1], close[0], close[1], &flags]);
    assert!(first.ends_with("\r\n\r\nn=1\n"), "{first:?}");
    assert!(
        first.contains("cache-status: rauta; fwd=uri-miss; stored\r\n"),
        "{first:?}"
    );
    eventually("the cached answer in the kernel", || {
        kernel_targets(&net).contains(&"/flags".to_owned())
    });
    let (answered, user) = counters(&net);
    let hit = net.curl(&[host[0], host[1], &flags]);
    assert!(hit.ends_with("\r\n\r\nn=1\n"), "{hit:?}");
    assert!(hit.contains("cache-status: rauta; hit\r\n"), "{hit:?}");
    assert!(hit.contains("\r\nage: "), "{hit:?}");
    let (answered_hit, user_hit) = counters(&net);
    if strict {
        assert_eq!((answered_hit - answered, user_hit - user), (1.0, 0.0));
    }
    // Asking to bypass caches (a browser's reload sends max-age=0) reaches the backend, so the
    // kernel must not answer it from its copy.
    let reload = net.curl(&[
        host[0],
        host[1],
        close[0],
        close[1],
        "-H",
        "Cache-Control: max-age=0",
        &flags,
    ]);
    assert!(
        reload.contains("cache-status: rauta; fwd=request\r\n") && reload.ends_with("n=2\n"),
        "{reload:?}"
    );
    let expiry = stored_at + Duration::from_millis(5300);
    std::thread::sleep(expiry.saturating_duration_since(Instant::now()));
    let fresh = net.curl(&[host[0], host[1], close[0], close[1], &flags]);
    assert!(
        fresh.ends_with("\r\n\r\nn=3\n"),
        "expired, asked again: {fresh:?}"
    );
    // The rule moves to another path while /flags's answer is fresh in its cache (kept
    // across snapshots): the kernel must stop sending it once user space routes /flags
    // elsewhere, although the rule and its cache are still there.
    ws.write("route.yaml", &route(true, "/flags2"));
    eventually("/flags2 routed to the cached rule", || {
        net.curl(&[host[0], host[1], close[0], close[1], &url("/flags2")])
            .ends_with("\r\n\r\nn=4\n")
    });
    let moved = net.curl(&[host[0], host[1], &flags]);
    assert!(
        moved.contains("not here"),
        "the kernel kept a moved rule's answer: {moved:?}"
    );
    assert!(!kernel_targets(&net).contains(&"/flags".to_owned()));

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
    ws.write("route.yaml", &route(false, "/flags2"));
    eventually("/health served by the fallback", || {
        net.curl(&[host[0], host[1], &health]).contains("not here")
    });
    assert!(!kernel_targets(&net).contains(&"/health".to_owned()));
    let (before, _) = counters(&net);
    assert!(net.curl(&[host[0], host[1], &health]).contains("not here"));
    let (after, _) = counters(&net);
    assert_eq!(after, before, "the kernel still answers a removed rule");

    // And back: the rule's return puts its path in the kernel again.
    ws.write("route.yaml", &route(true, "/flags2"));
    eventually("/health back in the kernel", || {
        kernel_targets(&net).contains(&"/health".to_owned())
    });
    let back = net.curl(&[host[0], host[1], &health]);
    assert_eq!(without_date(&back), without_date(&kernel_answer));
    let (again, _) = counters(&net);
    if strict {
        assert_eq!(again - after, 1.0, "the kernel answers the rule again");
    }
}
