//! The retry budget of a cluster, as Finagle's and Linkerd's: every request that may be retried
//! deposits a fifth of a retry, every retry withdraws one, and what was deposited or withdrawn is
//! forgotten after [`TTL_SECONDS`]. A reserve of [`MIN_RETRIES_PER_SECOND`] over that window is
//! always there, so a burst of failures (every request in flight on a backend that was just
//! killed) is retried at once, while a cluster that keeps failing gets at most 20% more traffic
//! from retries (no retry storm).
//!
//! Envoy's budget counts retries *in flight* instead (20% of the requests in flight, at least
//! 3); with a fast backend few requests are in flight, so the few that fail together when a
//! backend dies exceed it and are answered 502 although the other backend is healthy.
//!
//! Lock-free: one `AtomicU64` a second of the window, holding that second and its balance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// How long deposits and withdrawals count.
pub const TTL_SECONDS: u32 = 10;
/// Retries always allowed per second (over the window), whatever the traffic.
pub const MIN_RETRIES_PER_SECOND: i64 = 10;
/// Units a retry costs; a request deposits one: retries are at most 1/5 = 20% of requests.
const RETRY_COST: i64 = 5;
const RESERVE: i64 = MIN_RETRIES_PER_SECOND * TTL_SECONDS as i64 * RETRY_COST;
const SLOTS: usize = TTL_SECONDS as usize;

#[derive(Debug)]
pub struct RetryBudget {
    started: Instant,
    /// Slot `s % SLOTS` holds second `s` (high 32 bits) and its balance (low 32 bits, signed).
    slots: [AtomicU64; SLOTS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            started: Instant::now(),
            slots: Default::default(),
        }
    }
}

fn pack(second: u32, balance: i32) -> u64 {
    (u64::from(second) << 32) | u64::from(balance as u32)
}

fn unpack(slot: u64) -> (u32, i32) {
    ((slot >> 32) as u32, slot as u32 as i32)
}

impl RetryBudget {
    /// Counts a request that may be retried.
    pub fn deposit(&self) {
        self.add(self.second(), 1);
    }

    /// Takes one retry from the budget; `false` when it has none left.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(self.second())
    }

    fn second(&self) -> u32 {
        // Seconds start at 1: a slot holding second 0 is one never written.
        u32::try_from(self.started.elapsed().as_secs())
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }

    fn try_retry_at(&self, now: u32) -> bool {
        // Two retries racing may both see the last unit: the budget is a bound on a rate, and
        // one retry over it does no harm.
        if self.balance_at(now) < RETRY_COST {
            return false;
        }
        self.add(now, -RETRY_COST);
        true
    }

    fn balance_at(&self, now: u32) -> i64 {
        RESERVE
            + self
                .slots
                .iter()
                .map(|slot| unpack(slot.load(Ordering::Relaxed)))
                .filter(|(second, _)| *second != 0 && *second <= now && second + TTL_SECONDS > now)
                .map(|(_, balance)| i64::from(balance))
                .sum::<i64>()
    }

    fn add(&self, now: u32, units: i64) {
        let slot = &self.slots[now as usize % SLOTS];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (second, balance) = unpack(current);
            let balance = if second == now { i64::from(balance) } else { 0 };
            let updated = (balance + units).clamp(i64::from(i32::MIN), i64::from(i32::MAX));
            match slot.compare_exchange_weak(
                current,
                pack(now, updated as i32),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(budget: &RetryBudget, now: u32, wanted: usize) -> usize {
        (0..wanted).filter(|_| budget.try_retry_at(now)).count()
    }

    #[test]
    fn a_burst_of_failures_is_retried_from_the_reserve() {
        let budget = RetryBudget::default();
        // A backend dies with a few requests in flight and nothing deposited yet.
        assert_eq!(retries(&budget, 1, 7), 7);
        // The reserve holds the minimum rate over the whole window, and no more.
        let reserve = (MIN_RETRIES_PER_SECOND * i64::from(TTL_SECONDS)) as usize;
        assert_eq!(retries(&budget, 1, 1000), reserve - 7);
    }

    #[test]
    fn steady_failures_are_retried_at_a_fifth_of_the_requests() {
        let budget = RetryBudget::default();
        let mut granted = 0;
        let mut requests = 0;
        // 100 s of 1000 requests a second, every one failing and asking for a retry.
        for now in 1..=100 {
            for _ in 0..1000 {
                budget.add(now, 1);
                requests += 1;
                granted += usize::from(budget.try_retry_at(now));
            }
        }
        let reserve = (MIN_RETRIES_PER_SECOND * i64::from(TTL_SECONDS)) as usize;
        assert!(
            granted <= requests / 5 + reserve * 11,
            "{granted} retries for {requests} requests"
        );
        assert!(
            granted >= requests / 5,
            "{granted} retries for {requests} requests"
        );
    }

    #[test]
    fn what_was_withdrawn_is_forgotten_after_the_window() {
        let budget = RetryBudget::default();
        let reserve = (MIN_RETRIES_PER_SECOND * i64::from(TTL_SECONDS)) as usize;
        assert_eq!(retries(&budget, 5, 1000), reserve);
        assert_eq!(
            retries(&budget, 5 + TTL_SECONDS - 1, 1),
            0,
            "within the window"
        );
        assert_eq!(retries(&budget, 5 + TTL_SECONDS, 1000), reserve, "after it");
        // A slot reused for a later second starts from nothing.
        assert_eq!(retries(&budget, 5 + 2 * TTL_SECONDS, 1000), reserve);
    }

    #[test]
    fn deposits_count_for_the_window_only() {
        let budget = RetryBudget::default();
        let reserve = (MIN_RETRIES_PER_SECOND * i64::from(TTL_SECONDS)) as usize;
        for _ in 0..500 {
            budget.add(3, 1);
        }
        assert_eq!(retries(&budget, 3, 10_000), reserve + 100);
        // Ten seconds on: the deposits are gone, and so are the withdrawals.
        assert_eq!(retries(&budget, 3 + TTL_SECONDS, 10_000), reserve);
    }
}
