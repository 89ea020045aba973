//! The cache's counters and sizes, summed over its partitions when
//! metrics are collected: the cache is the source of its metrics (see
//! `cache::metrics`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{self, UserEntry};
use super::segmented::SegmentedLru;
use super::{Cache, duration_millis};
use crate::clock::unix_micros;

/// The cache's counters and sizes at one moment (`Cache::stats`): what a
/// scrape sets its handles from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// `readstates_cache_hits_total`.
    pub hits: u64,
    /// `readstates_cache_misses_total`.
    pub misses: u64,
    /// `readstates_cache_evictions_total{dirty="false"}`.
    pub evictions_clean: u64,
    /// `readstates_cache_evictions_total{dirty="true"}`.
    pub evictions_dirty: u64,
    /// `readstates_state_changes_total`: state changes.
    pub changed_states: u64,
    /// `readstates_flush_coalesced_updates_total`: the changes of
    /// `changed_states` to states that were already dirty, coalesced into
    /// a write already pending.
    pub coalesced_updates: u64,
    /// `readstates_mentions_deferred_total`: mentions put in an inbox
    /// (ever).
    pub deferred_mentions: u64,
    /// `readstates_mentions_deferred_waiting`: deferred mentions waiting in
    /// an inbox now.
    pub waiting_mentions: usize,
    /// `readstates_cache_read_states`: capacity in use (states; an empty
    /// user counts as one).
    pub resident_states: usize,
    /// `readstates_cache_users`.
    pub resident_users: usize,
    /// `readstates_cache_protected_users`: cached users in the segmented
    /// LRU's protected segment.
    pub protected_users: usize,
    /// `readstates_cache_capacity_read_states`.
    pub capacity: usize,
    /// `readstates_cache_partition_read_states_min`.
    pub smallest_partition: usize,
    /// `readstates_cache_partition_read_states_max`.
    pub largest_partition: usize,
    /// `readstates_cache_estimated_bytes`.
    pub estimated_bytes: usize,
    /// `readstates_dirty_read_states`.
    pub dirty_states: usize,
    /// `readstates_flush_queue_users`: users waiting in timer buckets.
    pub scheduled_users: usize,
    /// `readstates_flush_eviction_queue_users`: evicted users waiting for
    /// their write.
    pub evicting_users: usize,
    /// Age of the oldest change waiting in a flush timer bucket: the
    /// cache's part of `readstates_flush_lag_seconds`.
    pub flush_lag: Duration,
    /// `readstates_version_lease_remaining_seconds`: time left on the
    /// version lease (the version clock lives in the cache).
    pub lease_left: Duration,
}

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

/// The memory a cached user's place in the LRU costs, its entry included
/// (not the entry's own heap).
const LRU_NODE_BYTES: usize = SegmentedLru::<UserEntry>::place_bytes();

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
            stats.scheduled_users += partition.waiting.len();
            stats.evicting_users += partition.evicting.len() + partition.released.len();
            if !partition.waiting.is_empty()
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
