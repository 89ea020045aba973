//! Triggers the store's purge of deletion tombstones.
//!
//! A tombstone at version v exists only to make a write of the same row
//! with a lower version lose, so it may go once no such write can arrive.
//! Such stale writes come only from batches taken from the cache and not
//! yet written: a snapshot taken now holds the newest state of its rows
//! (the cache keeps the newest state of every dirty row, deletions
//! included, and a reloaded user starts above every version it had), but a
//! batch retried through an outage can be older than a later batch that
//! already landed. So the cutoff stays below the oldest row of every batch
//! queued or in flight ([`InFlight`]).
//!
//! On top of that, the cutoff stays `tombstone_grace` (at least the flush
//! delay) behind the clock: a row changed within the last flush delay may
//! still sit in the cache, and the grace keeps its tombstones even if the
//! reasoning above missed a path. Purging late costs only some disk; purging
//! early would let a deleted state come back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::in_flight::InFlight;
use super::metrics::FlushMetrics;
use crate::cache::Cache;
use crate::clock::unix_micros;
use crate::store::Store;

/// Tombstones asked for per store call. A store may remove fewer per call
/// (the embedded one bounds its writer's work), so calls go on until one
/// removes nothing.
const PURGE_MAX: usize = 10_000;

/// Store calls per purge round at most, so one round stays short.
const CALLS_PER_ROUND: usize = 100;

/// The purge trigger.
pub(super) struct Purger {
    pub(super) store: Arc<dyn Store>,
    pub(super) cache: Arc<Cache>,
    pub(super) metrics: Arc<FlushMetrics>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) interval: Duration,
    pub(super) grace: Duration,
}

impl Purger {
    /// Purges every `interval` until `shutdown` is cancelled.
    pub(super) async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.purge_round() => {}
            }
        }
    }

    /// Purges what is purgeable now, a bounded number of calls at most.
    async fn purge_round(&self) {
        let mut purged = 0;
        for _ in 0..CALLS_PER_ROUND {
            // Recomputed for every call: batches come and go meanwhile.
            let grace = self.grace.max(self.cache.flush_delay());
            let below = purge_cutoff(self.in_flight.oldest(), unix_micros(), grace);
            match self.store.purge_tombstones(below, PURGE_MAX).await {
                Ok(count) => {
                    purged += count;
                    self.metrics.tombstones_purged.increment(count as u64);
                    if count == 0 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "purging tombstones failed; trying again next round");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(purged, "purged deletion tombstones");
        }
    }
}

/// Returns the version below which tombstones may be purged: below the
/// oldest row not yet written, and `grace` behind the clock.
pub(super) fn purge_cutoff(oldest_unwritten: Option<u64>, now_micros: u64, grace: Duration) -> u64 {
    let grace_micros = u64::try_from(grace.as_micros()).unwrap_or(u64::MAX);
    let behind_clock = now_micros.saturating_sub(grace_micros);
    oldest_unwritten.map_or(behind_clock, |oldest| oldest.min(behind_clock))
}

#[cfg(test)]
mod tests {
    use super::super::in_flight::tests::row;
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000;

    #[test]
    fn without_batches_in_flight_the_cutoff_is_the_grace_behind_the_clock() {
        let cutoff = purge_cutoff(None, NOW, Duration::from_secs(600));
        assert_eq!(cutoff, NOW - 600_000_000);
        assert_eq!(purge_cutoff(None, 5, Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_batch_in_flight_holds_the_cutoff_back_until_it_is_written() {
        let registry = Arc::new(InFlight::default());
        let grace = Duration::from_secs(600);
        // A batch snapshotted an hour ago, retried through an outage.
        let hour_old = NOW - 3_600_000_000;
        let round = registry.begin_round();
        let stale = registry.register(&round, &[row(1, hour_old + 5), row(2, hour_old)]);
        let fresh = registry.register(&round, &[row(3, NOW - 1_000)]);
        assert_eq!(purge_cutoff(registry.oldest(), NOW, grace), hour_old);
        drop(stale);
        assert_eq!(
            purge_cutoff(registry.oldest(), NOW, grace),
            NOW - 600_000_000,
            "a fresh batch is newer than the grace"
        );
        drop(fresh);
        assert_eq!(
            purge_cutoff(registry.oldest(), NOW, grace),
            NOW - 600_000_000
        );
    }
}
