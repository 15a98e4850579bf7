//! Per-route request counters and latency histograms, kept as plain atomics and written out
//! in the Prometheus text format at scrape time. A prometheus-crate child per route costs
//! about 3.5 KB (35 MB at 10000 routes); these cost under 200 bytes. A route keeps its
//! counters across snapshot swaps (looked up by name), and a route that is gone stops being
//! reported once nothing uses it.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The counters of one route rule.
#[derive(Debug, Default)]
pub struct RouteStats {
    by_class: [AtomicU64; 5],
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl RouteStats {
    /// Counts an answered request that arrived at `started`.
    #[inline]
    pub fn record(&self, status: u16, started: Instant) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let secs = elapsed.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Every route's counters, by route name.
#[derive(Debug, Default)]
pub struct RouteStatsRegistry {
    routes: Mutex<HashMap<Arc<str>, Arc<RouteStats>>>,
}

/// A Prometheus label value escaped (backslash, quote, newline).
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl RouteStatsRegistry {
    /// The counters of a route, the same as before if it already had some.
    pub fn route(&self, name: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = routes.get(name) {
            return Arc::clone(stats);
        }
        let stats = Arc::new(RouteStats::default());
        routes.insert(Arc::from(name), Arc::clone(&stats));
        stats
    }

    /// Forgets routes the routing state no longer uses.
    pub fn prune(&self) {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, stats| Arc::strong_count(stats) > 1);
    }

    /// Appends `<prefix>requests_total` and `<prefix>request_duration_seconds` in the
    /// Prometheus text format.
    pub fn render(&self, prefix: &str, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&Arc<str>> = routes.keys().collect();
        names.sort();
        let _ = writeln!(
            out,
            "# HELP {prefix}requests_total Requests answered, by route rule and status class\n# TYPE {prefix}requests_total counter"
        );
        for name in &names {
            let stats = &routes[*name];
            let route = escape(name);
            for (class, count) in CLASSES.iter().zip(&stats.by_class) {
                let _ = writeln!(
                    out,
                    "{prefix}requests_total{{route=\"{route}\",status_class=\"{class}\"}} {}",
                    count.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP {prefix}request_duration_seconds Time from a request's arrival to its response headers, by route rule\n# TYPE {prefix}request_duration_seconds histogram"
        );
        for name in &names {
            let stats = &routes[*name];
            let route = escape(name);
            let mut cumulative = 0;
            for (i, count) in stats.buckets.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = BOUNDS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "{prefix}request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = stats.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "{prefix}request_duration_seconds_sum{{route=\"{route}\"}} {sum}\n{prefix}request_duration_seconds_count{{route=\"{route}\"}} {cumulative}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let registry = RouteStatsRegistry::default();
        let stats = registry.route("apps/web/rule/0");
        let started = Instant::now();
        stats.record(200, started);
        stats.record(503, started);
        assert!(Arc::ptr_eq(&stats, &registry.route("apps/web/rule/0")));
        let mut text = String::new();
        registry.render("p_", &mut text);
        assert!(
            text.contains("p_requests_total{route=\"apps/web/rule/0\",status_class=\"2xx\"} 1")
        );
        assert!(
            text.contains("p_requests_total{route=\"apps/web/rule/0\",status_class=\"5xx\"} 1")
        );
        assert!(text.contains(
            "p_request_duration_seconds_bucket{route=\"apps/web/rule/0\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("p_request_duration_seconds_count{route=\"apps/web/rule/0\"} 2"));
        drop(stats);
        registry.prune();
        let mut text = String::new();
        registry.render("p_", &mut text);
        assert!(!text.contains("apps/web"), "a route nothing uses is gone");
    }
}
