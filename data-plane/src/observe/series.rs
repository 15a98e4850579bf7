//! Series kept as plain atomics and written out in the Prometheus text format at scrape time,
//! for what a proxy has thousands of (route rules, clusters, endpoints). A prometheus-crate
//! child costs about 400 bytes per counter and 900 per histogram (label pairs, descriptors,
//! a map entry); a series here costs its atomics and its label. Each series is found by its
//! label when a snapshot is built, so the request path only touches atomics.

use foldhash::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: half a millisecond to ten seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BOUNDS`].
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Appends `metric`'s `_bucket`, `_sum` and `_count` lines for `label="value"`.
    pub fn render(&self, metric: &str, label: &str, value: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = LATENCY_BOUNDS
                .get(i)
                .map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{metric}_bucket{{{label}=\"{value}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{metric}_sum{{{label}=\"{value}\"}} {sum}\n{metric}_count{{{label}=\"{value}\"}} {cumulative}"
        );
    }
}

/// A Prometheus label value escaped (backslash, quote, newline).
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends a family's `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, metric: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
}

/// Series of type `T`, by label value. Only snapshot builds, pruning and scrapes lock it.
#[derive(Debug)]
pub struct SeriesRegistry<T> {
    series: Mutex<HashMap<Arc<str>, Arc<T>>>,
}

impl<T> Default for SeriesRegistry<T> {
    fn default() -> Self {
        SeriesRegistry {
            series: Mutex::default(),
        }
    }
}

impl<T: Default> SeriesRegistry<T> {
    /// The series of `label`, the same as before if it already had one.
    pub fn get(&self, label: &str) -> Arc<T> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = series.get(label) {
            return Arc::clone(found);
        }
        let made = Arc::new(T::default());
        series.insert(Arc::from(label), Arc::clone(&made));
        made
    }

    /// Forgets the series nothing holds any more.
    pub fn prune(&self) {
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, s| Arc::strong_count(s) > 1);
    }

    /// Forgets `label`'s series now, held or not (a holder keeps counting into a series no
    /// scrape shows).
    pub fn remove(&self, label: &str) {
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(label);
    }

    /// Calls `render` with every series and its escaped label value, sorted by label, while
    /// holding the registry: a prune meanwhile waits, rather than taking the scrape's handles
    /// for holders and keeping series nothing else holds.
    pub fn with_sorted<R>(&self, render: impl FnOnce(&[(String, &T)]) -> R) -> R {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<(String, &T)> = series
            .iter()
            .map(|(label, s)| (escape(label), &**s))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        render(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(11));
        let mut text = String::new();
        h.render("m", "cluster", "a\\\"b", &mut text);
        assert!(
            text.contains("m_bucket{cluster=\"a\\\"b\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("m_bucket{cluster=\"a\\\"b\",le=\"0.025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("m_bucket{cluster=\"a\\\"b\",le=\"10\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("m_bucket{cluster=\"a\\\"b\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("m_count{cluster=\"a\\\"b\"} 3\n"), "{text}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn series_are_shared_by_label_and_pruned_when_unheld() {
        let registry: SeriesRegistry<AtomicU64> = SeriesRegistry::default();
        let a = registry.get("a\"1");
        a.fetch_add(5, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&a, &registry.get("a\"1")));
        let _b = registry.get("b");
        drop(registry.get("c"));
        registry.prune();
        let labels = |r: &SeriesRegistry<AtomicU64>| {
            r.with_sorted(|all| all.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>())
        };
        assert_eq!(labels(&registry), ["a\\\"1", "b"]);
        registry.remove("b");
        assert_eq!(labels(&registry).len(), 1, "removed even while held");
    }
}
