//! The HTTP/1.1 fast path end to end: a raw client and a scripted raw backend on each side of
//! the real proxy, so every byte of framing is ours to choose. Keep-alive and pooling,
//! forwarded fields, chunked bodies with trailers, HEAD and 204, close-delimited bodies,
//! pipelining, a pooled connection the upstream closed, a body cut short, timeouts, a dead
//! endpoint, and the handoff to the general path in the middle of a connection. Also the
//! general path's own HTTP/1.1 client, which HTTP/2 clients' requests without a body take.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rauta_tests::harness::{
    Controller, Proxy, RefusingPort, Workspace, free_port, h2c_connect, start_gateway,
};
use rauta_tests::manifests::{http_route, on_http_gateway, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers by path, in framings a library server would not produce.
struct ScriptedBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Where connections are refused: the dead endpoint of the tests' dead.example.
    dead: RefusingPort,
}

impl ScriptedBackend {
    async fn start() -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_backend(stream));
            }
        });
        ScriptedBackend {
            addr,
            connections,
            dead: RefusingPort::bind(),
        }
    }
}

/// Serves requests with Content-Length bodies (or none) until the connection ends.
async fn serve_backend(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut drop_next = false;
    loop {
        let Some((head_len, path, body_len)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        if drop_next {
            // Closes on the request that followed /then-drop, unanswered.
            return;
        }
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let body = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        let reply: Vec<u8> = match path.as_str() {
            "/chunked" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 12\r\n\r\n"
                    .to_vec()
            }
            // Connection naming a framing field must not take the framing away.
            "/chunked-listed" => b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\n\
                Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
            "/interim" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
            "/reason" => b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "/then-drop" => {
                drop_next = true;
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkept".to_vec()
            }
            "/chunked-cut" => {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                return;
            }
            "/bad-length" => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec()
            }
            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/until-close" => {
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
                    .await;
                return;
            }
            "/close-after" => {
                // Closes without saying so: the proxy pools the connection and finds it closed.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
                    .await;
                return;
            }
            "/truncated" => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
                    .await;
                return;
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate".to_vec()
            }
            "/echo" => {
                let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
                r.extend_from_slice(&body);
                r
            }
            "/echo-chunked" => {
                // The body in two chunks (or just the last chunk when empty).
                let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                let (a, b) = body.split_at(body.len() / 2);
                for part in [a, b].into_iter().filter(|p| !p.is_empty()) {
                    r.extend(format!("{:x}\r\n", part.len()).as_bytes());
                    r.extend_from_slice(part);
                    r.extend(b"\r\n");
                }
                r.extend(b"0\r\n\r\n");
                r
            }
            _ => {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nContent-Length: {}\r\n\r\n",
                    head.len()
                )
                .into_bytes();
                r.extend_from_slice(head.as_bytes());
                r
            }
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Reads until a request head is complete: (head length, path, Content-Length).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(usize, String, usize)> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut fields);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            return Some((n, req.path?.to_owned(), length));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response as the client read it.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client on one connection, reading responses exactly as framed.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// More bytes; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no bytes within 10 s"),
        }
    }

    /// The next response; `head_request`: no body whatever the headers say. Err when the
    /// connection ends before the response does.
    async fn response(&mut self, head_request: bool) -> Result<Response, String> {
        let (status, headers, head_len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) =
                resp.parse(&self.buf).map_err(|e| e.to_string())?
            {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (resp.code.unwrap_or(0), headers, n);
            }
            if !self.fill().await {
                return Err("closed before the head".into());
            }
        };
        self.buf.drain(..head_len);
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 204 {
            return Ok(response);
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().map_err(|_| "bad length")?;
            while self.buf.len() < len {
                if !self.fill().await {
                    return Err(format!(
                        "closed after {} of {len} body bytes",
                        self.buf.len()
                    ));
                }
            }
            response.body = self.buf.drain(..len).collect();
        } else if response.header("transfer-encoding") == Some("chunked") {
            // Kept raw: the test checks the chunks and trailers arrive as sent.
            let end = loop {
                if let Some(end) = chunked_end(&self.buf) {
                    break end;
                }
                if !self.fill().await {
                    return Err("closed mid-chunks".into());
                }
            };
            response.body = self.buf.drain(..end).collect();
        } else {
            while self.fill().await {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

/// Where a chunked body that starts `buf` ends (after its trailer section), once all of it
/// is there.
fn chunked_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = find(&buf[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..at + line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let line = find(&buf[at..], b"\r\n")?;
                at += line + 2;
                if line == 0 {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > buf.len() {
            return None;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("rauta_proxy_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An HTTPRoute in `apps` for `host` with one rule to the Service `scripted`.
fn scripted_route(name: &str, host: &str) -> String {
    let rule = "  - backendRefs: [{name: scripted, port: 8080}]\n";
    http_route("apps", name, ("infra", "gw"), &[host], rule)
}

fn get(path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
}

#[tokio::test]
async fn the_fast_path_relays_http1_exactly_and_hands_off_what_it_does_not_take() {
    let backend = ScriptedBackend::start().await;
    let dead = backend.dead.addr;
    let ws = Workspace::new();
    ws.write(
        "all.yaml",
        &on_http_gateway(&[
            service("apps", "scripted", &[backend.addr]),
            service("apps", "dead", &[dead]),
            scripted_route("fast", "fast.example"),
            http_route(
                "apps",
                "timed",
                ("infra", "gw"),
                &["timed.example"],
                "  - timeouts: {request: 500ms}\n    backendRefs: [{name: scripted, port: 8080}]\n",
            ),
            http_route(
                "apps",
                "modified",
                ("infra", "gw"),
                &["modified.example"],
                "  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: x-filtered, value: gateway}]\n        add: [{name: x-added, value: one}]\n        remove: [x-drop]\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        set: [{name: x-resp, value: set}]\n    backendRefs:\n    - name: scripted\n      port: 8080\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {add: [{name: x-backend, value: b}]}\n",
            ),
            http_route(
                "apps",
                "rewritten",
                ("infra", "gw"),
                &["rewritten.example"],
                "  - filters:\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /headers}}\n    backendRefs: [{name: scripted, port: 8080}]\n",
            ),
            http_route(
                "apps",
                "gone",
                ("infra", "gw"),
                &["dead.example"],
                "  - backendRefs: [{name: dead, port: 8080}]\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &["--worker-threads", "1"]).await;
    let addr = proxy.listener(80);

    // Keep-alive on both sides; connection-scoped fields dropped both ways; the gateway's
    // forwarded fields and trace context added.
    let mut client = RawClient::connect(addr).await;
    for _ in 0..5 {
        client
            .send(&get(
                "/headers?x=1",
                "fast.example",
                "Connection: keep-alive, x-secret\r\nX-Secret: 1\r\nX-Forwarded-For: 192.0.2.9\r\n\
                 traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
            ))
            .await;
        let r = client.response(false).await.unwrap();
        assert_eq!(r.status, 200);
        let seen = r.text();
        assert!(
            seen.starts_with("GET /headers?x=1 HTTP/1.1\r\nHost: fast.example\r\n"),
            "{seen}"
        );
        assert!(
            seen.contains("x-forwarded-for: 192.0.2.9, 127.0.0.1\r\n"),
            "{seen}"
        );
        assert!(seen.contains("x-forwarded-proto: http\r\n"), "{seen}");
        assert!(
            seen.contains("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{seen}"
        );
        for hop in ["X-Secret", "Connection", "00f067aa0ba902b7"] {
            assert!(!seen.contains(hop), "{hop} was forwarded: {seen}");
        }
        assert_eq!((r.header("x-hop"), r.header("connection")), (None, None));
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );

    // Header modifiers of the rule and the backendRef, applied to the raw fields as the general
    // path applies them to a map.
    client
        .send(&get(
            "/headers",
            "modified.example",
            "X-Filtered: client\r\nX-Drop: 1\r\nX-Resp: upstream\r\n",
        ))
        .await;
    let r = client.response(false).await.unwrap();
    let seen = r.text();
    for expected in [
        "x-filtered: gateway\r\n",
        "x-added: one\r\n",
        "x-backend: b\r\n",
    ] {
        assert!(seen.contains(expected), "{expected} missing: {seen}");
    }
    assert!(
        !seen.contains("X-Drop") && !seen.contains("client"),
        "{seen}"
    );
    assert_eq!(r.header("x-resp"), Some("set"));
    // Chunked with extensions and trailers, byte for byte; the connection goes on after it.
    client.send(&get("/chunked", "fast.example", "")).await;
    let r = client.response(false).await.unwrap();
    assert_eq!(
        r.text(),
        "5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 12\r\n\r\n"
    );
    client
        .send(&get("/chunked-listed", "fast.example", ""))
        .await;
    let r = client.response(false).await.unwrap();
    assert_eq!(
        (r.header("transfer-encoding"), r.text().as_str()),
        (Some("chunked"), "5\r\nhello\r\n0\r\n\r\n")
    );
    // A body held and forwarded with its head; HEAD and 204 have no body.
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: fast.example\r\nContent-Length: 11\r\n\r\nhello there")
        .await;
    assert_eq!(client.response(false).await.unwrap().text(), "hello there");
    client
        .send(b"HEAD /head HTTP/1.1\r\nHost: fast.example\r\n\r\n")
        .await;
    let r = client.response(true).await.unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));
    client.send(&get("/empty", "fast.example", "")).await;
    assert_eq!(client.response(false).await.unwrap().status, 204);
    // Pipelined: two requests in one write, two responses in order.
    let mut two = get("/echo", "fast.example", "");
    two.extend(b"POST /echo HTTP/1.1\r\nHost: fast.example\r\nContent-Length: 6\r\n\r\nsecond");
    client.send(&two).await;
    assert_eq!(client.response(false).await.unwrap().text(), "");
    assert_eq!(client.response(false).await.unwrap().text(), "second");
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "still one upstream connection"
    );

    // The upstream closes a pooled connection without saying so: the next GET goes again on
    // a new connection, unnoticed by the client.
    client.send(&get("/close-after", "fast.example", "")).await;
    assert_eq!(client.response(false).await.unwrap().text(), "bye");
    client.send(&get("/headers", "fast.example", "")).await;
    assert_eq!(client.response(false).await.unwrap().status, 200);
    // A close-delimited body (HTTP/1.0 upstream): relayed whole, then the client connection
    // closes, as the body's end can only be told by the close.
    client.send(&get("/until-close", "fast.example", "")).await;
    let r = client.response(false).await.unwrap();
    assert_eq!(
        (r.text().as_str(), r.header("connection")),
        ("all of it", Some("close"))
    );

    // A body cut short upstream: the client connection is cut too, never left hanging.
    let mut client = RawClient::connect(addr).await;
    client.send(&get("/truncated", "fast.example", "")).await;
    let err = client.response(false).await.unwrap_err();
    assert!(err.contains("closed after"), "{err}");

    // Timeouts and a dead endpoint are the proxy's own answers, and the connection stays.
    let mut client = RawClient::connect(addr).await;
    client.send(&get("/slow", "timed.example", "")).await;
    let r = client.response(false).await.unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (504, "upstream request timeout\n")
    );
    client.send(&get("/", "dead.example", "")).await;
    let r = client.response(false).await.unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (502, "upstream connect error\n")
    );
    // The same answer to a HEAD is its head alone, or the next answer would be read after
    // its body.
    client
        .send(b"HEAD / HTTP/1.1\r\nHost: dead.example\r\n\r\n")
        .await;
    let r = client.response(true).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (502, ""));
    // Connection: close is honoured.
    client
        .send(&get("/headers", "fast.example", "Connection: close\r\n"))
        .await;
    let r = client.response(false).await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(
        client.closed().await,
        "the proxy closes after Connection: close"
    );

    let metrics = proxy.metrics().await;
    let served = metric(&metrics, "http1_fast_path_requests_total");
    assert_eq!(served, 21, "every request so far took the fast path");
    assert_eq!(metric(&metrics, "http1_fast_path_handoffs_total"), 0);
    // Upstream connections closed so far and the requests each carried: 14 on the first
    // (closed by /close-after), 2 on its replacement (/until-close), 1 (/truncated), 0 (the
    // timed-out /slow). The last one is still open.
    let per_connection = |what: &str| {
        metric(
            &metrics,
            &format!("upstream_requests_per_connection_{what}{{protocol=\"http1\"}}"),
        )
    };
    assert_eq!((per_connection("count"), per_connection("sum")), (4, 17));

    // Mid-connection handoff: a fast request, then one with a URL rewrite (the general path),
    // then a body too large to hold and an unknown host: all answered on the same connection.
    let mut client = RawClient::connect(addr).await;
    client.send(&get("/headers", "fast.example", "")).await;
    assert_eq!(client.response(false).await.unwrap().status, 200);
    client
        .send(&get("/elsewhere", "rewritten.example", ""))
        .await;
    let r = client.response(false).await.unwrap();
    assert!(
        r.text().starts_with("GET /headers HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
    let large = "x".repeat(70_000);
    client
        .send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: fast.example\r\nContent-Length: 70000\r\n\r\n{large}"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(client.response(false).await.unwrap().text(), large);
    client.send(&get("/", "nowhere.example", "")).await;
    assert_eq!(client.response(false).await.unwrap().status, 404);
    // What the fast path must not take goes to the general path, each on its own connection:
    // a Connection header naming Content-Length (dropping it would smuggle the body in as a
    // second request), a target with a fragment (hyper routes it without), and a body that
    // does not come with its head (streamed, not held).
    let smuggled = "GET /admin HTTP/1.1\r\nHost: fast.example\r\n\r\n";
    let mut client = RawClient::connect(addr).await;
    client
        .send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: fast.example\r\nConnection: content-length\r\n\
                 Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(
        client.response(false).await.unwrap().text(),
        smuggled,
        "one request, body intact"
    );
    let mut client = RawClient::connect(addr).await;
    client
        .send(&get("/headers#fragment", "fast.example", ""))
        .await;
    let r = client.response(false).await.unwrap();
    assert!(
        r.text().starts_with("GET /headers HTTP/1.1\r\n"),
        "{}",
        r.text()
    );
    let mut client = RawClient::connect(addr).await;
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: fast.example\r\nContent-Length: 5\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.send(b"later").await;
    assert_eq!(client.response(false).await.unwrap().text(), "later");
    // A malformed request gets hyper's 400, from the fast path itself (not handed off).
    let mut client = RawClient::connect(addr).await;
    client
        .send(b"GET / HTTP/1.1\r\nHost fast.example\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.unwrap().status, 400);

    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "http1_fast_path_requests_total"),
        served + 1
    );
    assert_eq!(metric(&metrics, "http1_fast_path_handoffs_total"), 4);
    // Both paths count in the same route metrics: 17 + 5 answers from the backend.
    assert!(
        metrics.contains(
            "rauta_proxy_requests_total{route=\"apps/fast/rule/0\",status_class=\"2xx\"} 22\n"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "rauta_proxy_requests_total{route=\"apps/timed/rule/0\",status_class=\"5xx\"} 1\n"
    ));
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A head for comparison: request or status line, then the fields with lower-case names,
/// ordered by name (the order of one name's values kept); the traceparent's span id (new per
/// hop) and the Date a server adds left out.
fn normalized(head: &str) -> Vec<String> {
    let mut lines = head.trim_end().split("\r\n");
    let first = lines.next().unwrap_or_default().to_owned();
    let mut fields: Vec<String> = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| {
            let v = v.trim();
            // The client's trace continued, or a new (random) one started.
            let v = match (n.eq_ignore_ascii_case("traceparent"), v.get(3..35)) {
                (true, Some(CLIENT_TRACE)) => CLIENT_TRACE,
                (true, _) if v.len() == 55 => "a new trace",
                _ => v,
            };
            format!("{}: {v}", n.to_ascii_lowercase())
        })
        .collect();
    fields.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
    let mut out = vec![first];
    out.extend(fields);
    out
}

/// A gateway for the scripted backend (fast.example), a dead endpoint (dead.example, with
/// `dead_route`'s rule) and `routes`, served by a proxy with the fast path and one with
/// `--http1-fast-path off`.
async fn with_and_without_fast_path(
    ws: &Workspace,
    backend: &ScriptedBackend,
    dead_route: &str,
    routes: &[String],
) -> (Controller, Proxy, Proxy) {
    let dead = backend.dead.addr;
    let mut manifests = vec![
        service("apps", "scripted", &[backend.addr]),
        service("apps", "dead", &[dead]),
        http_route(
            "apps",
            "dead",
            ("infra", "gw"),
            &["dead.example"],
            dead_route,
        ),
        scripted_route("fast", "fast.example"),
    ];
    manifests.extend_from_slice(routes);
    ws.write("all.yaml", &on_http_gateway(&manifests));
    let (controller, fast) = start_gateway(ws, &[]).await;
    let general = Proxy::start_with(
        &controller.url(),
        "infra/gw",
        free_port() - 80,
        Ipv4Addr::LOCALHOST,
        ws.path(),
        // Hyper's HTTP/2 server too: HTTP/2 answers are compared with hyper's from end to end.
        &["--http1-fast-path", "off", "--http2-server", "hyper"],
    );
    general.wait_ready().await;
    (controller, fast, general)
}

#[tokio::test]
async fn both_paths_send_and_answer_the_same() {
    let backend = ScriptedBackend::start().await;
    let ws = Workspace::new();
    let dead_route = "  - filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        set: [{name: content-type, value: text/x-gateway}]\n        add: [{name: x-why, value: down}]\n    backendRefs: [{name: dead, port: 8080}]\n";
    let modified = http_route(
        "apps",
        "modified",
        ("infra", "gw"),
        &["modified.example"],
        "  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: x-a, value: set}]\n        add: [{name: x-b, value: added}]\n        remove: [x-c]\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        add: [{name: x-hop, value: rule}]\n        remove: [x-gone]\n    backendRefs:\n    - name: scripted\n      port: 8080\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {set: [{name: x-b, value: backend}], add: [{name: x-a, value: again}]}\n",
    );
    let (_controller, fast, general) =
        with_and_without_fast_path(&ws, &backend, dead_route, &[modified]).await;

    // Not compared: chunked responses. The fast path relays chunks as the upstream framed
    // them, extensions and trailers included (the first test checks that); hyper frames its own
    // chunks and passes trailers only to clients that sent `TE: trailers`.
    let requests: Vec<Vec<u8>> = [
        "GET /headers HTTP/1.1\r\nHost: fast.example\r\n\r\n",
        "GET /headers?a=1&b=%20 HTTP/1.1\r\nHost: fast.example:80\r\nAccept: */*\r\nUser-Agent: t/1\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHOST: fast.example\r\nX-Forwarded-For: 192.0.2.1\r\nx-forwarded-for: 192.0.2.2, 192.0.2.3\r\nX-Forwarded-Proto: https\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: fast.example\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: fast.example\r\nTE: gzip\r\nTrailer: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: fast.example\r\ntraceparent: 00-zz-bad\r\nCookie: a=1; b=2\r\n\r\n",
        "POST /headers HTTP/1.1\r\nHost: fast.example\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        "HEAD /head HTTP/1.1\r\nHost: fast.example\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: modified.example\r\nX-A: client\r\nX-B: client\r\nX-C: client\r\nX-D: client\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: dead.example\r\n\r\n",
    ]
    .iter()
    .map(|r| r.as_bytes().to_vec())
    .collect();
    for request in &requests {
        let mut answers = Vec::new();
        for proxy in [&fast, &general] {
            let mut client = RawClient::connect(proxy.listener(80)).await;
            client.send(request).await;
            let head_request = request.starts_with(b"HEAD");
            let r = client.response(head_request).await.unwrap();
            let mut head = format!("HTTP/1.1 {}\r\n", r.status);
            for (n, v) in &r.headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            // The backend echoes the head it received as the body.
            answers.push((normalized(&head), normalized(&r.text())));
        }
        assert_eq!(
            answers[0],
            answers[1],
            "fast path and general path differ for {}",
            String::from_utf8_lossy(request)
        );
    }
    let metrics = fast.metrics().await;
    assert_eq!(
        metric(&metrics, "http1_fast_path_requests_total"),
        requests.len() as u64,
        "all took the fast path on the first proxy"
    );
    assert_eq!(
        metric(&general.metrics().await, "http1_fast_path_requests_total"),
        0,
        "none on the second"
    );
}

/// The body of a chunked response as the client read it (chunks kept raw), decoded.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Many clients at once on two workers, each request with its own body, some pipelined, some
/// closing, some on the general path: every client gets exactly its own answers back (a pooled
/// connection handed to the wrong request would show here first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_their_own_answers() {
    use rand::{Rng, SeedableRng};
    let backend = ScriptedBackend::start().await;
    let ws = Workspace::new();
    ws.write(
        "all.yaml",
        &on_http_gateway(&[
            service("apps", "scripted", &[backend.addr]),
            scripted_route("fast", "fast.example"),
            http_route(
                "apps",
                "general",
                ("infra", "gw"),
                &["general.example"],
                "  - retry: {attempts: 1, codes: [503]}\n    backendRefs: [{name: scripted, port: 8080}]\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &["--worker-threads", "2"]).await;
    let addr = proxy.listener(80);
    let clients = (0..24u64).map(|client| async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(client);
        let mut conn = RawClient::connect(addr).await;
        let mut answered = 0;
        for request in 0..30 {
            let body: String =
                format!("client {client} request {request} ").repeat(rng.random_range(0..60));
            let host = if rng.random_bool(0.2) {
                "general.example"
            } else {
                "fast.example"
            };
            let path = if rng.random_bool(0.3) {
                "/echo-chunked"
            } else {
                "/echo"
            };
            let close = rng.random_bool(0.1);
            let message = |body: &str| {
                format!(
                    "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n{}\r\n{body}",
                    body.len(),
                    if close { "Connection: close\r\n" } else { "" }
                )
            };
            // Sometimes two at once, the second a different body.
            let pipelined = !close && rng.random_bool(0.2);
            let second = format!("second of {client}/{request}");
            let mut bytes = message(&body);
            if pipelined {
                bytes.push_str(&message(&second));
            }
            conn.send(bytes.as_bytes()).await;
            for expected in std::iter::once(&body).chain(pipelined.then_some(&second)) {
                let r = conn.response(false).await.unwrap();
                assert_eq!(r.status, 200);
                let got = if path == "/echo-chunked" {
                    dechunk(&r.body)
                } else {
                    r.body.clone()
                };
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    *expected,
                    "client {client}"
                );
                answered += 1;
            }
            if close {
                assert!(conn.closed().await);
                conn = RawClient::connect(addr).await;
            }
        }
        answered
    });
    let answered: usize = futures::future::join_all(clients).await.into_iter().sum();
    assert!(answered >= 24 * 30);
    let metrics = proxy.metrics().await;
    assert!(metric(&metrics, "http1_fast_path_requests_total") > 0);
    assert!(metric(&metrics, "http1_fast_path_handoffs_total") > 0);
}

/// A backend behind a BackendTLSPolicy is reached on the fast path too: the handshake checks
/// the policy's CA and hostname (sent as SNI), and the TLS connection is kept for the next
/// requests.
#[tokio::test]
async fn tls_backends_are_reached_on_the_fast_path() {
    use rauta_tests::echo::{EchoIdentity, EchoServer, EchoTls};
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["backend.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let identity = EchoIdentity {
        pod: "echo-tls".into(),
        namespace: "apps".into(),
        service: String::new(),
        ingress: String::new(),
    };
    let mut echo = EchoServer::start(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0, None, identity)
        .await
        .unwrap();
    let tls = EchoTls {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        client_cas_pem: None,
    };
    let https = echo
        .serve_tls(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0, &tls)
        .await
        .unwrap();
    let ca: String = cert.pem().lines().map(|l| format!("    {l}\n")).collect();
    let ws = Workspace::new();
    ws.write(
        "all.yaml",
        &on_http_gateway(&[
            service("apps", "secure", &[https]),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: apps}}\ndata:\n  ca.crt: |\n{ca}"
            ),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: secure, namespace: apps}\nspec:\n  targetRefs: [{group: '', kind: Service, name: secure}]\n  validation: {caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: backend.example}\n".to_owned(),
            http_route(
                "apps",
                "secure",
                ("infra", "gw"),
                &["secure.example"],
                "  - backendRefs: [{name: secure, port: 8080}]\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let mut client = RawClient::connect(proxy.listener(80)).await;
    for _ in 0..5 {
        client.send(&get("/tls", "secure.example", "")).await;
        let r = client.response(false).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let echoed: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(echoed["tls"]["serverName"], "backend.example", "{echoed}");
        assert_eq!(echoed["tls"]["negotiatedProtocol"], "http/1.1");
    }
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "http1_fast_path_requests_total"), 5);
    assert_eq!(
        metric(
            &metrics,
            &format!("upstream_connections_created_total{{endpoint=\"{https}\"}}")
        ),
        1,
        "one TLS connection for all five"
    );
}

/// What an HTTP/2 client got: status, fields, body and trailers, or the error it saw.
type H2Answer = Result<(u16, Vec<String>, Vec<u8>, Vec<String>), String>;

/// Method, target and body.
type H2Request<'a> = (&'a str, &'a str, &'a str);

fn h2_fields(map: &http::HeaderMap) -> Vec<String> {
    let mut head = String::new();
    for (n, v) in map {
        head.push_str(&format!(
            "{n}: {}\r\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    normalized(&format!("-\r\n{head}"))[1..].to_vec()
}

async fn h2_exchange(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    (method, target, body): H2Request<'_>,
    fields: &[(&str, &str)],
) -> H2Answer {
    use http_body_util::BodyExt;
    let mut req = http::Request::builder().method(method).uri(target);
    for (n, v) in fields {
        req = req.header(*n, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    let trailers = collected.trailers().map(h2_fields).unwrap_or_default();
    Ok((
        parts.status.as_u16(),
        h2_fields(&parts.headers),
        collected.to_bytes().to_vec(),
        trailers,
    ))
}

/// HTTP/2 clients get the same answers from the proxy's own HTTP/2 server, its fast path and
/// raw HTTP/1.1 client as from hyper's server and client (the proxy with
/// `--http1-fast-path off --http2-server hyper`): the same fields sent upstream and the same
/// answers back, for every framing, trailers included; pooled connections the upstream closed
/// are replaced, and malformed or cut-off responses fail the same way. The requests to
/// general.example (a rule with retries, which the fast path leaves to the general path) take
/// the general path's raw client.
#[tokio::test]
async fn http2_clients_get_the_same_answers_from_either_http2_server() {
    let backend = ScriptedBackend::start().await;
    let ws = Workspace::new();
    let dead_route = "  - backendRefs: [{name: dead, port: 8080}]\n";
    let general = http_route(
        "apps",
        "general",
        ("infra", "gw"),
        &["general.example"],
        "  - retry: {attempts: 1, codes: [503]}\n    backendRefs: [{name: scripted, port: 8080}]\n",
    );
    let (_controller, raw, hyper_client) =
        with_and_without_fast_path(&ws, &backend, dead_route, &[general]).await;
    let trace = format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-01");
    let exchanges: Vec<(H2Request, Vec<(&str, &str)>)> = vec![
        (
            ("GET", "http://fast.example/headers?q=1", ""),
            vec![
                ("x-forwarded-for", "192.0.2.1"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("te", "trailers"),
                ("traceparent", &trace),
            ],
        ),
        (("GET", "http://fast.example/chunked", ""), vec![]),
        (("HEAD", "http://fast.example/head", ""), vec![]),
        (("GET", "http://fast.example/empty", ""), vec![]),
        (("GET", "http://fast.example/interim", ""), vec![]),
        (("GET", "http://fast.example/until-close", ""), vec![]),
        (("GET", "http://fast.example/close-after", ""), vec![]),
        // On the connection the upstream closed after the last answer, if it was pooled.
        (("GET", "http://fast.example/headers", ""), vec![]),
        (("GET", "http://fast.example/bad-length", ""), vec![]),
        (("GET", "http://fast.example/truncated", ""), vec![]),
        (("GET", "http://fast.example/chunked-cut", ""), vec![]),
        (("POST", "http://fast.example/echo", "a body"), vec![]),
        (("GET", "http://dead.example/", ""), vec![]),
        (
            ("GET", "http://general.example/headers", ""),
            vec![("cookie", "a=1"), ("cookie", "b=2")],
        ),
        (("GET", "http://general.example/chunked", ""), vec![]),
    ];
    let mut answers: Vec<Vec<H2Answer>> = Vec::new();
    for proxy in [&raw, &hyper_client] {
        let mut sender = h2c_connect(proxy.listener(80)).await;
        let mut got = Vec::new();
        for (request, fields) in &exchanges {
            got.push(h2_exchange(&mut sender, *request, fields).await);
        }
        answers.push(got);
    }
    for ((request, _), (a, b)) in exchanges.iter().zip(answers[0].iter().zip(&answers[1])) {
        // A cut-off body fails on both; the error text is the client library's either way.
        let same = match (a, b) {
            (Err(_), Err(_)) => true,
            (Ok((s1, f1, b1, t1)), Ok((s2, f2, b2, t2))) => {
                let echoed = |b: &[u8]| normalized(&String::from_utf8_lossy(b));
                (s1, f1, t1) == (s2, f2, t2)
                    && (b1 == b2 || (request.1.contains("/headers") && echoed(b1) == echoed(b2)))
            }
            _ => false,
        };
        assert!(same, "{request:?}: raw client {a:?}, hyper's {b:?}");
    }
    let got = &answers[0];
    let ok = |i: usize| got[i].as_ref().unwrap();
    let echoed = String::from_utf8_lossy(&ok(0).2).into_owned();
    assert!(
        echoed.starts_with("GET /headers?q=1 HTTP/1.1\r\n"),
        "{echoed}"
    );
    for field in [
        "host: fast.example",
        "cookie: a=1; b=2",
        "x-forwarded-for: 192.0.2.1, 127.0.0.1",
        "x-forwarded-proto: http",
    ] {
        assert!(
            echoed.to_ascii_lowercase().contains(field),
            "{field} in {echoed}"
        );
    }
    assert_eq!(
        (ok(1).0, ok(1).2.as_slice(), ok(1).3.clone()),
        (200, &b"hello, world"[..], vec!["x-sum: 12".to_owned()])
    );
    assert!(ok(2).1.contains(&"content-length: 5".to_owned()) && ok(2).2.is_empty());
    assert_eq!(
        (ok(3).0, ok(4).0, ok(4).2.as_slice()),
        (204, 200, &b"ok"[..])
    );
    assert_eq!(ok(5).2, b"all of it");
    assert_eq!((ok(6).2.as_slice(), ok(7).0), (&b"bye"[..], 200));
    assert_eq!(ok(8).0, 502, "conflicting lengths");
    assert!(
        got[9].is_err(),
        "a body cut short is not passed off as whole"
    );
    assert!(got[10].is_err(), "nor a chunked one");
    assert_eq!((ok(11).0, ok(11).2.as_slice()), (200, &b"a body"[..]));
    assert_eq!(ok(12).0, 502);
    let general = String::from_utf8_lossy(&ok(13).2).into_owned();
    assert!(general.contains("cookie: a=1; b=2"), "{general}");
    assert_eq!(ok(14).2, b"hello, world");

    // A pooled connection the upstream closes on the next request, unanswered: the raw client
    // sends that GET again on a new connection (hyper's client answered 502 here).
    let mut sender = h2c_connect(raw.listener(80)).await;
    let kept = h2_exchange(
        &mut sender,
        ("GET", "http://fast.example/then-drop", ""),
        &[],
    )
    .await;
    assert_eq!(kept.unwrap().2, b"kept");
    let connections = backend.connections.load(Ordering::SeqCst);
    let again = h2_exchange(&mut sender, ("GET", "http://fast.example/headers", ""), &[]).await;
    assert_eq!(again.unwrap().0, 200);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        connections + 1,
        "sent again on a new connection"
    );

    // An HTTP/1.1 connection on the general path (HTTP/1.0 requests are handed off) keeps the
    // upstream's own reason phrase.
    let mut client = RawClient::connect(raw.listener(80)).await;
    client
        .send(b"GET /reason HTTP/1.0\r\nHost: fast.example\r\n\r\n")
        .await;
    client.fill().await;
    let head = String::from_utf8_lossy(&client.buf).into_owned();
    assert!(head.contains(" 200 Fine Thanks\r\n"), "{head}");

    // The GETs and HEADs to fast.example and dead.example took the fast path's terms over
    // HTTP/2 (twelve of the exchanges above, then /then-drop and /headers); the general path's
    // raw client sent those to general.example and the HTTP/1.0 request. Neither on the other
    // proxy.
    assert_eq!(
        metric(&raw.metrics().await, "http2_fast_path_requests_total"),
        14
    );
    assert_eq!(
        metric(&raw.metrics().await, "upstream_raw_requests_total"),
        3
    );
    assert_eq!(
        metric(
            &hyper_client.metrics().await,
            "http2_fast_path_requests_total"
        ),
        0
    );
    assert_eq!(
        metric(&hyper_client.metrics().await, "upstream_raw_requests_total"),
        0
    );
}
