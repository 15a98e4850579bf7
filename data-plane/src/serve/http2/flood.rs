//! What a connection counts to notice a client that costs work without moving requests
//! forward: streams reset, refused or malformed (rapid reset), SETTINGS, empty frames.

use std::time::Duration;

use tokio::time::Instant;

/// Streams reset by the client while in progress, refused, or malformed, per second, before
/// the connection is ended (CVE-2023-44487, rapid reset).
pub(super) const ABUSE_PER_SECOND: u32 = 200;
/// SETTINGS frames a client may send per second: each is answered, and honest clients send
/// one or two per connection.
pub(super) const SETTINGS_PER_SECOND: u32 = 100;
/// Frames in a row that carry nothing and end nothing (empty DATA, HEADERS or CONTINUATION)
/// before the connection is ended: they cost work and move no request forward.
pub(super) const EMPTY_IN_A_ROW: u32 = 16;

/// Counts events in the current one-second window.
pub(super) struct PerSecond {
    count: u32,
    since: Instant,
}

impl PerSecond {
    pub(super) fn new() -> Self {
        PerSecond {
            count: 0,
            since: Instant::now(),
        }
    }

    /// Counts one; true when this second's count is past `limit`.
    pub(super) fn over(&mut self, limit: u32) -> bool {
        let now = Instant::now();
        if now.duration_since(self.since) >= Duration::from_secs(1) {
            self.since = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > limit
    }
}

/// Frames that cost the proxy work without moving a request forward, limited per client.
pub(super) enum Flood {
    Settings,
    Empty,
}
