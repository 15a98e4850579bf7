//! The body of an upstream response, which gives its connection back when read to the end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::pool::Release;
use super::raw::{RawBody, RawBodyError};
use crate::body::compress::{CompressedBody, Encoding};

/// An upstream response body; when it ends cleanly its connection can carry the next request.
/// Dropped early (the client went away), the connection is closed instead.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Hyper {
        body: Incoming,
        release: Option<Release>,
    },
    Raw(RawBody),
    /// Compressed on the way to the client (TrafficPolicy compression).
    Compressed(Box<CompressedBody<ResponseBody>>),
}

/// Why an upstream response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Raw(#[from] RawBodyError),
    #[error("compressing: {0}")]
    Compress(#[from] std::io::Error),
}

impl ResponseBody {
    /// A body read by the raw HTTP/1.1 client.
    pub fn raw(body: RawBody) -> ResponseBody {
        ResponseBody {
            inner: Inner::Raw(body),
        }
    }

    /// This body, compressed in `encoding`.
    pub fn compressed(self, encoding: Encoding, level: Option<i32>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Compressed(Box::new(CompressedBody::new(self, encoding, level))),
        }
    }

    pub(super) fn new(
        resp: Response<Incoming>,
        release: Option<Release>,
    ) -> Response<ResponseBody> {
        resp.map(|body| {
            let mut body = ResponseBody {
                inner: Inner::Hyper { body, release },
            };
            body.release_if_done();
            body
        })
    }

    fn release_if_done(&mut self) {
        if let Inner::Hyper { body, release } = &mut self.inner
            && body.is_end_stream()
            && let Some(r) = release.take()
        {
            r.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let (body, release) = match &mut self.inner {
            Inner::Raw(raw) => return Pin::new(raw).poll_frame(cx).map_err(Into::into),
            Inner::Compressed(c) => return Pin::new(&mut **c).poll_frame(cx),
            Inner::Hyper { body, release } => (body, release),
        };
        let polled = Pin::new(body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(r) = release.take() {
                    r.release();
                }
            }
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Ready(Some(Err(_))) => *release = None,
            Poll::Pending => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Raw(raw) => raw.is_end_stream(),
            Inner::Compressed(c) => c.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Raw(raw) => raw.size_hint(),
            Inner::Compressed(c) => c.size_hint(),
        }
    }
}
