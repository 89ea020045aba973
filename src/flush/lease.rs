//! Keeps the version lease recorded in the store ahead of the clock (see
//! `clock`), on its own task: a store that hangs or a flush that waits for
//! write permits never delays a renewal.
//!
//! The lease is renewed when half of it is left. A failed renewal is
//! retried with the flush's backoff, not on every tick; a failure streak
//! logs one warning, a reminder now and then, and one line when it ends.
//! If the lease runs out meanwhile, the cache refuses writes (`UNAVAILABLE`)
//! until a renewal lands, so no version is handed out above the lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::metrics::FlushMetrics;
use crate::cache::Cache;
use crate::clock::unix_micros;
use crate::store::Store;

/// How often a failure streak is logged again.
const REMINDER_EVERY: Duration = Duration::from_secs(30);

/// The lease keeper of `lease`, already recorded (and set in the cache's
/// clock); `streak` starts as `None`.
pub(super) struct LeaseKeeper {
    pub(super) store: Arc<dyn Store>,
    pub(super) cache: Arc<Cache>,
    pub(super) metrics: Arc<FlushMetrics>,
    /// How far ahead of the clock a new lease runs.
    pub(super) length: Duration,
    pub(super) backoff: Backoff,
    /// The lease recorded in the store, in Unix microseconds.
    pub(super) lease: u64,
    pub(super) streak: Option<FailureStreak>,
}

/// Renewals failing in a row.
pub(super) struct FailureStreak {
    failures: u64,
    last_logged: Instant,
    expiry_logged: bool,
}

impl LeaseKeeper {
    /// Renews the lease until `shutdown` is cancelled. A renewal in flight
    /// is dropped then: calls have stopped, no version is handed out.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let now = unix_micros();
            wait = match renewal_wait(self.lease, now, self.length) {
                // Looked at again now and then: the wall clock may step.
                Some(until_due) => until_due.min(self.length / 8),
                None => {
                    let renewed = tokio::select! {
                        () = shutdown.cancelled() => return,
                        renewed = self.renew(now) => renewed,
                    };
                    if renewed {
                        Duration::ZERO
                    } else {
                        self.backoff.next_wait()
                    }
                }
            };
        }
    }

    /// Records a lease one `length` past `now`; returns whether it landed.
    async fn renew(&mut self, now: u64) -> bool {
        let lease = now.saturating_add(micros(self.length));
        // A call that hangs counts as failed; the next attempt may find a
        // working connection.
        let timeout = self.length / 4;
        let error =
            match tokio::time::timeout(timeout, self.store.record_version_floor(lease)).await {
                Ok(Ok(())) => {
                    self.lease = lease;
                    self.cache.clock().set_lease(lease);
                    self.backoff.reset();
                    if let Some(streak) = self.streak.take() {
                        tracing::info!(failures = streak.failures, "version lease renewed again");
                    }
                    return true;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {} ms", timeout.as_millis()),
            };
        self.metrics.lease_renewal_failures.increment(1);
        let left_ms = self.lease.saturating_sub(unix_micros()) / 1_000;
        let streak = self.streak.get_or_insert_with(|| {
            tracing::warn!(%error, left_ms, "renewing the version lease failed; retrying with backoff");
            FailureStreak {
                failures: 0,
                last_logged: Instant::now(),
                expiry_logged: false,
            }
        });
        streak.failures += 1;
        if left_ms == 0 && !streak.expiry_logged {
            streak.expiry_logged = true;
            tracing::error!(%error, failures = streak.failures, "the version lease ran out: writes get UNAVAILABLE until the store records a new one");
        } else if streak.last_logged.elapsed() >= REMINDER_EVERY {
            streak.last_logged = Instant::now();
            tracing::warn!(%error, failures = streak.failures, left_ms, "the version lease still cannot be renewed");
        }
        false
    }
}

/// Returns how long until a lease ending at `lease` is due for renewal
/// (half of `length` left), or `None` if it is due at `now`.
fn renewal_wait(lease: u64, now: u64, length: Duration) -> Option<Duration> {
    let due_at = lease.saturating_sub(micros(length) / 2);
    (now < due_at).then(|| Duration::from_micros(due_at - now))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_due_for_renewal_when_half_is_left() {
        let length = Duration::from_secs(120);
        let lease = 1_000_000_000 + 120_000_000;
        assert_eq!(
            renewal_wait(lease, 1_000_000_000, length),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            renewal_wait(lease, 1_000_000_000 + 60_000_000, length),
            None
        );
        assert_eq!(renewal_wait(lease, u64::MAX, length), None, "long expired");
    }
}
