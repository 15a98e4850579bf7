//! gRPC for the conformance runner: the echo backend upstream's `echo-basic` runs in gRPC mode
//! (ECHO.md, "gRPC mode"), the `grpc` expectation kind and the gRPC weighted distribution
//! (README.md, "Non-HTTP expectation kinds"), judged as upstream judges them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::Value;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::echo::EchoIdentity;

/// The one service of the echo backend.
pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

// The messages of upstream's grpcecho.proto, field numbers as there.

#[derive(Clone, PartialEq, Message)]
pub struct EchoRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct EchoResponse {
    #[prost(message, optional, tag = "1")]
    pub assertions: Option<Assertions>,
    #[prost(message, optional, tag = "2")]
    pub request: Option<EchoRequest>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Assertions {
    #[prost(string, tag = "1")]
    pub fully_qualified_method: String,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<Header>,
    #[prost(string, tag = "3")]
    pub authority: String,
    #[prost(message, optional, tag = "4")]
    pub context: Option<Context>,
    #[prost(message, optional, tag = "5")]
    pub tls_assertions: Option<TlsAssertions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Context {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub ingress: String,
    #[prost(string, tag = "3")]
    pub service_name: String,
    #[prost(string, tag = "4")]
    pub pod: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TlsAssertions {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub negotiated_protocol: String,
    #[prost(string, tag = "3")]
    pub server_name: String,
    #[prost(string, tag = "4")]
    pub cipher_suite: String,
    #[prost(string, repeated, tag = "5")]
    pub peer_certificates: Vec<String>,
}

/// One gRPC echo instance (cleartext HTTP/2 with prior knowledge) on 127.0.0.1; stops when
/// dropped.
pub struct GrpcEchoServer {
    pub addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcEchoServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

type GrpcBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl GrpcEchoServer {
    pub async fn start(identity: EchoIdentity) -> std::io::Result<GrpcEchoServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let identity = Arc::new(identity);
        let accept_loop = tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(_) => {
                        // Out of descriptors or similar: wait instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let identity = Arc::clone(&identity);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let identity = Arc::clone(&identity);
                        async move { Ok::<_, Infallible>(answer(req, &identity).await) }
                    });
                    // A connection that ends badly concerns only its client.
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(GrpcEchoServer { addr, accept_loop })
    }
}

/// echo-basic's answer: `Echo` and `EchoTwo` echo the call, anything else is UNIMPLEMENTED.
async fn answer(req: Request<Incoming>, identity: &EchoIdentity) -> Response<GrpcBody> {
    let path = req.uri().path().to_owned();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut headers: Vec<Header> = req
        .headers()
        .iter()
        .map(|(k, v)| Header {
            key: k.as_str().to_owned(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect();
    headers.push(Header {
        key: ":authority".into(),
        value: authority.clone(),
    });
    // The request message is empty; read it to the end so the stream closes cleanly.
    let _ = req.into_body().collect().await;
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(service, _)| *service == SERVICE)
        .map(|(_, method)| method);
    let Some(method @ ("Echo" | "EchoTwo")) = method else {
        return status_only(Code::Unimplemented, &format!("unknown method {path}"));
    };
    let message = EchoResponse {
        assertions: Some(Assertions {
            fully_qualified_method: format!("/{SERVICE}/{method}"),
            headers,
            authority,
            context: Some(Context {
                namespace: identity.namespace.clone(),
                ingress: identity.ingress.clone(),
                service_name: identity.service.clone(),
                pod: identity.pod.clone(),
            }),
            tls_assertions: None,
        }),
        request: None,
    };
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    frame.put_slice(&encoded);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(frame.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A "trailers-only" gRPC answer: the status in the response head, no message.
fn status_only(code: Code, message: &str) -> Response<GrpcBody> {
    let mut response = Response::new(StreamBody::new(futures::stream::iter(Vec::new())));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", v);
    }
    response
}

/// A channel to the Gateway's socket whose calls carry `authority` as `:authority`. Lazy:
/// a refused connection shows as a call answered UNAVAILABLE, as upstream's client sees it.
fn channel(socket: SocketAddr, authority: &str) -> Result<Channel, String> {
    let origin = format!("http://{authority}")
        .parse()
        .map_err(|e| format!("authority {authority:?}: {e}"))?;
    Ok(Endpoint::from_shared(format!("http://{socket}"))
        .map_err(|e| e.to_string())?
        .origin(origin)
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// One unary call of `method` with `metadata`, within `deadline`.
async fn call(
    channel: Channel,
    method: &str,
    metadata: &BTreeMap<String, String>,
    deadline: Duration,
) -> Result<EchoResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_str(&format!("/{SERVICE}/{method}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut request = tonic::Request::new(EchoRequest {});
    for (key, value) in metadata {
        let key = MetadataKey::from_bytes(key.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("metadata {key}: {e}")))?;
        let value = MetadataValue::try_from(value.as_str())
            .map_err(|e| Status::invalid_argument(format!("metadata value: {e}")))?;
        request.metadata_mut().insert(key, value);
    }
    request.set_timeout(deadline);
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
    tokio::time::timeout(deadline, grpc.unary(request, path, codec))
        .await
        .map_err(|_| Status::deadline_exceeded("no answer within the deadline"))?
        .map(tonic::Response::into_inner)
}

/// Whether a status code has the name the case file uses (`OK`, `UNIMPLEMENTED`, `NOT_FOUND`).
fn code_is(code: Code, name: &str) -> bool {
    format!("{code:?}").eq_ignore_ascii_case(&name.replace('_', ""))
}

/// Upstream's comparison of one call's outcome with a `grpc` entry.
fn judge(spec: &Value, outcome: &Result<EchoResponse, Status>) -> Result<(), String> {
    let want = spec["response"]["code"].as_str().unwrap_or("OK");
    let code = match outcome {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    if !code_is(code, want) {
        let detail = outcome.as_ref().err().map(Status::message).unwrap_or("");
        return Err(format!("status {code:?} ({detail}), want {want}"));
    }
    let Ok(answer) = outcome else {
        return Ok(());
    };
    let assertions = answer.assertions.clone().unwrap_or_default();
    let method = spec["request"]["method"].as_str().unwrap_or("");
    let service = spec["request"]["service"].as_str().unwrap_or(SERVICE);
    let fqm = format!("/{service}/{method}");
    if assertions.fully_qualified_method != fqm {
        return Err(format!(
            "served by {:?}, want {fqm}",
            assertions.fully_qualified_method
        ));
    }
    let context = assertions.context.unwrap_or_default();
    if let Some(ns) = spec["namespace"].as_str().filter(|n| !n.is_empty())
        && context.namespace != ns
    {
        return Err(format!(
            "answer from namespace {:?}, want {ns:?}",
            context.namespace
        ));
    }
    let backend = spec["backend"].as_str().unwrap_or("");
    if !context.pod.starts_with(backend) {
        return Err(format!(
            "answered by pod {:?}, want {backend}*",
            context.pod
        ));
    }
    Ok(())
}

fn metadata_of(spec: &Value) -> BTreeMap<String, String> {
    spec["request"]["metadata"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// A `grpc` entry: the call must come out as expected 3 times in a row (a failure resets the
/// count and waits 1 s), within `budget`. One connection serves every attempt; it is replaced
/// after an INTERNAL answer, as upstream's client does.
pub async fn expect_call(
    spec: &Value,
    socket: SocketAddr,
    default_authority: &str,
    budget: Duration,
) -> Result<(), String> {
    let authority = spec["request"]["authority"]
        .as_str()
        .unwrap_or(default_authority);
    let method = spec["request"]["method"].as_str().unwrap_or("");
    let metadata = metadata_of(spec);
    let start = Instant::now();
    let mut conn = channel(socket, authority)?;
    let mut streak = 0;
    loop {
        let left = budget.saturating_sub(start.elapsed());
        let outcome = call(
            conn.clone(),
            method,
            &metadata,
            left.max(Duration::from_secs(1)),
        )
        .await;
        if outcome.as_ref().is_err_and(|s| s.code() == Code::Internal) {
            conn = channel(socket, authority)?;
        }
        match judge(spec, &outcome) {
            Ok(()) => {
                streak += 1;
                if streak == 3 {
                    return Ok(());
                }
            }
            Err(e) if start.elapsed() >= budget => return Err(format!("{method}: {e}")),
            Err(_) => {
                streak = 0;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Pod name to backend name: the name without its last two `-`-separated segments.
fn backend_name(pod: &str) -> String {
    super::http::backend_of_pod(pod)
}

/// One sample of the distribution: a new connection, one call; with probability 1/2 it
/// carries the entropy metadata (upstream's `x-jitter`). Yields the backend name.
async fn sample(spec: &Value, socket: SocketAddr, authority: &str) -> Result<String, String> {
    let method = spec["request"]["method"].as_str().unwrap_or("Echo");
    let mut metadata = BTreeMap::new();
    if let Some(key) = spec["request"]["entropy_metadata"].as_str()
        && rand::random::<bool>()
    {
        metadata.insert(key.to_owned(), rand::random_range(0..10_000u32).to_string());
    }
    let timeout = Duration::from_secs(spec["per_request_timeout_s"].as_u64().unwrap_or(30));
    let conn = channel(socket, authority)?;
    let answer = call(conn, method, &metadata, timeout)
        .await
        .map_err(|s| format!("call: {:?} {}", s.code(), s.message()))?;
    let pod = answer
        .assertions
        .and_then(|a| a.context)
        .map(|c| c.pod)
        .unwrap_or_default();
    Ok(backend_name(&pod))
}

/// A `weighted_distribution` entry with `protocol: grpc` (upstream `TestWeightedDistribution`).
pub async fn expect_distribution(
    spec: &Value,
    socket: SocketAddr,
    authority: &str,
) -> Result<(), String> {
    let total = spec["total_requests"].as_u64().unwrap_or(500) as usize;
    let concurrency = spec["concurrency"].as_u64().unwrap_or(10).max(1) as usize;
    let tolerance = spec["tolerance"].as_f64().unwrap_or(0.05);
    let weights: BTreeMap<String, f64> = spec["expected_weights"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
        .collect();
    let mut last = String::from("no attempt");
    for _ in 0..spec["max_attempts"].as_u64().unwrap_or(10) {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut sent = 0;
        let mut failure = None;
        while sent < total && failure.is_none() {
            let batch = concurrency.min(total - sent);
            let tasks: Vec<_> = (0..batch)
                .map(|_| {
                    let (spec, authority) = (spec.clone(), authority.to_owned());
                    tokio::spawn(async move { sample(&spec, socket, &authority).await })
                })
                .collect();
            for task in tasks {
                match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
                    Ok(backend) => *counts.entry(backend).or_default() += 1,
                    Err(e) => failure = Some(e),
                }
            }
            sent += batch;
        }
        last = match failure {
            Some(e) => e,
            None => match shares_match(&counts, total, &weights, tolerance) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
        };
    }
    Err(last)
}

/// Upstream's verdict on one attempt's counts: only expected backends, as many distinct ones
/// as have a weight above 0, each share within the tolerance.
fn shares_match(
    counts: &BTreeMap<String, usize>,
    total: usize,
    weights: &BTreeMap<String, f64>,
    tolerance: f64,
) -> Result<(), String> {
    if let Some(unknown) = counts.keys().find(|b| !weights.contains_key(*b)) {
        return Err(format!("answer from unexpected backend {unknown:?}"));
    }
    let weighted = weights.values().filter(|w| **w > 0.0).count();
    let off = weights.iter().find(|(backend, weight)| {
        let share = counts.get(*backend).copied().unwrap_or(0) as f64 / total as f64;
        (share - **weight).abs() > tolerance
    });
    if counts.len() != weighted || off.is_some() {
        return Err(format!(
            "observed {counts:?} of {total}, want shares {weights:?} +/- {tolerance}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_the_case_spelling() {
        assert!(code_is(Code::Ok, "OK"));
        assert!(code_is(Code::Unimplemented, "UNIMPLEMENTED"));
        assert!(code_is(Code::NotFound, "NOT_FOUND"));
        assert!(!code_is(Code::Unavailable, "OK"));
    }

    #[test]
    fn distribution_verdicts() {
        let weights = BTreeMap::from([
            ("a".to_owned(), 0.7),
            ("b".to_owned(), 0.3),
            ("c".to_owned(), 0.0),
        ]);
        let counts = |a, b, c| {
            let mut m = BTreeMap::from([("a".to_owned(), a), ("b".to_owned(), b)]);
            if c > 0 {
                m.insert("c".to_owned(), c);
            }
            m
        };
        assert!(shares_match(&counts(350, 150, 0), 500, &weights, 0.05).is_ok());
        assert!(shares_match(&counts(300, 200, 0), 500, &weights, 0.05).is_err());
        // A backend of weight 0 must see nothing at all.
        assert!(shares_match(&counts(349, 150, 1), 500, &weights, 0.05).is_err());
        let stranger = BTreeMap::from([("z".to_owned(), 500)]);
        assert!(shares_match(&stranger, 500, &weights, 0.05).is_err());
    }

    #[tokio::test]
    async fn the_echo_server_answers_as_echo_basic() {
        let identity = EchoIdentity {
            pod: "grpc-infra-backend-v1-abc-xyz".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        let server = GrpcEchoServer::start(identity).await.unwrap();
        let conn = channel(server.addr, "example.test:80").unwrap();
        let metadata = BTreeMap::from([("color".to_owned(), "blue".to_owned())]);
        let answer = call(conn.clone(), "EchoTwo", &metadata, Duration::from_secs(5))
            .await
            .unwrap();
        let assertions = answer.assertions.unwrap();
        assert_eq!(
            assertions.fully_qualified_method,
            format!("/{SERVICE}/EchoTwo")
        );
        assert_eq!(assertions.authority, "example.test:80");
        assert!(
            assertions
                .headers
                .iter()
                .any(|h| h.key == "color" && h.value == "blue")
        );
        let context = assertions.context.unwrap();
        assert_eq!(
            (context.namespace.as_str(), context.pod.as_str()),
            ("ns", "grpc-infra-backend-v1-abc-xyz")
        );
        let three = call(conn, "EchoThree", &metadata, Duration::from_secs(5)).await;
        assert_eq!(three.unwrap_err().code(), Code::Unimplemented);
    }
}
