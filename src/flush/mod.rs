//! Write-behind: moves dirty states from the cache to the store.
//!
//! One coordinator wakes on every flush tick, when a dirty user is evicted,
//! and when a batch write ends. It takes the due users from the cache's
//! timer buckets plus the evicted users, packs their dirty rows into
//! batches, and starts each batch on its own task once one of the
//! `concurrency` write permits is free. It never waits for a permit: due
//! batches wait in a short local queue, and while that queue is full, due
//! users simply stay in the cache (still dirty, still counted against the
//! dirty backlog, and coalescing further changes). So in an outage, when
//! every permit is held by a batch that keeps failing, the coordinator
//! still sees shutdown at once.
//!
//! A failed batch is retried with exponential backoff (see `writer`): rows
//! are never dropped, and the cache refuses new writes once its dirty
//! backlog is full. After a write, the cache clears only the dirty marks of
//! states that did not change meanwhile.
//!
//! A slot's handoff writes its users through here too (`handoff`), so the
//! write-behind is the one writer of dirty rows. At a shutdown the store
//! refuses, what is left is spilled for the next start (`last_resort`).
//!
//! Beside the coordinator run the version lease's keeper (`lease`), the
//! tombstone purge trigger (`purge`) and the loader of users with deferred
//! mentions (`deferred`), each on its own task, so neither a hung store
//! call nor a busy flush delays the others.
//!
//! On shutdown the flusher waits until every deferred mention is merged,
//! writes the batches queued and in flight, then every dirty state left,
//! and syncs the store. It keeps retrying until the
//! `give_up` token (the server's shutdown deadline) is cancelled; then it
//! stops and reports the dirty states it could not write.

mod backoff;
mod deferred;
mod handoff;
mod health;
mod in_flight;
mod last_resort;
mod lease;
mod metrics;
mod purge;
mod spill;
mod sweep;
mod writer;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{Cache, FlushJob};
use crate::store::{RowWrite, Store, StoreError};
use backoff::Backoff;
use deferred::DeferredLoader;
pub use handoff::{WriteOutError, WriteOutSettings, evict, write_out};
pub use health::WriteHealth;
pub use in_flight::FlushBarrier;
use in_flight::{InFlight, TakeRound};
pub use last_resort::{GivenUp, Kept, ReplayError, keep_unwritten, replay_spills};
use lease::LeaseKeeper;
pub use metrics::{FlushMetrics, UnfinishedWrite};
use purge::Purger;
pub use spill::{DeferredMention, SpillDir, SpillError, Unwritten};
use sweep::Sweep;
use writer::{Batch, Outcome, write_until_done};

/// How long the flusher waits after an eviction for more before writing.
const EVICTION_GATHER: Duration = Duration::from_millis(5);

/// Batches that wait for a permit, per permit. More would only copy rows
/// out of the cache early; fewer could leave a permit idle between writes.
const QUEUED_PER_PERMIT: usize = 1;

/// Flusher settings.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    pub tick: Duration,
    pub concurrency: usize,
    /// Rows per batch; shared so it can change on a running server.
    pub batch_size: Arc<AtomicUsize>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How far ahead of the clock the version lease runs.
    pub version_lease: Duration,
    pub purge_interval: Duration,
    pub tombstone_grace: Duration,
    /// Whether each round also writes the waiting users of the next key
    /// range (see `sweep`): for a store that keeps rows in key order.
    pub sweep: bool,
}

/// Why the final flush did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The shutdown deadline came first: the store kept failing or hung.
    #[error(
        "the final flush gave up at the shutdown deadline: {dirty} dirty read states were not written"
    )]
    GaveUp { dirty: usize },
    /// Everything was written, but making it durable failed.
    #[error("syncing the store after the final flush failed: {0}")]
    Sync(#[source] StoreError),
}

/// The write-behind coordinator.
pub struct Flusher {
    cache: Arc<Cache>,
    store: Arc<dyn Store>,
    metrics: Arc<FlushMetrics>,
    settings: FlushSettings,
    permits: Arc<Semaphore>,
    /// Woken by each batch write that ends (its permit is free again).
    batch_done: Arc<Notify>,
    writers: TaskTracker,
    /// Batches waiting for a permit, oldest first.
    queue: VecDeque<Batch>,
    in_flight: Arc<InFlight>,
    /// The take round in progress: its batches are waited for by a
    /// [`FlushBarrier`] made while it is open.
    round: Option<TakeRound>,
    /// The partition the next round starts at: a round cut short by a full
    /// queue resumes where it stopped, so every partition gets its turn.
    next_partition: usize,
    /// Whether the last round stopped at a full queue before the end.
    round_unfinished: bool,
    /// The sweep over the key space, if on.
    sweep: Option<Sweep>,
    /// The version lease already recorded in the store.
    lease: u64,
    health: Arc<WriteHealth>,
}

impl Flusher {
    /// Creates a flusher; `lease` is the version lease already recorded.
    pub fn new(
        cache: Arc<Cache>,
        store: Arc<dyn Store>,
        metrics: Arc<FlushMetrics>,
        settings: FlushSettings,
        lease: u64,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let health = Arc::new(WriteHealth::new(metrics.store_write_failing.clone()));
        let sweep = settings.sweep.then(Sweep::new);
        Self {
            cache,
            store,
            metrics,
            settings,
            permits,
            batch_done: Arc::new(Notify::new()),
            writers: TaskTracker::new(),
            queue: VecDeque::new(),
            in_flight: Arc::new(InFlight::default()),
            round: None,
            next_partition: 0,
            round_unfinished: false,
            sweep,
            lease,
            health,
        }
    }

    /// Returns a receiver of whether the store refuses the flusher's
    /// writes (true while it does).
    pub fn write_failing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.health.subscribe()
    }

    /// Returns a barrier that waits for the rows this flusher has taken
    /// from the cache so far (a slot's handoff waits for them).
    pub fn barrier(&self) -> FlushBarrier {
        self.in_flight.barrier()
    }

    /// Flushes until `shutdown` is cancelled, then writes every dirty state,
    /// retrying until `give_up` is cancelled.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        give_up: CancellationToken,
    ) -> Result<(), FlushError> {
        let helpers = TaskTracker::new();
        helpers.spawn(
            LeaseKeeper {
                store: Arc::clone(&self.store),
                cache: Arc::clone(&self.cache),
                metrics: Arc::clone(&self.metrics),
                length: self.settings.version_lease,
                backoff: self.backoff(),
                lease: self.lease,
                streak: None,
            }
            .run(shutdown.clone()),
        );
        helpers.spawn(
            Purger {
                store: Arc::clone(&self.store),
                cache: Arc::clone(&self.cache),
                metrics: Arc::clone(&self.metrics),
                in_flight: Arc::clone(&self.in_flight),
                interval: self.settings.purge_interval,
                grace: self.settings.tombstone_grace,
            }
            .run(shutdown.clone()),
        );
        helpers.spawn(
            DeferredLoader {
                cache: Arc::clone(&self.cache),
                store: Arc::clone(&self.store),
                backoff: self.backoff(),
            }
            .run(shutdown.clone(), give_up.clone()),
        );
        helpers.close();

        let mut ticks = tokio::time::interval(self.settings.tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let take_due = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => true,
                () = self.cache.evictions() => {
                    // Evictions come one user at a time; gathering the next
                    // few milliseconds of them fills batches instead of
                    // writing a handful of rows per store call.
                    tokio::time::sleep(EVICTION_GATHER).await;
                    true
                }
                () = self.batch_done.notified() => self.round_unfinished,
            };
            if take_due {
                self.take_due().await;
            }
            self.start_queued(&give_up);
        }
        helpers.wait().await;
        self.drain(&give_up).await
    }

    /// Writes everything dirty and waits for it; used at shutdown.
    async fn drain(&mut self, give_up: &CancellationToken) -> Result<(), FlushError> {
        // The batches queued and in flight first: what they cover is then
        // clean, and the final round takes only what is still dirty.
        let mut finished = self.write_out(give_up).await;
        if finished {
            finished = self.take_all(give_up).await && self.write_out(give_up).await;
        }
        self.writers.close();
        self.writers.wait().await;
        // Deferred mentions not merged by now (the store kept failing) are
        // changes not written too.
        let unwritten = || self.cache.dirty_states() + self.cache.deferred_mentions();
        if !finished || self.cache.deferred_mentions() > 0 {
            return Err(FlushError::GaveUp { dirty: unwritten() });
        }
        tokio::select! {
            () = give_up.cancelled() => {
                return Err(FlushError::GaveUp { dirty: unwritten() });
            }
            synced = self.store.sync() => synced.map_err(FlushError::Sync)?,
        }
        let dirty = self.cache.dirty_states();
        if dirty > 0 {
            tracing::error!(dirty, "dirty read states left after the final flush");
        }
        Ok(())
    }

    /// Takes the due jobs (and the sweep's, if on) into the queue, a
    /// partition at a time, until the queue is full. Yields between partitions: on a runtime with few
    /// workers, a large due round must not hold a worker away from requests
    /// for the whole snapshot.
    async fn take_due(&mut self) {
        let partitions = self.cache.partition_count();
        let mut jobs = Vec::new();
        let mut rows = Vec::new();
        self.round_unfinished = false;
        self.round = Some(self.in_flight.begin_round());
        for _ in 0..partitions {
            if self.queue.len() >= self.queue_limit() {
                self.round_unfinished = true;
                break;
            }
            let partition = self.next_partition;
            self.next_partition = (partition + 1) % partitions;
            self.cache
                .take_partition_flush_jobs(partition, false, &mut jobs);
            if let Some(sweep) = self.sweep.as_mut() {
                sweep.take(&self.cache, partition, &mut jobs);
            }
            self.pack(&mut jobs, &mut rows);
            tokio::task::yield_now().await;
        }
        if !rows.is_empty() {
            self.enqueue(rows);
        }
        self.round = None;
    }

    /// Takes every dirty state into batches, waiting for permits as the
    /// queue fills (only at shutdown: no lease or request waits on this).
    /// Returns false if `give_up` came first.
    async fn take_all(&mut self, give_up: &CancellationToken) -> bool {
        let mut jobs = Vec::new();
        let mut rows = Vec::new();
        self.round = Some(self.in_flight.begin_round());
        for partition in 0..self.cache.partition_count() {
            self.cache
                .take_partition_flush_jobs(partition, true, &mut jobs);
            self.pack(&mut jobs, &mut rows);
            while self.queue.len() > self.queue_limit() {
                self.start_queued(give_up);
                tokio::select! {
                    () = give_up.cancelled() => {
                        self.round = None;
                        return false;
                    }
                    () = self.batch_done.notified() => {}
                }
            }
            tokio::task::yield_now().await;
        }
        if !rows.is_empty() {
            self.enqueue(rows);
        }
        self.round = None;
        true
    }

    /// Starts the queued batches and waits until every batch is written.
    /// Returns false if `give_up` came first.
    async fn write_out(&mut self, give_up: &CancellationToken) -> bool {
        loop {
            self.start_queued(give_up);
            let idle = self.permits.available_permits() == self.settings.concurrency.max(1);
            if self.queue.is_empty() && idle {
                return true;
            }
            tokio::select! {
                () = give_up.cancelled() => return false,
                () = self.batch_done.notified() => {}
            }
        }
    }

    /// Moves the rows of `jobs` into `rows`, queueing each full batch.
    fn pack(&mut self, jobs: &mut Vec<FlushJob>, rows: &mut Vec<RowWrite>) {
        for FlushJob { rows: job_rows } in jobs.drain(..) {
            rows.extend(job_rows);
            if rows.len() >= self.settings.batch_size.load(Ordering::Relaxed) {
                self.enqueue(std::mem::take(rows));
            }
        }
    }

    fn enqueue(&mut self, rows: Vec<RowWrite>) {
        let in_flight = match &self.round {
            Some(round) => self.in_flight.register(round, &rows),
            None => self
                .in_flight
                .register(&self.in_flight.begin_round(), &rows),
        };
        self.queue.push_back(Batch {
            rows: rows.into(),
            queued_at: Instant::now(),
            in_flight,
        });
    }

    fn queue_limit(&self) -> usize {
        self.settings.concurrency.max(1) * QUEUED_PER_PERMIT
    }

    /// Starts queued batches while permits are free; never waits.
    fn start_queued(&mut self, give_up: &CancellationToken) {
        while !self.queue.is_empty() {
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                return;
            };
            let Some(batch) = self.queue.pop_front() else {
                return;
            };
            self.spawn_writer(batch, permit, give_up.clone());
        }
    }

    fn spawn_writer(&self, batch: Batch, permit: OwnedSemaphorePermit, give_up: CancellationToken) {
        let cache = Arc::clone(&self.cache);
        let store = Arc::clone(&self.store);
        let metrics = Arc::clone(&self.metrics);
        let batch_done = Arc::clone(&self.batch_done);
        let backoff = self.backoff();
        let health = Arc::clone(&self.health);
        self.writers.spawn(async move {
            let outcome = write_until_done(
                &cache,
                store.as_ref(),
                (&metrics, &health),
                batch,
                backoff,
                &give_up,
            )
            .await;
            debug_assert!(outcome == Outcome::Written || give_up.is_cancelled());
            drop(permit);
            batch_done.notify_one();
        });
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.settings.retry_initial, self.settings.retry_max)
    }
}
