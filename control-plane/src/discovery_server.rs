//! `rauta.v1.Discovery` over HTTP/2, written out rather than generated so that responses go out
//! as the snapshot's shared resource bytes: tonic's generated server would encode every
//! response into a per-stream buffer that keeps the size of the largest response for the
//! stream's life (a 1000-proxy fleet and a 600 KB route table would pin 600 MB).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use hyper::body::Frame;
use rauta_common::api::v1::DeltaDiscoveryRequest;
use rauta_common::wire::EncodedDeltaResponse;
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, Streaming};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::auth::Identity;
use crate::discovery::DiscoveryService;

const DELTA_RESOURCES: &str = "/rauta.v1.Discovery/DeltaResources";

/// Largest request a proxy may send (ACKs and subscriptions are small).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct DiscoveryServer {
    service: DiscoveryService,
}

impl DiscoveryServer {
    pub fn new(service: DiscoveryService) -> Self {
        DiscoveryServer { service }
    }
}

impl NamedService for DiscoveryServer {
    const NAME: &'static str = "rauta.v1.Discovery";
}

impl tower::Service<http::Request<tonic::body::Body>> for DiscoveryServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.service.clone();
        Box::pin(async move {
            if request.uri().path() != DELTA_RESOURCES {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            if request
                .headers()
                .get("grpc-encoding")
                .is_some_and(|e| e != "identity")
            {
                return Ok(
                    Status::unimplemented("compressed requests are not accepted").into_http(),
                );
            }
            let (parts, body) = request.into_parts();
            let peer = crate::auth::peer_of(&parts.extensions);
            // Put there by the authentication in front (server.rs); without it, nothing is served.
            let Some(identity) = parts.extensions.get::<Identity>().cloned() else {
                return Ok(Status::unauthenticated("not authenticated").into_http());
            };
            let decoder =
                tonic_prost::ProstDecoder::<DeltaDiscoveryRequest>::new(BufferSettings::default());
            let inbound = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST));
            let responses = match service.open(peer, identity, inbound).await {
                Ok(rx) => rx,
                Err(status) => return Ok(status.into_http()),
            };
            let mut response = http::Response::new(tonic::body::Body::new(ResponseBody {
                responses,
                chunks: VecDeque::new(),
                done: false,
            }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            Ok(response)
        })
    }
}

/// The response stream as an HTTP/2 body: each response's chunks in turn, then the trailers
/// carrying the gRPC status.
struct ResponseBody {
    responses: mpsc::Receiver<Result<EncodedDeltaResponse, Status>>,
    chunks: VecDeque<Bytes>,
    done: bool,
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match self.responses.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(response))) => {
                self.chunks.extend(response.grpc_message());
                let chunk = self.chunks.pop_front().unwrap_or_default();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Ready(Some(Err(status))) => status,
            // The stream task ended: the proxy closed its side or the controller is stopping.
            Poll::Ready(None) => Status::new(Code::Ok, ""),
        };
        self.done = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from(Code::Internal as i32));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunks.is_empty()
    }
}
