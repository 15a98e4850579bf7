//! Limits a route's requests are held to (TrafficPolicy `requestLimits`, `timeouts`), on top
//! of the listener's. The head limit is checked once the route is known (parsing is bounded
//! by the proxy's own, larger limit); the body limit tightens the body's own count.

use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use rauta_common::api::v1::RequestLimits;

use super::FilterError;

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLimitsRt {
    pub max_body_bytes: Option<u64>,
    pub max_header_bytes: Option<usize>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
}

impl RequestLimitsRt {
    pub fn build(l: &RequestLimits) -> Result<RequestLimitsRt, FilterError> {
        let duration = |d: Option<&prost_types::Duration>, field: &str| {
            d.map(|d| {
                Duration::try_from(*d)
                    .map_err(|e| FilterError::RequestLimits(format!("{field}: {e}")))
            })
            .transpose()
        };
        Ok(RequestLimitsRt {
            max_body_bytes: (l.max_body_bytes > 0).then_some(l.max_body_bytes),
            max_header_bytes: (l.max_header_bytes > 0).then_some(l.max_header_bytes as usize),
            request_timeout: duration(l.request_timeout.as_ref(), "request_timeout")?,
            backend_timeout: duration(
                l.backend_request_timeout.as_ref(),
                "backend_request_timeout",
            )?,
        })
    }

    /// Whether only timeouts are set (which every request path honours through the rule).
    pub fn only_timeouts(&self) -> bool {
        self.max_body_bytes.is_none() && self.max_header_bytes.is_none()
    }

    /// Whether the request head is over the limit: the request line and the fields as
    /// HTTP/1.1 writes them (HTTP/2's are counted the same way, not by HPACK size).
    pub fn head_too_large(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let Some(max) = self.max_header_bytes else {
            return false;
        };
        let line = method.as_str().len()
            + uri.path_and_query().map_or(1, |p| p.as_str().len())
            + " HTTP/1.1\r\n".len()
            + 1;
        let fields: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        line + fields > max
    }
}
