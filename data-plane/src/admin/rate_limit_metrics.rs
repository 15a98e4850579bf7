//! The rate limiters' counters in the Prometheus text format, read off the routing state at
//! scrape time: a limiter (and its series) lives as long as a rule uses it.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::model::RoutingState;
use crate::observe::series::escape;

pub fn render(state: &RoutingState, out: &mut String) {
    let mut limiters: Vec<_> = state.limiters().map(|(_, l)| l).collect();
    if limiters.is_empty() {
        return;
    }
    limiters.sort_by(|a, b| (&a.name, &a.route).cmp(&(&b.name, &b.route)));
    out.push_str(
        "# HELP rauta_proxy_rate_limit_requests_total Requests counted by a local rate limit, \
         by result: allowed, or limited (answered 429)\n\
         # TYPE rauta_proxy_rate_limit_requests_total counter\n",
    );
    for l in &limiters {
        let labels = format!(
            "limit=\"{}\",route=\"{}\"",
            escape(&l.name),
            escape(&l.route)
        );
        for (result, counter) in [
            ("allowed", &l.counters.allowed),
            ("limited", &l.counters.limited),
        ] {
            let _ = writeln!(
                out,
                "rauta_proxy_rate_limit_requests_total{{{labels},result=\"{result}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
    out.push_str(
        "# HELP rauta_proxy_rate_limit_keys Keys a local rate limit counts now\n\
         # TYPE rauta_proxy_rate_limit_keys gauge\n",
    );
    for l in &limiters {
        let _ = writeln!(
            out,
            "rauta_proxy_rate_limit_keys{{limit=\"{}\",route=\"{}\"}} {}",
            escape(&l.name),
            escape(&l.route),
            l.len()
        );
    }
}
