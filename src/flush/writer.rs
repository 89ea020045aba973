//! One batch's write: retried with backoff until it lands (or the shutdown
//! deadline gives it up), then the dirty marks it covers are cleared, a
//! share at a time.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::WriteHealth;
use super::backoff::Backoff;
use super::in_flight::InFlightBatch;
use super::metrics::FlushMetrics;
use crate::cache::Cache;
use crate::store::{RowWrite, Store};

/// Rows whose dirty marks are cleared between two turns given back to the
/// runtime. Clearing a mark costs about a microsecond (a partition lock and
/// a lookup), so a landed batch of 512 rows held the request worker for
/// half a millisecond in one poll; a share of 64 is tens of microseconds
/// (BENCHMARKS.md, "Landed batches give way").
const MARKS_PER_TURN: usize = 64;

/// Rows taken from the cache, waiting for (or in) their write.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) rows: Arc<[RowWrite]>,
    pub(super) queued_at: Instant,
    /// Keeps the batch's versions in the purge's view until it is done.
    pub(super) in_flight: InFlightBatch,
}

/// Whether a batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Written,
    GivenUp,
}

/// Writes `batch`, retrying with `backoff` until it lands or `give_up` is
/// cancelled, then clears the dirty marks it covers. Rows are never
/// dropped while the server runs: only the shutdown deadline stops this.
pub(super) async fn write_until_done(
    cache: &Cache,
    store: &dyn Store,
    (metrics, health): (&FlushMetrics, &WriteHealth),
    batch: Batch,
    mut backoff: Backoff,
    give_up: &CancellationToken,
) -> Outcome {
    let Batch {
        rows,
        queued_at,
        in_flight,
    } = batch;
    let _unfinished = metrics.write_started(queued_at);
    let mut attempt: u32 = 1;
    loop {
        let written = tokio::select! {
            () = give_up.cancelled() => return Outcome::GivenUp,
            written = store.write_batch(Arc::clone(&rows)) => written,
        };
        let error = match written {
            Ok(()) => {
                health.written();
                mark_written_in_turns(cache, &rows).await;
                // Landed, and marked: these rows can no longer arrive stale,
                // and a handoff's barrier sees every mark they cleared.
                drop(in_flight);
                metrics.record_batch(rows.len());
                return Outcome::Written;
            }
            Err(error) => error,
        };
        health.failed();
        let wait = backoff.next_wait();
        tracing::warn!(%error, rows = rows.len(), attempt, retry_in_ms = wait.as_millis() as u64, "flush write failed");
        metrics.retries.increment(1);
        tokio::select! {
            () = give_up.cancelled() => return Outcome::GivenUp,
            () = tokio::time::sleep(wait) => {}
        }
        attempt = attempt.saturating_add(1);
    }
}

/// Clears the dirty marks of `rows`, which landed, giving the runtime a turn
/// after every [`MARKS_PER_TURN`] rows. Dropped between two turns (the
/// runtime is going away), the rows left keep their marks and are written
/// again: a write of the same version changes nothing.
async fn mark_written_in_turns(cache: &Cache, rows: &[RowWrite]) {
    for (index, share) in rows.chunks(MARKS_PER_TURN).enumerate() {
        if index > 0 {
            tokio::task::yield_now().await;
        }
        cache.mark_written(share);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use metrics::Gauge;

    use super::super::in_flight::InFlight;
    use super::*;
    use crate::cache::test_support::{ack, partitioned_cache, take_rows, temp_store};
    use crate::metrics::Metrics;

    const USERS: u64 = 1_000;

    #[tokio::test(flavor = "current_thread")]
    async fn a_landed_batch_clears_its_marks_a_share_at_a_time() {
        let (_dir, store) = temp_store();
        let cache = Arc::new(partitioned_cache(1));
        for id in 1..=USERS {
            ack(&cache, &store, id, 9).await;
        }
        let rows = take_rows(&cache, true);
        assert_eq!(rows.len(), USERS as usize);
        let registry = Arc::new(InFlight::default());
        let round = registry.begin_round();
        let in_flight = registry.register(&round, &rows);
        drop(round);
        let batch = Batch {
            rows: rows.into(),
            queued_at: Instant::now(),
            in_flight,
        };

        // A task that watches the dirty count from before the write until
        // it first falls, and records what it fell to.
        let fell_to = Arc::new(AtomicUsize::new(usize::MAX));
        let watcher = tokio::spawn({
            let (cache, fell_to) = (Arc::clone(&cache), Arc::clone(&fell_to));
            async move {
                loop {
                    let dirty = cache.dirty_states();
                    if dirty < USERS as usize {
                        fell_to.store(dirty, Ordering::Relaxed);
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
        let metrics = FlushMetrics::register(&Metrics::new());
        let health = WriteHealth::new(Gauge::noop());
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(10));
        let outcome = write_until_done(
            &cache,
            &store,
            (&metrics, &health),
            batch,
            backoff,
            &CancellationToken::new(),
        )
        .await;
        watcher.await.unwrap();

        assert_eq!(outcome, Outcome::Written);
        assert_eq!(cache.dirty_states(), 0, "every mark cleared in the end");
        assert_eq!(
            fell_to.load(Ordering::Relaxed),
            USERS as usize - MARKS_PER_TURN,
            "the watcher ran after the first share"
        );
        assert_eq!(registry.oldest(), None, "the batch is no longer in flight");
    }
}
