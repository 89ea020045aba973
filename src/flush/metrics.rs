//! The write-behind's metrics: rows and batches written, retries, whether
//! the store refuses writes, the rows per batch, the flush lag (which
//! counts both the changes waiting in the cache's timer buckets and the
//! batch writes not yet done), and the failures of the version-lease keeper
//! and the tombstones of the purge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics::{AtomicHistogram, Counter, Gauge, Metrics, SIZE_BUCKETS, Unit};

/// The write-behind's handles.
pub struct FlushMetrics {
    rows_written: Counter,
    batches: Counter,
    pub(super) retries: Counter,
    /// 1 while the store refuses the write-behind's writes (the last batch
    /// write failed and none has landed since), else 0.
    pub(super) store_write_failing: Gauge,
    pub(super) lease_renewal_failures: Counter,
    pub(super) tombstones_purged: Counter,
    batch_rows: Arc<AtomicHistogram>,
    /// Batch writes started and not yet done: the next id, and each one's
    /// queueing time by id.
    unfinished_writes: Mutex<(u64, BTreeMap<u64, Instant>)>,
    lag: Gauge,
    write_age: Gauge,
}

/// A batch write in progress; it ends when this is dropped.
pub struct UnfinishedWrite<'a> {
    metrics: &'a FlushMetrics,
    id: u64,
}

impl Drop for UnfinishedWrite<'_> {
    fn drop(&mut self) {
        self.metrics.unfinished_writes.lock().1.remove(&self.id);
    }
}

impl FlushMetrics {
    /// Registers the write-behind's handles with `metrics`, once per
    /// server.
    pub fn register(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            rows_written: metrics.counter(
                "readstates_flush_rows_written_total",
                "Rows written to the store by the write-behind.",
            ),
            batches: metrics.counter(
                "readstates_flush_batches_total",
                "Batches written to the store by the write-behind.",
            ),
            retries: metrics.counter(
                "readstates_flush_retries_total",
                "Failed batch writes that were retried.",
            ),
            store_write_failing: metrics.gauge(
                "readstates_store_write_failing",
                None,
                "1 while the store refuses the write-behind's writes (the last batch write failed and none has landed since), else 0.",
            ),
            lease_renewal_failures: metrics.counter(
                "readstates_version_lease_renewal_failures_total",
                "Failed or timed-out renewals of the version lease in the store (retried with backoff).",
            ),
            tombstones_purged: metrics.counter(
                "readstates_tombstones_purged_total",
                "Deletion tombstones purged from the store.",
            ),
            batch_rows: metrics.histogram(
                "readstates_flush_batch_rows",
                "Rows per write-behind batch.",
                SIZE_BUCKETS,
            ),
            unfinished_writes: Mutex::new((0, BTreeMap::new())),
            lag: metrics.gauge(
                "readstates_flush_lag_seconds",
                Some(Unit::Seconds),
                "Age of the oldest change waiting in a flush timer bucket, or of the oldest batch write not yet done.",
            ),
            write_age: metrics.gauge(
                "readstates_flush_write_age_seconds",
                Some(Unit::Seconds),
                "Age of the oldest batch write not yet done (0 when none is): the store's part of the flush lag.",
            ),
        })
    }

    /// Notes a batch write, queued at `queued_at`, as started; it counts
    /// in the flush lag until the returned guard is dropped.
    pub fn write_started(&self, queued_at: Instant) -> UnfinishedWrite<'_> {
        let mut writes = self.unfinished_writes.lock();
        let id = writes.0;
        writes.0 += 1;
        writes.1.insert(id, queued_at);
        UnfinishedWrite { metrics: self, id }
    }

    /// Counts a batch of `rows` rows written.
    pub fn record_batch(&self, rows: usize) {
        self.batch_rows.record_value(rows as u64);
        self.batches.increment(1);
        self.rows_written.increment(rows as u64);
    }

    /// Sets the lag gauges at a scrape, from the age of the oldest change
    /// waiting in the cache's timer buckets.
    pub fn collect(&self, bucket_lag: Duration) {
        let oldest_write = self.unfinished_writes.lock().1.values().min().copied();
        let write_lag = oldest_write.map_or(Duration::ZERO, |queued_at| queued_at.elapsed());
        self.lag.set(bucket_lag.max(write_lag).as_secs_f64());
        self.write_age.set(write_lag.as_secs_f64());
    }
}
