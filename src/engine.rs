//! The engine: the store wrapped for metrics (and any injected latency),
//! the version lease recorded in it, the cache and its flusher, and the
//! changes a shutdown spilled, written before anything else. The gRPC
//! server builds it, and so does anything that drives the service without
//! the network (the fuzz target), so both run the same wiring.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context;

use crate::cache::{Cache, CacheSettings};
use crate::clock::unix_micros;
use crate::config::Config;
use crate::flush::{FlushSettings, Flusher, SpillDir, replay_spills};
use crate::metrics::Metrics;
use crate::store::{DelayedStore, MeteredStore, Store};

/// The parts of a running service below its API.
pub struct Engine {
    /// The store, metered.
    pub store: Arc<dyn Store>,
    pub cache: Arc<Cache>,
    /// Not yet running: spawn [`Flusher::run`].
    pub flusher: Flusher,
    /// Rows per flush batch, changeable on a running server.
    pub batch_size: Arc<AtomicUsize>,
    /// Where a shutdown keeps what the store did not take.
    pub spill: SpillDir,
}

impl Engine {
    /// Wraps `store`, records a new version lease in it, and builds the
    /// cache and the flusher from `config`.
    pub async fn open(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
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
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, Arc::clone(&metrics)));
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
            Arc::clone(&metrics),
            FlushSettings {
                tick: config.flush.tick(),
                concurrency: config.flush.concurrency,
                batch_size: Arc::clone(&batch_size),
                retry_initial: Duration::from_millis(config.flush.retry_initial_ms),
                retry_max: Duration::from_millis(config.flush.retry_max_ms),
                version_lease: config.flush.version_lease(),
                purge_interval: Duration::from_millis(config.flush.purge_interval_ms),
                tombstone_grace: Duration::from_millis(config.flush.tombstone_grace_ms),
            },
            lease,
        );

        Ok(Self {
            store,
            cache,
            flusher,
            batch_size,
            spill,
        })
    }
}
