//! The rate limiters' counters (local and global) in the Prometheus text format, read off the routing state at
//! scrape time: a limiter (and its series) lives as long as a rule uses it.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::model::RoutingState;
use crate::observe::series::escape;

pub fn render(state: &RoutingState, out: &mut String) {
    render_local(state, out);
    render_global(state, out);
}

fn render_local(state: &RoutingState, out: &mut String) {
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

fn render_global(state: &RoutingState, out: &mut String) {
    let mut limiters: Vec<_> = state.global_limiters().map(|(_, l)| l).collect();
    if limiters.is_empty() {
        return;
    }
    limiters.sort_by(|a, b| (&a.name, &a.route).cmp(&(&b.name, &b.route)));
    out.push_str(
        "# HELP rauta_proxy_global_rate_limit_requests_total Requests counted by a global rate \
         limit, by result: allowed, limited (429), failed_open or failed_closed (503: Redis \
         could not be asked)\n\
         # TYPE rauta_proxy_global_rate_limit_requests_total counter\n",
    );
    let labels = |l: &crate::model::global_limit::GlobalLimiter| {
        format!(
            "limit=\"{}\",route=\"{}\"",
            escape(&l.name),
            escape(&l.route)
        )
    };
    for l in &limiters {
        let c = &l.counters;
        for (result, counter) in [
            ("allowed", &c.allowed),
            ("limited", &c.limited),
            ("failed_open", &c.failed_open),
            ("failed_closed", &c.failed_closed),
        ] {
            let _ = writeln!(
                out,
                "rauta_proxy_global_rate_limit_requests_total{{{},result=\"{result}\"}} {}",
                labels(l),
                counter.load(Ordering::Relaxed)
            );
        }
    }
    out.push_str(
        "# HELP rauta_proxy_global_rate_limit_reservations_total Requests to Redis for a batch \
         of a global limit's quota\n\
         # TYPE rauta_proxy_global_rate_limit_reservations_total counter\n",
    );
    for l in &limiters {
        let _ = writeln!(
            out,
            "rauta_proxy_global_rate_limit_reservations_total{{{}}} {}",
            labels(l),
            l.counters.reservations.load(Ordering::Relaxed)
        );
    }
}
