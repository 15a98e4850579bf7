//! TrafficPolicy end to end: responses compressed by Accept-Encoding (gzip, brotli, zstd) when
//! the policy, the response's type, size and headers allow it, over HTTP/1.1 and HTTP/2; a
//! route's policy over its Gateway's; per-route body and head limits; default timeouts; status.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use compression_codecs::core::util::PartialBuffer;
use compression_codecs::{BrotliDecoder, Decode, GzipDecoder, ZstdDecoder};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rauta_tests::harness::{Workspace, h2c_connect, start_gateway};
use rauta_tests::manifests::{documents, gateway, gateway_class, http_route, service};

/// 10 KB of JSON, as an API answers.
fn json_body() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\",\"ok\":true}}"))
        .collect();
    format!("[{}]", items.join(","))
}

/// A backend whose path picks the answer: `/json` (10 KB JSON with a strong ETag),
/// `/small` (JSON under the minimum), `/png`, `/no-transform`, `/encoded` (already gzip) and
/// `/slow` (JSON after a second).
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    if path == "/slow" {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let kind = if path == "/png" {
                        "image/png"
                    } else {
                        "application/json"
                    };
                    let mut b = http::Response::builder()
                        .header("content-type", kind)
                        .header("etag", "\"v1\"");
                    let body = match path.as_str() {
                        "/small" => "{\"small\":true}".to_owned(),
                        "/no-transform" => {
                            b = b.header("cache-control", "no-transform");
                            json_body()
                        }
                        "/encoded" => {
                            b = b.header("content-encoding", "gzip");
                            json_body()
                        }
                        _ => json_body(),
                    };
                    Ok::<_, std::convert::Infallible>(b.body(Full::new(Bytes::from(body))).unwrap())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn request(
    url: &str,
    method: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn decode(mut decoder: impl Decode, data: &[u8]) -> Vec<u8> {
    let mut input = PartialBuffer::new(data);
    let mut decoded = Vec::new();
    let mut scratch = vec![0u8; 16384];
    loop {
        let mut output = PartialBuffer::new(&mut scratch[..]);
        let end = decoder.decode(&mut input, &mut output).unwrap();
        decoded.extend_from_slice(output.written());
        if end {
            return decoded;
        }
        assert!(
            !input.unwritten().is_empty() || output.written_len() > 0,
            "stream ended early"
        );
    }
}

fn decoded(a: &Answer) -> String {
    let bytes = match a
        .headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap())
    {
        Some("gzip") => decode(GzipDecoder::new(), &a.body),
        Some("br") => decode(BrotliDecoder::new(), &a.body),
        Some("zstd") => decode(ZstdDecoder::new(), &a.body),
        Some(other) => panic!("unexpected coding {other}"),
        None => a.body.to_vec(),
    };
    String::from_utf8(bytes).unwrap()
}

fn traffic_policy(name: &str, target: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  targetRefs: [{target}]\n{spec}",
        if target.contains("Gateway") {
            "infra"
        } else {
            "apps"
        }
    )
}

fn route(name: &str, host: &str) -> String {
    http_route(
        "apps",
        name,
        ("infra", "gw"),
        &[host],
        "  - backendRefs: [{name: api, port: 8080}]\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_by_accept_encoding_where_the_policy_allows() {
    let ws = Workspace::new();
    let addr = backend().await;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "api", &[addr]),
            route("api", "api.example"),
            route("zstd-only", "zstd.example"),
            route("plain", "plain.example"),
            traffic_policy(
                "gateway-wide",
                "{group: gateway.networking.k8s.io, kind: Gateway, name: gw}",
                "  compression: {encodings: [Brotli, Gzip]}\n",
            ),
            // The route's own policy wins over the Gateway's for this concern.
            traffic_policy(
                "zstd",
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: zstd-only}",
                "  compression: {encodings: [Zstd], level: 3}\n",
            ),
        ]),
    );
    let (controller, proxy) = start_gateway(&ws, &[]).await;
    let url = |path: &str| format!("http://{}{path}", proxy.listener(80));
    let json = json_body();

    let gzip = request(
        &url("/json"),
        "GET",
        "api.example",
        &[("accept-encoding", "gzip")],
        "",
    )
    .await;
    assert_eq!(gzip.status, 200);
    assert_eq!(gzip.headers["content-encoding"], "gzip");
    assert!(
        gzip.headers.get("content-length").is_none(),
        "{:?}",
        gzip.headers
    );
    assert_eq!(gzip.headers["vary"], "accept-encoding");
    assert_eq!(
        gzip.headers["etag"], "W/\"v1\"",
        "a strong ETag becomes weak"
    );
    assert!(
        gzip.body.len() < json.len() / 4,
        "{} bytes",
        gzip.body.len()
    );
    assert_eq!(decoded(&gzip), json);

    let br = request(
        &url("/json"),
        "GET",
        "api.example",
        &[("accept-encoding", "gzip, deflate, br")],
        "",
    )
    .await;
    assert_eq!(
        br.headers["content-encoding"], "br",
        "the policy prefers brotli"
    );
    assert_eq!(decoded(&br), json);
    let q = request(
        &url("/json"),
        "GET",
        "api.example",
        &[("accept-encoding", "br;q=0.2, gzip")],
        "",
    )
    .await;
    assert_eq!(
        q.headers["content-encoding"], "gzip",
        "the client's q-values first"
    );

    let zstd = request(
        &url("/json"),
        "GET",
        "zstd.example",
        &[("accept-encoding", "br, zstd")],
        "",
    )
    .await;
    assert_eq!(zstd.headers["content-encoding"], "zstd");
    assert_eq!(decoded(&zstd), json);

    // Not compressed: no Accept-Encoding, HEAD, too small, an image, no-transform, already
    // encoded.
    let none = request(&url("/json"), "GET", "api.example", &[], "").await;
    assert!(none.headers.get("content-encoding").is_none());
    assert_eq!(none.body.len(), json.len());
    assert_eq!(
        none.headers["vary"], "accept-encoding",
        "it could have been compressed"
    );
    let head = request(
        &url("/json"),
        "HEAD",
        "api.example",
        &[("accept-encoding", "gzip")],
        "",
    )
    .await;
    assert!(head.headers.get("content-encoding").is_none());
    assert_eq!(
        head.headers["content-length"],
        json.len().to_string().as_str()
    );
    for path in ["/small", "/png", "/no-transform"] {
        let a = request(
            &url(path),
            "GET",
            "api.example",
            &[("accept-encoding", "gzip")],
            "",
        )
        .await;
        assert!(a.headers.get("content-encoding").is_none(), "{path}");
    }
    let encoded = request(
        &url("/encoded"),
        "GET",
        "api.example",
        &[("accept-encoding", "br")],
        "",
    )
    .await;
    assert_eq!(
        encoded.headers["content-encoding"], "gzip",
        "left as the backend sent it"
    );
    assert_eq!(encoded.body.len(), json.len());

    // HTTP/2 (h2c) gets the same.
    let mut h2 = h2c_connect::<Full<Bytes>>(proxy.listener(80)).await;
    let resp = h2
        .send_request(
            http::Request::builder()
                .uri("http://api.example/json")
                .header("accept-encoding", "gzip")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let over_h2 = Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    };
    assert_eq!(over_h2.status, 200);
    assert_eq!(decoded(&over_h2), json);
    assert_eq!(over_h2.headers["content-encoding"], "gzip");

    let objects = controller.statuses().await;
    let accepted: Vec<_> = objects
        .iter()
        .filter(|o| o.kind == "TrafficPolicy")
        .map(|o| {
            (
                o.name.as_str(),
                o.ancestors[0].conditions[0].status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        accepted,
        [("zstd", "True"), ("gateway-wide", "True")],
        "{objects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_policy_limits_bodies_heads_and_time() {
    let ws = Workspace::new();
    let addr = backend().await;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "api", &[addr]),
            route("api", "api.example"),
            route("open", "open.example"),
            route("timed", "timed.example"),
            traffic_policy(
                "limits",
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}",
                "  requestLimits: {maxBodyBytes: 100, maxHeaderBytes: 400}\n  timeouts: {request: 300ms}\n",
            ),
            // The Gateway's body limit reaches every route; a route's timeouts do not drop it.
            traffic_policy(
                "gateway-limits",
                "{group: gateway.networking.k8s.io, kind: Gateway, name: gw}",
                "  requestLimits: {maxBodyBytes: 1000}\n",
            ),
            traffic_policy(
                "timed",
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: timed}",
                "  timeouts: {request: 300ms}\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &[]).await;
    let url = |path: &str| format!("http://{}{path}", proxy.listener(80));
    let small = request(&url("/json"), "POST", "api.example", &[], "x").await;
    assert_eq!(small.status, 200);
    let big = "x".repeat(200);
    assert_eq!(
        request(&url("/json"), "POST", "api.example", &[], &big)
            .await
            .status,
        413
    );
    assert_eq!(
        request(&url("/json"), "POST", "open.example", &[], &big)
            .await
            .status,
        200
    );
    let long = "y".repeat(500);
    let header = [("x-long", long.as_str())];
    assert_eq!(
        request(&url("/json"), "GET", "api.example", &header, "")
            .await
            .status,
        431
    );
    assert_eq!(
        request(&url("/json"), "GET", "open.example", &header, "")
            .await
            .status,
        200
    );
    assert_eq!(
        request(&url("/slow"), "GET", "api.example", &[], "")
            .await
            .status,
        504
    );
    assert_eq!(
        request(&url("/slow"), "GET", "open.example", &[], "")
            .await
            .status,
        200
    );
    let huge = "z".repeat(2000);
    for host in ["open.example", "timed.example"] {
        let status = request(&url("/json"), "POST", host, &[], &huge)
            .await
            .status;
        assert_eq!(status, 413, "{host}: the Gateway's limit");
    }
    assert_eq!(
        request(&url("/slow"), "GET", "timed.example", &[], "")
            .await
            .status,
        504
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_chooses_its_access_log_fields() {
    let ws = Workspace::new();
    let addr = backend().await;
    ws.write(
        "all.yaml",
        &documents(&[
            gateway_class("rauta"),
            gateway("infra", "gw", "rauta", &[("http", 80, None)]),
            service("apps", "api", &[addr]),
            route("api", "api.example"),
            route("short", "short.example"),
            traffic_policy(
                "log-format",
                "{group: gateway.networking.k8s.io, kind: Gateway, name: gw}",
                "  accessLog:\n    fields:\n    - {name: code, value: status}\n    - {name: rule, value: route}\n    - {name: request_id, requestHeader: X-Request-Id}\n    - {name: ms, value: durationMs}\n",
            ),
            // A route's own format (no request header: its requests keep the fast path).
            traffic_policy(
                "short-format",
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: short}",
                "  accessLog: {fields: [{name: s, value: status}, {name: m, value: method}]}\n",
            ),
        ]),
    );
    let (_controller, proxy) = start_gateway(&ws, &["--access-log", "json"]).await;
    let url = format!("http://{}/json", proxy.listener(80));
    let with_id = [("x-request-id", "req-42")];
    assert_eq!(
        request(&url, "GET", "api.example", &with_id, "")
            .await
            .status,
        200
    );
    assert_eq!(
        request(&url, "GET", "short.example", &[], "").await.status,
        200
    );
    let text = || std::fs::read_to_string(&proxy.stdout).unwrap_or_default();
    rauta_tests::harness::eventually(Duration::from_secs(5), || async {
        text().lines().count() >= 2
    })
    .await;
    let text = text();
    let raw = text
        .lines()
        .find(|l| l.contains("request_id"))
        .expect("the api line");
    let at = |key: &str| raw.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
    assert!(
        at("code") < at("rule") && at("rule") < at("request_id") && at("request_id") < at("ms"),
        "fields in the format's order: {raw}"
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let api = lines
        .iter()
        .find(|l| l.get("request_id").is_some())
        .expect("the api line");
    assert_eq!(api["code"], 200);
    assert_eq!(api["request_id"], "req-42");
    assert!(api["rule"].as_str().unwrap().contains("apps/api"), "{api}");
    let short = lines
        .iter()
        .find(|l| l.get("s").is_some())
        .expect("the short line");
    assert_eq!(*short, serde_json::json!({"s": 200, "m": "GET"}));
    let metrics = proxy.metrics().await;
    assert_eq!(
        rauta_tests::harness::metric_value(&metrics, "rauta_proxy_http1_fast_path_requests_total"),
        1.0,
        "the short route's request (its format logs no header) took the fast path"
    );
}
