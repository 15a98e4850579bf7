//! HTTP/1.1 WebSocket upgrades: the Upgrade request is forwarded, and
//! when the upstream answers 101 both upgraded connections are spliced together.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::debug;

/// The requested protocol, when the request asks to upgrade its connection.
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let wants = headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    // Only WebSocket: relaying other protocols (h2c above all) would let a client tunnel
    // requests to the backend past routing and filters.
    let protocol = headers.get(UPGRADE)?;
    let websocket = protocol
        .to_str()
        .is_ok_and(|p| p.trim().eq_ignore_ascii_case("websocket"));
    (wants && websocket).then(|| protocol.clone())
}

/// Puts back the hop-by-hop headers an upgrade needs (they were stripped with the others).
pub fn restore_headers(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol.clone());
}

/// After a 101 from upstream: splices the client's and the upstream's upgraded connections
/// in the background, until either side closes. `open` is held meanwhile, so that a drain
/// waits for the relay (up to its grace period) as it does for any open connection.
pub fn splice<B>(downstream: OnUpgrade, upstream: &mut Response<B>, open: watch::Receiver<bool>) {
    if upstream.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(upstream);
    tokio::spawn(async move {
        match tokio::join!(downstream, upstream) {
            (Ok(down), Ok(up)) => {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(err) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    debug!(%err, "upgraded connection ended with an error");
                }
            }
            (down, up) => debug!(down = ?down.err(), up = ?up.err(), "upgrade failed"),
        }
        drop(open);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(connection: &str, upgrade: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_str(connection).unwrap());
        h.insert(UPGRADE, HeaderValue::from_str(upgrade).unwrap());
        h
    }

    #[test]
    fn only_websocket_upgrades_are_relayed() {
        assert!(
            requested(
                Version::HTTP_11,
                &headers("keep-alive, Upgrade", "WebSocket")
            )
            .is_some()
        );
        assert!(
            requested(Version::HTTP_11, &headers("Upgrade, HTTP2-Settings", "h2c")).is_none(),
            "h2c smuggling"
        );
        assert!(requested(Version::HTTP_11, &headers("keep-alive", "websocket")).is_none());
        assert!(requested(Version::HTTP_2, &headers("upgrade", "websocket")).is_none());
    }
}
