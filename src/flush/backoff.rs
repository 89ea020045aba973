//! Exponential backoff between retries of a failed store call.

use std::time::Duration;

/// The waits between retries: `initial`, doubling up to `max`.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Returns a backoff whose first wait is `initial`.
    pub(super) fn new(initial: Duration, max: Duration) -> Self {
        debug_assert!(
            initial <= max,
            "the config checks retry_initial <= retry_max"
        );
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// Returns the wait before the next retry, and doubles the one after.
    pub(super) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// Starts again from `initial` (after a success).
    pub(super) fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u64> = (0..5)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 350, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_millis(100));
    }
}
