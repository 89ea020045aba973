//! The cache's counters and sizes, summed over its partitions when
//! metrics are collected.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{self, UserEntry};
use super::{Cache, duration_millis};
use crate::ids::UserId;

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

/// A snapshot of the cache's counters and sizes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions_clean: u64,
    pub evictions_dirty: u64,
    /// State changes, and how many of them made a clean state dirty; the
    /// rest were coalesced into a write already pending.
    pub changed_states: u64,
    pub newly_dirty: u64,
    /// Mentions put in an inbox (ever), and those waiting there now.
    pub deferred_mentions: u64,
    pub waiting_mentions: usize,
    pub dirty_states: usize,
    /// Capacity in use (states; an empty user counts as one).
    pub resident_states: usize,
    pub resident_users: usize,
    /// Cached users in the segmented LRU's protected segment.
    pub protected_users: usize,
    pub capacity: usize,
    pub smallest_partition: usize,
    pub largest_partition: usize,
    /// Users waiting in timer buckets, and evicted users waiting for their write.
    pub scheduled_users: usize,
    pub evicting_users: usize,
    /// Age of the oldest timer bucket's first change.
    pub flush_lag: Duration,
    pub estimated_bytes: usize,
}

/// The memory an LRU node costs beside its value: key, two list pointers,
/// and the hash table slot pointing at it.
const LRU_NODE_BYTES: usize =
    std::mem::size_of::<UserId>() + std::mem::size_of::<UserEntry>() + 2 * 8 + 16;

impl Cache {
    /// Returns the cache's counters and sizes, locking each partition
    /// briefly in turn.
    pub fn stats(&self) -> CacheStats {
        let now_tick = self.tick_at(Instant::now());
        let mut stats = CacheStats {
            dirty_states: self.dirty_states(),
            waiting_mentions: self.deferred_mentions(),
            capacity: self.capacity.load(Ordering::Relaxed),
            smallest_partition: usize::MAX,
            ..CacheStats::default()
        };
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
            stats.newly_dirty += counts.newly_dirty;
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
        stats
    }
}
