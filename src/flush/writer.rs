//! One batch's write: retried with backoff until it lands (or the shutdown
//! deadline gives it up), then the dirty marks it covers are cleared.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::WriteHealth;
use super::backoff::Backoff;
use super::in_flight::InFlightBatch;
use super::metrics::FlushMetrics;
use crate::cache::Cache;
use crate::store::{RowWrite, Store};

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
                // Landed: these rows can no longer arrive stale.
                drop(in_flight);
                health.written();
                cache.mark_written(&rows);
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
