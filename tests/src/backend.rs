//! An HTTP/1.1 backend in the test's own process, for tests that need answers the echo
//! backend does not give: large, endless or slow bodies, and bodies it does not read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::harness::{Controller, Proxy, Workspace, start_gateway};
use crate::manifests::{http_route, on_http_gateway, service};

type Body = http_body_util::Either<
    Full<Bytes>,
    StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>,
>;

/// Starts the backend: `/big?n=N` answers N octets, `/count` the length and byte sum of the
/// body it got, `/slow` after two seconds, `/forever` a body that never ends, `/hold` after 30
/// seconds without reading the request body; anything else "ok".
pub async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|req: http::Request<Incoming>| async move {
                let path = req.uri().path().to_owned();
                let query = req.uri().query().unwrap_or("").to_owned();
                let body: Vec<u8> = match path.as_str() {
                    "/big" => {
                        let n: usize = query.trim_start_matches("n=").parse().unwrap_or(0);
                        (0..n).map(|i| b'a' + (i % 26) as u8).collect()
                    }
                    "/count" => {
                        match req.into_body().collect().await {
                            Ok(got) => {
                                let got = got.to_bytes();
                                let sum: u64 = got.iter().map(|&b| u64::from(b)).sum();
                                format!("{}:{sum}", got.len()).into_bytes()
                            }
                            // The proxy gave up on the client's body.
                            Err(_) => b"cut short".to_vec(),
                        }
                    }
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        b"slow".to_vec()
                    }
                    "/hold" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(req);
                        b"held".to_vec()
                    }
                    "/forever" => {
                        let (tx, rx) = tokio::sync::mpsc::channel(1);
                        tokio::spawn(async move {
                            let chunk = Bytes::from(vec![b'f'; 64 * 1024]);
                            while tx.send(Ok(Frame::data(chunk.clone()))).await.is_ok() {}
                        });
                        let body: Body = http_body_util::Either::Right(StreamBody::new(
                            tokio_stream::wrappers::ReceiverStream::new(rx),
                        ));
                        return Ok::<_, Infallible>(http::Response::new(body));
                    }
                    _ => b"ok".to_vec(),
                };
                let body: Body = http_body_util::Either::Left(Full::new(Bytes::from(body)));
                Ok::<_, Infallible>(http::Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// Starts the backend, and a gateway (controller and proxy with `flags`) whose one route sends
/// every request for any host to it.
pub async fn gateway_to_backend(ws: &Workspace, flags: &[&str]) -> (Controller, Proxy) {
    let backend = start_backend().await;
    let rule = "  - backendRefs: [{name: plain, port: 8080}]\n";
    ws.write(
        "all.yaml",
        &on_http_gateway(&[
            service("apps", "plain", &[backend]),
            http_route("apps", "all", ("infra", "gw"), &[], rule),
        ]),
    );
    start_gateway(ws, flags).await
}
