//! The connection's defences: the abuse and flood limits, the watchdog that ends header blocks
//! and window waits that take too long, and the closed streams it remembers (to tell frames
//! it ignores from frames that are the client's error).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use super::conn::{Conn, ConnError};
use super::flood::{ABUSE_PER_SECOND, EMPTY_IN_A_ROW, Flood, SETTINGS_PER_SECOND};
use crate::codec::h2::frame::Reason;

/// Streams closed lately, remembered to tell frames the client may still have had in flight
/// (ignored) from frames on a stream the client knows is closed (STREAM_CLOSED).
const CLOSED_REMEMBERED: usize = 512;

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Counts a stream that cost work and gave nothing; too many in a second end the
    /// connection.
    pub(super) fn abused(&mut self) -> Result<(), ConnError> {
        if self.abuse.over(ABUSE_PER_SECOND) {
            return Err(ConnError(
                Reason::EnhanceYourCalm,
                "too many reset, refused or malformed streams",
            ));
        }
        Ok(())
    }

    /// Makes sure the watchdog fires by `deadline`.
    pub(super) fn watch_until(&mut self, deadline: Instant) {
        match &mut self.watchdog {
            Some(timer) if timer.deadline() <= deadline => {}
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.watchdog = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// The watchdog fired: a header block not completed in time ends the connection; streams
    /// that waited the send timeout for window are reset. The watchdog is set again for what
    /// is still waiting.
    pub(super) fn stalled_work(&mut self) {
        let now = Instant::now();
        if let Some(partial) = &self.partial {
            if partial.deadline <= now {
                debug!(peer = %self.conn.peer, "HTTP/2 header block not completed in time");
                self.fail(Reason::EnhanceYourCalm);
                return;
            }
            let deadline = partial.deadline;
            self.watch_until(deadline);
        }
        let timeout = self.shared.limits.send_timeout;
        let mut expired = Vec::new();
        let mut next = None::<Instant>;
        for (id, s) in &self.streams {
            match s.blocked_since {
                Some(since) if since + timeout <= now => expired.push(*id),
                Some(since) => {
                    next = Some(next.map_or(since + timeout, |n| n.min(since + timeout)))
                }
                None => {}
            }
        }
        for id in expired {
            debug!(peer = %self.conn.peer, stream = id, "no window granted in time: reset");
            self.reset(id, Reason::Cancel);
        }
        if let Some(next) = next {
            self.watch_until(next);
        }
    }

    /// Counts a frame that costs work for nothing; too many end the connection.
    pub(super) fn flood_check(&mut self, flood: Flood) -> Result<(), ConnError> {
        match flood {
            Flood::Settings => {
                if self.settings_seen.over(SETTINGS_PER_SECOND) {
                    return Err(ConnError(Reason::EnhanceYourCalm, "SETTINGS flood"));
                }
            }
            Flood::Empty => {
                self.empty_frames += 1;
                if self.empty_frames > EMPTY_IN_A_ROW {
                    return Err(ConnError(Reason::EnhanceYourCalm, "empty frame flood"));
                }
            }
        }
        Ok(())
    }

    /// Remembers a stream that closed, and whether the proxy reset it.
    pub(super) fn remember_closed(&mut self, id: u32, by_reset: bool) {
        if self.closed.len() == CLOSED_REMEMBERED {
            self.closed.pop_front();
        }
        self.closed.push_back((id, by_reset));
    }

    /// How a stream closed lately: Some(true) when the proxy reset it (frames the client sent
    /// before it knew are ignored), Some(false) when both sides ended it or the client reset
    /// it (further frames are the client's error). None when not remembered.
    pub(super) fn closed_by_reset(&self, id: u32) -> Option<bool> {
        self.closed
            .iter()
            .rev()
            .find(|(closed, _)| *closed == id)
            .map(|(_, by_reset)| *by_reset)
    }
}
