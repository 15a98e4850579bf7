//! The retry budget of a cluster, as Finagle's and Linkerd's (and the Gateway API's
//! XBackendTrafficPolicy retryConstraint): every request that may be retried deposits
//! `percent` units, every retry withdraws 100, and what was deposited or withdrawn is forgotten
//! after the window. A reserve of the minimum retry rate over that window is always there, so a
//! burst of failures (every request in flight on a backend that was just killed) is retried at
//! once, while a cluster that keeps failing gets at most `percent` more traffic from retries
//! (no retry storm).
//!
//! Envoy's budget counts retries *in flight* instead (20% of the requests in flight, at least
//! 3); with a fast backend few requests are in flight, so the few that fail together when a
//! backend dies exceed it and are answered 502 although the other backend is healthy.
//!
//! Lock-free: one `AtomicU64` a second of the window, holding that second and its balance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Units a retry costs; a request deposits `percent` of them.
const RETRY_COST: i64 = 100;
/// Longest window.
pub const MAX_WINDOW_SECONDS: u32 = 300;

/// A budget's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetParams {
    /// Retries per 100 requests, 1..=100.
    pub percent: u32,
    /// Seconds deposits and withdrawals count, 1..=[`MAX_WINDOW_SECONDS`].
    pub window_seconds: u32,
    /// Retries always allowed over the window.
    pub reserve_retries: u32,
}

impl Default for BudgetParams {
    /// 20% over 10 s, and 10 retries a second whatever the traffic.
    fn default() -> Self {
        BudgetParams {
            percent: 20,
            window_seconds: 10,
            reserve_retries: 100,
        }
    }
}

#[derive(Debug)]
pub struct RetryBudget {
    pub params: BudgetParams,
    started: Instant,
    /// Slot `s % window` holds second `s` (high 32 bits) and its balance (low 32 bits, signed).
    slots: Box<[AtomicU64]>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(BudgetParams::default())
    }
}

fn pack(second: u32, balance: i32) -> u64 {
    (u64::from(second) << 32) | u64::from(balance as u32)
}

fn unpack(slot: u64) -> (u32, i32) {
    ((slot >> 32) as u32, slot as u32 as i32)
}

impl RetryBudget {
    pub fn new(params: BudgetParams) -> RetryBudget {
        let window = params.window_seconds.clamp(1, MAX_WINDOW_SECONDS);
        RetryBudget {
            params: BudgetParams {
                percent: params.percent.clamp(1, 100),
                window_seconds: window,
                reserve_retries: params.reserve_retries,
            },
            started: Instant::now(),
            slots: (0..window).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts a request that may be retried.
    pub fn deposit(&self) {
        self.add(self.second(), i64::from(self.params.percent));
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
        let window = self.params.window_seconds;
        i64::from(self.params.reserve_retries) * RETRY_COST
            + self
                .slots
                .iter()
                .map(|slot| unpack(slot.load(Ordering::Relaxed)))
                .filter(|(second, _)| *second != 0 && *second <= now && second + window > now)
                .map(|(_, balance)| i64::from(balance))
                .sum::<i64>()
    }

    fn add(&self, now: u32, units: i64) {
        let slot = &self.slots[now as usize % self.slots.len()];
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

    const TTL_SECONDS: u32 = 10;
    const RESERVE: usize = 100;

    fn retries(budget: &RetryBudget, now: u32, wanted: usize) -> usize {
        (0..wanted).filter(|_| budget.try_retry_at(now)).count()
    }

    fn deposit_at(budget: &RetryBudget, now: u32) {
        budget.add(now, i64::from(budget.params.percent));
    }

    #[test]
    fn a_burst_of_failures_is_retried_from_the_reserve() {
        let budget = RetryBudget::default();
        // A backend dies with a few requests in flight and nothing deposited yet.
        assert_eq!(retries(&budget, 1, 7), 7);
        // The reserve holds the minimum rate over the whole window, and no more.
        assert_eq!(retries(&budget, 1, 1000), RESERVE - 7);
    }

    #[test]
    fn steady_failures_are_retried_at_a_fifth_of_the_requests() {
        let budget = RetryBudget::default();
        let mut granted = 0;
        let mut requests = 0;
        // 100 s of 1000 requests a second, every one failing and asking for a retry.
        for now in 1..=100 {
            for _ in 0..1000 {
                deposit_at(&budget, now);
                requests += 1;
                granted += usize::from(budget.try_retry_at(now));
            }
        }
        assert!(
            granted <= requests / 5 + RESERVE * 11,
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
        assert_eq!(retries(&budget, 5, 1000), RESERVE);
        assert_eq!(
            retries(&budget, 5 + TTL_SECONDS - 1, 1),
            0,
            "within the window"
        );
        assert_eq!(retries(&budget, 5 + TTL_SECONDS, 1000), RESERVE, "after it");
        // A slot reused for a later second starts from nothing.
        assert_eq!(retries(&budget, 5 + 2 * TTL_SECONDS, 1000), RESERVE);
    }

    #[test]
    fn deposits_count_for_the_window_only() {
        let budget = RetryBudget::default();
        for _ in 0..500 {
            deposit_at(&budget, 3);
        }
        assert_eq!(retries(&budget, 3, 10_000), RESERVE + 100);
        // Ten seconds on: the deposits are gone, and so are the withdrawals.
        assert_eq!(retries(&budget, 3 + TTL_SECONDS, 10_000), RESERVE);
    }

    #[test]
    fn the_settings_shape_the_budget() {
        let budget = RetryBudget::new(BudgetParams {
            percent: 50,
            window_seconds: 2,
            reserve_retries: 0,
        });
        for _ in 0..100 {
            deposit_at(&budget, 1);
        }
        assert_eq!(retries(&budget, 1, 1000), 50, "half the requests");
        assert_eq!(retries(&budget, 3, 1000), 0, "a 2 s window, no reserve");
    }
}
