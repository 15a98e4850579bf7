//! The response caches' counters in the Prometheus text format, read off the routing state at
//! scrape time: a rule's cache (and its series) lives exactly as long as the rule does.

use std::fmt::Write;

use crate::model::RoutingState;
use crate::observe::series::escape;

pub fn render(state: &RoutingState, out: &mut String) {
    let mut caches: Vec<_> = state.caches().collect();
    if caches.is_empty() {
        return;
    }
    caches.sort_by_key(|(name, _)| *name);
    out.push_str(
        "# HELP rauta_proxy_cache_requests_total Requests to rules with a response cache, by \
         what the cache did: hit (answered from it), stored (forwarded, answer kept), miss \
         (forwarded, answer not cacheable), bypass (not looked up: credentials, no-cache, \
         another method)\n# TYPE rauta_proxy_cache_requests_total counter\n",
    );
    for (name, store) in &caches {
        for (result, count) in store.counters.by_result() {
            let _ = writeln!(
                out,
                "rauta_proxy_cache_requests_total{{route=\"{}\",result=\"{result}\"}} {count}",
                escape(name)
            );
        }
    }
    out.push_str(
        "# HELP rauta_proxy_cache_entries Answers a rule's cache holds (fresh or not yet \
         evicted)\n# TYPE rauta_proxy_cache_entries gauge\n",
    );
    for (name, store) in &caches {
        let _ = writeln!(
            out,
            "rauta_proxy_cache_entries{{route=\"{}\"}} {}",
            escape(name),
            store.len()
        );
    }
}
