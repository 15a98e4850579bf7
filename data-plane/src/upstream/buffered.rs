//! Request bodies held in memory, to be sent more than once (mirrors, retries).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body;

use super::UpstreamBody;
use crate::body::client::{RequestBody, RequestBodyError};

/// Largest request body held in memory to be sent more than once (mirrors, retries).
pub const BUFFERED_BODY_LIMIT: u64 = 64 * 1024;
/// Longest wait for a small body to arrive before it is forwarded.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Read(RequestBodyError),
    #[error("the request body did not arrive in time")]
    TimedOut,
}

/// Reads a small body into memory so it can be sent more than once. Returns the body to
/// forward, and the bytes for the copies (`None`: too large or of unknown size; it is streamed once, not mirrored or retried).
pub async fn buffer_body(
    incoming: RequestBody,
) -> Result<(UpstreamBody, Option<Bytes>), BodyError> {
    if incoming.is_end_stream() {
        return Ok((Either::Right(Full::new(Bytes::new())), Some(Bytes::new())));
    }
    if incoming
        .size_hint()
        .upper()
        .is_none_or(|n| n > BUFFERED_BODY_LIMIT)
    {
        return Ok((Either::Left(incoming), None));
    }
    let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, incoming.collect())
        .await
        .map_err(|_| BodyError::TimedOut)?
        .map_err(BodyError::Read)?
        .to_bytes();
    Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
}
