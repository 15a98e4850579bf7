//! Accept loops that stay calm under pressure: an accept error (out of file descriptors,
//! most often) backs off instead of being retried at once, which would spin a core while the
//! cause lasts.

use std::time::Duration;

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// The pause after consecutive accept errors: 5 ms, doubling up to a second, back to the
/// start after a success.
#[derive(Debug)]
pub struct AcceptBackoff {
    pause: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { pause: FIRST_PAUSE }
    }
}

impl AcceptBackoff {
    /// An accept failed: waits before the next try.
    pub async fn failed(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }

    fn next_pause(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        pause
    }

    /// An accept succeeded.
    pub fn succeeded(&mut self) {
        self.pause = FIRST_PAUSE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_a_second_and_reset() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10)
            .map(|_| backoff.next_pause().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.next_pause(), FIRST_PAUSE);
    }
}
