//! The write-behind's metrics: rows and batches written, retries, whether
//! the store refuses writes, the rows per batch, and the flush lag, which
//! counts both the changes waiting in the cache's timer buckets and the
//! batch writes not yet done.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use metrics::{Counter, Gauge, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{AtomicHistogram, Metrics, SIZE_BUCKETS, register_counter, register_gauge};

const FLUSH_BATCH_ROWS: &str = "readstates_flush_batch_rows";

/// The handles the write-behind updates itself (public on
/// [`Metrics`]).
pub(super) struct FlushCounters {
    pub(super) rows_written: Counter,
    pub(super) batches: Counter,
    pub(super) retries: Counter,
    pub(super) store_write_failing: Gauge,
}

impl FlushCounters {
    /// Registers the counters and the gauge with `recorder`.
    pub(super) fn register(recorder: &PrometheusRecorder) -> Self {
        Self {
            rows_written: register_counter(
                recorder,
                "readstates_flush_rows_written_total",
                None,
                "Rows written to the store by the write-behind.",
            ),
            batches: register_counter(
                recorder,
                "readstates_flush_batches_total",
                None,
                "Batches written to the store by the write-behind.",
            ),
            retries: register_counter(
                recorder,
                "readstates_flush_retries_total",
                None,
                "Failed batch writes that were retried.",
            ),
            store_write_failing: register_gauge(
                recorder,
                "readstates_store_write_failing",
                None,
                "1 while the store refuses the write-behind's writes (the last batch write failed and none has landed since), else 0.",
            ),
        }
    }
}

/// The batch sizes, the batch writes not yet done, and the lag gauges
/// computed from them at each scrape.
pub(super) struct FlushProgress {
    batch_rows: AtomicHistogram,
    /// The next id, and the queue times of batch writes not yet done
    /// (retries included), by id. A lock, not atomics: it is taken once
    /// per batch write and per scrape, never per request.
    unfinished_writes: Mutex<(u64, BTreeMap<u64, Instant>)>,
    lag: Gauge,
    write_age: Gauge,
}

/// Marks a batch write as unfinished until dropped.
pub struct UnfinishedWrite<'a> {
    progress: &'a FlushProgress,
    id: u64,
}

impl Drop for UnfinishedWrite<'_> {
    fn drop(&mut self) {
        self.progress.unfinished_writes.lock().1.remove(&self.id);
    }
}

impl FlushProgress {
    /// Registers the lag gauges with `recorder`.
    pub(super) fn register(recorder: &PrometheusRecorder) -> Self {
        Self {
            batch_rows: AtomicHistogram::new(SIZE_BUCKETS),
            unfinished_writes: Mutex::new((0, BTreeMap::new())),
            lag: register_gauge(
                recorder,
                "readstates_flush_lag_seconds",
                Some(Unit::Seconds),
                "Age of the oldest change waiting in a flush timer bucket, or of the oldest batch write not yet done.",
            ),
            write_age: register_gauge(
                recorder,
                "readstates_flush_write_age_seconds",
                Some(Unit::Seconds),
                "Age of the oldest batch write not yet done (0 when none is): the store's part of the flush lag.",
            ),
        }
    }

    /// Sets the lag gauges, given the age of the oldest change waiting in
    /// the cache's timer buckets.
    pub(super) fn collect(&self, bucket_lag: Duration) {
        let oldest_write = self.unfinished_writes.lock().1.values().min().copied();
        let write_lag = oldest_write.map_or(Duration::ZERO, |queued_at| queued_at.elapsed());
        self.lag.set(bucket_lag.max(write_lag).as_secs_f64());
        self.write_age.set(write_lag.as_secs_f64());
    }

    /// Appends the batch size histogram in the Prometheus text format.
    pub(super) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {FLUSH_BATCH_ROWS} Rows per write-behind batch.\n# TYPE {FLUSH_BATCH_ROWS} histogram"
        );
        self.batch_rows.render(FLUSH_BATCH_ROWS, "", out);
    }
}

impl Metrics {
    /// Marks the start of a batch write, queued since `queued_at`; the flush
    /// lag counts it from then until the returned guard is dropped.
    pub fn write_started(&self, queued_at: Instant) -> UnfinishedWrite<'_> {
        let progress = &self.flush_progress;
        let mut writes = progress.unfinished_writes.lock();
        let id = writes.0;
        writes.0 += 1;
        writes.1.insert(id, queued_at);
        UnfinishedWrite { progress, id }
    }

    /// Records one flushed batch.
    pub fn record_flush_batch(&self, rows: usize) {
        self.flush_progress.batch_rows.record_value(rows as u64);
        self.flush_batches.increment(1);
        self.flush_rows_written.increment(rows as u64);
    }
}
