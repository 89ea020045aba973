//! The engine: everything below the API. It owns the store (wrapped for
//! metrics and any injected latency), the version lease recorded in it, the
//! cache, and the write-behind with its background tasks, and offers the
//! few operations the API and the cluster need: change or read a user,
//! fan a change out to many users, defer mentions, and write out and evict
//! the users of slots moving away. The API holds the engine and nothing of
//! the store. See ARCHITECTURE.md, "The engine".
//!
//! `background` starts and stops the engine's tasks; `fan_out` is how one
//! change reaches many users; `metered` wraps the store for metrics;
//! `gauges` is what a scrape reads of the cache and the write-behind.

mod background;
mod clean_stop;
mod fan_out;
mod gauges;
mod metered;

pub use background::Background;
pub use metered::MeteredStore;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::cache::{
    Cache, CacheError, CacheSettings, ChangeHook, DeltaLimits, Evicted, ServingGate, UserTxn,
};
use crate::clock::unix_micros;
use crate::config::Config;
use crate::flush::{
    FlushBarrier, FlushMetrics, FlushSettings, Flusher, SpillDir, WriteOutError, WriteOutSettings,
    replay_spills,
};
use crate::ids::UserId;
use crate::metrics::Metrics;
use crate::store::{DelayedStore, LoadPriority, Store, StoreError};

/// The parts of a running service below its API.
pub struct Engine {
    cache: Arc<Cache>,
    /// The store, metered.
    store: Arc<dyn Store>,
    /// Where a shutdown keeps what the store did not take.
    spill: SpillDir,
    /// Rows per flush batch, changeable on a running server.
    batch_size: Arc<AtomicUsize>,
    write_out: WriteOutSettings,
    flushes: FlushBarrier,
    write_failing: watch::Receiver<bool>,
    /// The write-behind until [`Engine::start`] runs it.
    flusher: Mutex<Option<Flusher>>,
    /// Versions up to this one may have been handed out by an earlier
    /// holder of a user served here: the previous run of this instance
    /// (the version floor it recorded), or a slot's previous owner (raised
    /// to the store's version floor when a slot is taken over). See
    /// [`DeltaLimits`].
    inherited_up_to: AtomicU64,
    /// `flush.version_lease_ms`, in microseconds.
    lease_micros: u64,
}

impl Engine {
    /// Wraps `store`, records a new version lease in it, builds the cache
    /// and the write-behind from `config`, and writes what a shutdown
    /// spilled before anything else. Nothing runs until [`Engine::start`].
    pub async fn open(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: &Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        let store: Arc<dyn Store> = match config.store.injected_latency() {
            Some((median, p99)) => {
                tracing::warn!(
                    median_ms = median.as_millis() as u64,
                    p99_ms = p99.as_millis() as u64,
                    "store latency injected (a benchmark setting)"
                );
                Arc::new(DelayedStore::new(store, median, p99))
            }
            None => store,
        };
        // Metered outermost: the store metrics include any injected latency.
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, metrics));
        let floor = store
            .load_version_floor()
            .await
            .context("reading the version floor from the store")?;
        let lease_micros =
            u64::try_from(config.flush.version_lease().as_micros()).unwrap_or(u64::MAX);
        let lease = floor.max(unix_micros()).saturating_add(lease_micros);
        store
            .record_version_floor(lease)
            .await
            .context("recording the version lease in the store")?;

        let cache = Arc::new(Cache::new(
            &CacheSettings {
                capacity: config.cache.capacity,
                partitions: config.cache.partitions,
                max_tracked_mentions: config.cache.max_tracked_mentions,
                max_dirty_states: config.flush.max_dirty_states,
                flush_delay: config.flush.delay(),
                flush_tick: config.flush.tick(),
            },
            floor,
        ));
        cache.clock().set_lease(lease);
        // The cache's figures, and with them the flush lag, are read when
        // `/metrics` is scraped.
        let flush_metrics = FlushMetrics::register(metrics);
        gauges::register(metrics, &cache, &flush_metrics);
        // What a shutdown could not write goes to the store before any call
        // is served (see `flush::last_resort`).
        let spill = SpillDir::new(config.store.spill_dir());
        let (rows, mentions) =
            replay_spills(&spill, &cache, store.as_ref(), config.flush.batch_size)
                .await
                .with_context(|| format!("replaying the spill in {}", spill.path().display()))?;
        if rows + mentions > 0 {
            tracing::warn!(
                rows,
                mentions,
                "wrote the changes a shutdown spilled because the store refused them"
            );
        }
        let batch_size = Arc::new(AtomicUsize::new(config.flush.batch_size));
        let flusher = Flusher::new(
            Arc::clone(&cache),
            Arc::clone(&store),
            flush_metrics,
            FlushSettings {
                tick: config.flush.tick(),
                concurrency: config.flush.concurrency,
                batch_size: Arc::clone(&batch_size),
                retry_initial: Duration::from_millis(config.flush.retry_initial_ms),
                retry_max: Duration::from_millis(config.flush.retry_max_ms),
                version_lease: config.flush.version_lease(),
                purge_interval: Duration::from_millis(config.flush.purge_interval_ms),
                tombstone_grace: Duration::from_millis(config.flush.tombstone_grace_ms),
                sweep: config.flush.sweeps(config.store.backend),
            },
            lease,
        );
        // A clean stop's mark, read and removed before any version is
        // handed out (see `clean_stop`).
        let inherited_up_to = clean_stop::inherited_at_start(spill.path(), floor).await;
        Ok(Arc::new(Self {
            inherited_up_to: AtomicU64::new(inherited_up_to),
            lease_micros,
            flushes: flusher.barrier(),
            write_failing: flusher.write_failing(),
            flusher: Mutex::new(Some(flusher)),
            cache,
            store,
            spill,
            batch_size,
            write_out: WriteOutSettings {
                batch_rows: config.flush.batch_size,
                concurrency: config.flush.concurrency,
            },
        }))
    }

    /// Returns the cache, for inspection (metrics, tests).
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Returns the store's backend name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Sets the rows per flush batch on a running server.
    pub fn set_batch_size(&self, rows: usize) {
        self.batch_size.store(rows, Ordering::Relaxed);
    }

    /// Returns a receiver of whether the store refuses the write-behind's
    /// writes (true while it does).
    pub fn write_failing(&self) -> watch::Receiver<bool> {
        self.write_failing.clone()
    }

    /// Makes `hook` hear every change applied from now on (see
    /// [`ChangeHook`]); false if one was set before.
    pub fn set_change_hook(&self, hook: Arc<dyn ChangeHook>) -> bool {
        self.cache.set_change_hook(hook)
    }

    /// Runs `change` on the user's states, loading them first if needed.
    pub async fn write<R>(
        &self,
        user_id: UserId,
        change: impl FnOnce(&mut UserTxn<'_>) -> R,
    ) -> Result<R, CacheError> {
        self.cache.write(self.store.as_ref(), user_id, change).await
    }

    /// Returns what decides whether a delta is complete (ARCHITECTURE.md
    /// §1.3): the store's deletion horizon, and the versions an earlier
    /// holder may have handed out.
    pub fn delta_limits(&self) -> DeltaLimits {
        DeltaLimits {
            horizon: self.store.deletion_horizon(),
            inherited_up_to: self.inherited_up_to.load(Ordering::Relaxed),
        }
    }

    /// Prepares to serve users that another instance served until now (a
    /// slot taken over), before any of them is served here: the versions
    /// that instance may have handed out, and maybe lost in a crash, run up
    /// to the version floor recorded in the store (its lease, which may be
    /// ahead of the clock). They become suspect, and this instance's own
    /// versions start above them, under a lease recorded first.
    pub async fn take_over(&self) -> Result<(), StoreError> {
        let bound = self.store.load_version_floor().await?.max(unix_micros());
        let lease = bound.saturating_add(self.lease_micros);
        self.store.record_version_floor(lease).await?;
        let clock = self.cache.clock();
        clock.set_lease(clock.lease().max(lease));
        clock.raise_floor(bound);
        self.inherited_up_to.fetch_max(bound, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `read` on the user's states, loading them first if needed.
    pub async fn read<R>(
        &self,
        user_id: UserId,
        read: impl FnOnce(&mut UserTxn<'_>) -> R,
    ) -> Result<R, CacheError> {
        self.cache.read(self.store.as_ref(), user_id, read).await
    }

    /// Makes `gate` decide which users are served (with a cluster); false
    /// if one was set before.
    pub fn set_serving_gate(&self, gate: Arc<dyn ServingGate>) -> bool {
        self.cache.set_serving_gate(gate)
    }

    /// Writes out and evicts the selected users, whom the serving gate
    /// refuses now (a slot's handoff; see `flush::handoff`); returns how
    /// many users it wrote.
    pub async fn write_out(
        &self,
        selects: &(dyn Fn(UserId) -> bool + Sync),
    ) -> Result<usize, WriteOutError> {
        let written = crate::flush::write_out(
            &self.cache,
            self.store.as_ref(),
            &self.flushes,
            self.write_out,
            selects,
        )
        .await;
        // Evicted, even if not all written: they are served elsewhere next.
        self.cache.tell_released(selects);
        written
    }

    /// Evicts the selected users (a slot lost without a handoff); their
    /// dirty states stay for the write-behind.
    pub async fn evict(&self, selects: &(dyn Fn(UserId) -> bool + Sync)) -> Evicted {
        let evicted = crate::flush::evict(&self.cache, selects).await;
        self.cache.tell_released(selects);
        evicted
    }

    /// Gives the selected users evicted but not written to the
    /// write-behind; returns how many.
    pub fn requeue_released(&self, selects: &dyn Fn(UserId) -> bool) -> usize {
        self.cache.requeue_released(selects)
    }

    /// Appends the users with changes outside the cache (evicted and not
    /// written, or with deferred mentions).
    pub fn unwritten_users(&self, out: &mut Vec<UserId>) {
        self.cache.unwritten_users(out);
    }

    /// Loads a user at background priority, for a fan-out.
    async fn write_in_background<R>(
        &self,
        user_id: UserId,
        change: impl FnOnce(&mut UserTxn<'_>) -> R,
    ) -> Result<R, CacheError> {
        self.cache
            .write_with_priority(
                self.store.as_ref(),
                user_id,
                LoadPriority::Background,
                change,
            )
            .await
    }
}
