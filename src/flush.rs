//! Write-behind: moves dirty states from the cache to the store.
//!
//! One coordinator wakes on every flush tick (and when a dirty user is
//! evicted), takes the due users from the cache's timer buckets plus the
//! evicted users, packs their dirty rows into batches, and writes them with
//! at most `concurrency` batches in flight. A failed batch is retried with
//! exponential backoff: rows are never dropped, and the cache refuses new
//! writes once its dirty backlog is full. After a write, the cache clears
//! only the dirty marks of states that did not change meanwhile.
//!
//! The coordinator also keeps the version lease in the store ahead of the
//! clock (see `clock`).
//!
//! On shutdown it waits for the batches in flight, writes every dirty state
//! that is left, and syncs the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{Cache, FlushJob};
use crate::clock::{VERSION_LEASE_MICROS, unix_micros};
use crate::metrics::Metrics;
use crate::store::{RowWrite, Store, StoreError};

/// How long the flusher waits after an eviction for more before writing.
const EVICTION_GATHER: Duration = Duration::from_millis(5);

/// Flusher settings.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    pub tick: Duration,
    pub concurrency: usize,
    /// Rows per batch; shared so it can change on a running server.
    pub batch_size: Arc<AtomicUsize>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// The write-behind coordinator.
pub struct Flusher {
    cache: Arc<Cache>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: FlushSettings,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    /// The version lease recorded in the store.
    lease: u64,
}

impl Flusher {
    /// Creates a flusher; `lease` is the version lease already recorded.
    pub fn new(
        cache: Arc<Cache>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        settings: FlushSettings,
        lease: u64,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Self {
            cache,
            store,
            metrics,
            settings,
            permits,
            tasks: TaskTracker::new(),
            lease,
        }
    }

    /// Flushes on the timer until `shutdown` is cancelled, then writes every
    /// dirty state. Returns an error only if the final sync failed.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let mut ticks = tokio::time::interval(self.settings.tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
                _ = self.cache.evictions() => {
                    // Evictions come one user at a time; gathering the next
                    // few milliseconds of them fills batches instead of
                    // writing a handful of rows per store call.
                    tokio::time::sleep(EVICTION_GATHER).await;
                }
            }
            self.flush_round(false).await;
            self.renew_lease().await;
        }
        self.drain().await
    }

    /// Writes everything dirty and waits for it; used at shutdown.
    async fn drain(&mut self) -> Result<(), StoreError> {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
        self.flush_round(true).await;
        self.tasks.close();
        self.tasks.wait().await;
        self.store.sync().await?;
        let dirty = self.cache.dirty_states();
        if dirty > 0 {
            tracing::error!(dirty, "dirty read states left after the final flush");
        }
        Ok(())
    }

    /// Takes the due jobs (all with `all`) and starts their batches. One
    /// partition is snapshotted at a time, yielding between them: on a
    /// runtime with few workers, a large due round must not hold a worker
    /// away from requests for the whole snapshot.
    async fn flush_round(&self, all: bool) {
        let mut jobs = Vec::new();
        let mut batch: Vec<RowWrite> = Vec::new();
        for partition in 0..self.cache.partition_count() {
            self.cache
                .take_partition_flush_jobs(partition, all, &mut jobs);
            for FlushJob { rows } in jobs.drain(..) {
                batch.extend(rows);
                if batch.len() >= self.settings.batch_size.load(Ordering::Relaxed) {
                    self.start_batch(std::mem::take(&mut batch)).await;
                }
            }
            tokio::task::yield_now().await;
        }
        if !batch.is_empty() {
            self.start_batch(batch).await;
        }
    }

    /// Starts writing one batch once a concurrency permit is free.
    async fn start_batch(&self, rows: Vec<RowWrite>) {
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let rows: Arc<[RowWrite]> = rows.into();
        let cache = Arc::clone(&self.cache);
        let store = Arc::clone(&self.store);
        let metrics = Arc::clone(&self.metrics);
        let settings = self.settings.clone();
        self.tasks.spawn(async move {
            write_until_done(&cache, store.as_ref(), &metrics, rows, &settings).await;
            drop(permit);
        });
    }

    /// Keeps the recorded version lease ahead of the clock.
    async fn renew_lease(&mut self) {
        let now = unix_micros();
        if now.saturating_add(VERSION_LEASE_MICROS / 2) < self.lease {
            return;
        }
        let lease = now.saturating_add(VERSION_LEASE_MICROS);
        match self.store.record_version_floor(lease).await {
            Ok(()) => self.lease = lease,
            Err(error) => tracing::warn!(%error, "renewing the version lease failed"),
        }
    }
}

/// Writes a batch, retrying with backoff until it lands, then clears the
/// dirty marks it covers.
async fn write_until_done(
    cache: &Cache,
    store: &dyn Store,
    metrics: &Metrics,
    rows: Arc<[RowWrite]>,
    settings: &FlushSettings,
) {
    let _unfinished = metrics.write_started();
    let mut backoff = settings.retry_initial;
    let mut attempt: u32 = 1;
    loop {
        match store.write_batch(Arc::clone(&rows)).await {
            Ok(()) => {
                cache.mark_written(&rows);
                metrics.record_flush_batch(rows.len());
                return;
            }
            Err(error) => {
                tracing::warn!(%error, rows = rows.len(), attempt, retry_in_ms = backoff.as_millis() as u64, "flush write failed");
                metrics.flush_retries.increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.retry_max);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}
