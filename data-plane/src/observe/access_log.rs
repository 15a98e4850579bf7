//! Structured access logs: one JSON line per sampled request, on stdout. Off by default. The
//! request path only formats the line and hands it to a writer thread through a bounded
//! queue; when the queue is full the line is dropped and counted, never waited for.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the request arrived (RFC 3339, UTC).
    pub start_time: String,
    /// Until the response headers were ready.
    pub duration_ms: f64,
    pub listener: &'a str,
    pub client: SocketAddr,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<&'a str>,
    /// The first endpoint tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
}

/// The access log sink.
#[derive(Debug)]
pub struct AccessLog {
    queue: SyncSender<Vec<u8>>,
    /// Log a request when a random u32 is below this.
    threshold: u64,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread. `sample` is the share of requests logged, 0 to 1.
    pub fn start(sample: f64, dropped: IntCounter) -> std::io::Result<Arc<AccessLog>> {
        let (queue, lines) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("rauta-access-log".into())
            .spawn(move || write_lines(lines, std::io::stdout().lock()))?;
        Ok(Arc::new(AccessLog {
            queue,
            threshold: (sample.clamp(0.0, 1.0) * f64::from(u32::MAX) + 1.0) as u64,
            dropped,
        }))
    }

    /// Whether this request is one of the sampled.
    #[inline]
    pub fn sampled(&self) -> bool {
        u64::from(rand::random::<u32>()) < self.threshold
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        self.send(line);
    }

    /// Records a line rendered already (a route's or Gateway's own format).
    pub fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Writes lines as they come, flushing whenever the queue runs dry.
fn write_lines(lines: Receiver<Vec<u8>>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = lines.recv() {
        if out.write_all(&line).is_err() {
            return;
        }
        while let Ok(line) = lines.recv_timeout(Duration::ZERO) {
            if out.write_all(&line).is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
    }
}
