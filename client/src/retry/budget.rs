//! The client-wide retry budget: a token bucket that retries spend and
//! successes refill, so retries add a bounded share of load, and a tier
//! that is down sees each call about once.

use std::sync::atomic::{AtomicU32, Ordering};

/// Thousandths of a token, so a success can refill a fraction of one.
const MILLI: u32 = 1_000;

/// The client-wide retry budget, a token bucket: each retry spends a
/// token, each successful call refills a fraction of one, up to the
/// capacity. First attempts never wait for it: it bounds only the extra
/// load retries add, to the capacity plus one retry per
/// `successes_per_token` successes.
#[derive(Debug)]
pub struct RetryBudget {
    capacity: u32,
    refill: u32,
    /// Thousandths of a token; at most `capacity`.
    tokens: AtomicU32,
}

impl RetryBudget {
    /// Returns a full budget of `tokens` retries, refilled by one for every
    /// `successes_per_token` successes.
    pub fn new(tokens: u32, successes_per_token: u32) -> Self {
        let capacity = tokens.saturating_mul(MILLI);
        Self {
            capacity,
            refill: MILLI / successes_per_token.clamp(1, MILLI),
            tokens: AtomicU32::new(capacity),
        }
    }

    /// Spends a token for a retry; returns false, spending nothing, when
    /// less than one is left.
    pub fn try_spend(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tokens| {
                tokens.checked_sub(MILLI)
            })
            .is_ok()
    }

    /// Refills the budget after a successful call.
    pub fn record_success(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tokens| {
                (tokens < self.capacity).then(|| (tokens + self.refill).min(self.capacity))
            });
    }

    /// Returns the whole retries left.
    pub fn available(&self) -> u32 {
        self.tokens.load(Ordering::Acquire) / MILLI
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_spend_tokens_and_successes_refill_a_fraction() {
        let budget = RetryBudget::new(3, 4);
        assert_eq!(budget.available(), 3);
        assert!(budget.try_spend() && budget.try_spend() && budget.try_spend());
        assert!(!budget.try_spend(), "spent");
        // Four successes make one token; a fraction is no retry.
        for _ in 0..3 {
            budget.record_success();
        }
        assert!(!budget.try_spend());
        budget.record_success();
        assert!(budget.try_spend());
        assert!(!budget.try_spend());
        // Refills stop at the capacity.
        for _ in 0..1_000 {
            budget.record_success();
        }
        assert_eq!(budget.available(), 3);
    }

    #[test]
    fn an_empty_budget_allows_no_retry() {
        let empty = RetryBudget::new(0, 1);
        empty.record_success();
        assert!(!empty.try_spend());
    }
}
