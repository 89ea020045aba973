//! The cache's counters and sizes, summed over its partitions when
//! metrics are collected: the cache is the source of its metrics (see
//! `metrics::cache`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{self, UserEntry};
use super::{Cache, duration_millis};
use crate::clock::unix_micros;
use crate::ids::UserId;
use crate::metrics::{CacheFigures, CacheGauges};

/// A snapshot of the cache's counters and sizes: the figures its metrics
/// are set from.
pub use crate::metrics::CacheFigures as CacheStats;

/// Event counts of one partition, kept under its lock (no shared atomics
/// on the request path) and summed when metrics are collected.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PartitionStats {
    pub(super) hits: u64,
    pub(super) misses: u64,
    pub(super) evictions_clean: u64,
    pub(super) evictions_dirty: u64,
    pub(super) changed_states: u64,
    pub(super) newly_dirty: u64,
    pub(super) deferred_mentions: u64,
}

/// The memory an LRU node costs beside its value: key, two list pointers,
/// and the hash table slot pointing at it.
const LRU_NODE_BYTES: usize =
    std::mem::size_of::<UserId>() + std::mem::size_of::<UserEntry>() + 2 * 8 + 16;

impl Cache {
    /// Returns the cache's counters and sizes, locking each partition
    /// briefly in turn, and the version lease's time left.
    pub fn stats(&self) -> CacheStats {
        let now_tick = self.tick_at(Instant::now());
        let mut stats = CacheStats {
            dirty_states: self.dirty_states(),
            waiting_mentions: self.deferred_mentions(),
            capacity: self.capacity.load(Ordering::Relaxed),
            smallest_partition: usize::MAX,
            ..CacheStats::default()
        };
        let mut newly_dirty = 0;
        let mut oldest_due_tick = None::<u64>;
        let mut heap_bytes = 0;
        for partition in self.partitions.iter() {
            let partition = partition.lock();
            let counts = partition.stats;
            stats.hits += counts.hits;
            stats.misses += counts.misses;
            stats.evictions_clean += counts.evictions_clean;
            stats.evictions_dirty += counts.evictions_dirty;
            stats.changed_states += counts.changed_states;
            newly_dirty += counts.newly_dirty;
            stats.deferred_mentions += counts.deferred_mentions;
            stats.resident_states += partition.weight;
            stats.resident_users += partition.lru.len();
            stats.protected_users += partition.lru.protected_len();
            stats.smallest_partition = stats.smallest_partition.min(partition.weight);
            stats.largest_partition = stats.largest_partition.max(partition.weight);
            stats.scheduled_users += partition.scheduled;
            stats.evicting_users += partition.evicting.len() + partition.released.len();
            if partition.scheduled > 0
                && let Some((tick, _)) = partition.schedule.front()
            {
                oldest_due_tick = Some(oldest_due_tick.map_or(*tick, |oldest| oldest.min(*tick)));
            }
            // Estimated without walking the entries (a scrape must not hold
            // a partition for long); tracked mention ids are not included.
            heap_bytes += partition.lru.len() * LRU_NODE_BYTES
                + partition.weight * std::mem::size_of::<entry::Slot>()
                + partition.extras * std::mem::size_of::<entry::Extra>();
        }
        if stats.smallest_partition == usize::MAX {
            stats.smallest_partition = 0;
        }
        if let Some(due_tick) = oldest_due_tick {
            // A bucket is due one delay after its first change (to a tick).
            let tick_ms = duration_millis(self.flush_tick);
            let delay_ticks = self.flush_delay_ms.load(Ordering::Relaxed) / tick_ms.max(1);
            let dirty_since_tick = due_tick.saturating_sub(delay_ticks);
            stats.flush_lag =
                Duration::from_millis(now_tick.saturating_sub(dirty_since_tick) * tick_ms);
        }
        stats.estimated_bytes = heap_bytes;
        // A change that did not make a clean state dirty joined a write
        // already pending.
        stats.coalesced_updates = stats.changed_states.saturating_sub(newly_dirty);
        stats.lease_left = self.clock().lease_left_at(unix_micros());
        stats
    }
}

impl CacheGauges for Cache {
    fn cache_figures(&self) -> CacheFigures {
        self.stats()
    }
}
