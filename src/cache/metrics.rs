//! The cache's counters and gauges, set from its [`CacheStats`] when
//! `/metrics` is scraped.
//!
//! The cache counts under the partition locks its requests hold anyway, so
//! nothing is recorded on the request path; a scrape reads the figures
//! (see the engine's scrape source) and sets these handles from them.

use super::CacheStats;
use crate::metrics::{Counter, Gauge, Metrics, Unit};

/// The cache's handles.
pub struct CacheMetrics {
    hits: Counter,
    misses: Counter,
    evictions_clean: Counter,
    evictions_dirty: Counter,
    changed_states: Counter,
    coalesced_updates: Counter,
    deferred_mentions: Counter,
    waiting_mentions: Gauge,
    resident_states: Gauge,
    resident_users: Gauge,
    protected_users: Gauge,
    capacity: Gauge,
    smallest_partition: Gauge,
    largest_partition: Gauge,
    estimated_bytes: Gauge,
    dirty_states: Gauge,
    scheduled_users: Gauge,
    evicting_users: Gauge,
    lease_remaining: Gauge,
}

impl CacheMetrics {
    /// Registers the counters and gauges with `metrics`, once per server.
    pub fn register(metrics: &Metrics) -> Self {
        let counter = |name, help| metrics.counter(name, help);
        let gauge = |name, help| metrics.gauge(name, None, help);
        let [evictions_clean, evictions_dirty] = metrics.counters(
            "readstates_cache_evictions_total",
            "dirty",
            "Users evicted from the cache; dirty=\"true\" ones were written on eviction.",
            ["false", "true"],
        );
        Self {
            hits: counter(
                "readstates_cache_hits_total",
                "Requests that found their user cached.",
            ),
            misses: counter(
                "readstates_cache_misses_total",
                "Requests that had to load their user from the store.",
            ),
            evictions_clean,
            evictions_dirty,
            changed_states: counter("readstates_state_changes_total", "Read-state changes."),
            coalesced_updates: counter(
                "readstates_flush_coalesced_updates_total",
                "Changes to states already waiting for a write: coalesced into that write.",
            ),
            deferred_mentions: counter(
                "readstates_mentions_deferred_total",
                "Mentions of users not in memory, kept for the users' next load (AddMentions with omit_read_states).",
            ),
            waiting_mentions: gauge(
                "readstates_mentions_deferred_waiting",
                "Deferred mentions not yet merged into their users' states.",
            ),
            resident_states: gauge(
                "readstates_cache_read_states",
                "Cached read states (a cached user without states counts as one).",
            ),
            resident_users: gauge("readstates_cache_users", "Cached users."),
            protected_users: gauge(
                "readstates_cache_protected_users",
                "Cached users in the LRU's protected segment (used again since their load).",
            ),
            capacity: gauge(
                "readstates_cache_capacity_read_states",
                "Cache capacity, in read states.",
            ),
            smallest_partition: gauge(
                "readstates_cache_partition_read_states_min",
                "Read states in the emptiest cache partition.",
            ),
            largest_partition: gauge(
                "readstates_cache_partition_read_states_max",
                "Read states in the fullest cache partition.",
            ),
            estimated_bytes: metrics.gauge(
                "readstates_cache_estimated_bytes",
                Some(Unit::Bytes),
                "Estimated heap memory of the cached read states.",
            ),
            dirty_states: gauge(
                "readstates_dirty_read_states",
                "Read states changed but not yet written to the store.",
            ),
            scheduled_users: gauge(
                "readstates_flush_queue_users",
                "Users waiting in flush timer buckets.",
            ),
            evicting_users: gauge(
                "readstates_flush_eviction_queue_users",
                "Evicted dirty users waiting for (or in) their write.",
            ),
            lease_remaining: metrics.gauge(
                "readstates_version_lease_remaining_seconds",
                Some(Unit::Seconds),
                "Time left on the version lease recorded in the store; at 0, writes get UNAVAILABLE until it is renewed.",
            ),
        }
    }

    /// Sets every handle from `figures`.
    pub fn set(&self, figures: &CacheStats) {
        // Counters are set, not incremented: the cache keeps the totals.
        self.hits.absolute(figures.hits);
        self.misses.absolute(figures.misses);
        self.evictions_clean.absolute(figures.evictions_clean);
        self.evictions_dirty.absolute(figures.evictions_dirty);
        self.changed_states.absolute(figures.changed_states);
        self.coalesced_updates.absolute(figures.coalesced_updates);
        self.deferred_mentions.absolute(figures.deferred_mentions);
        self.waiting_mentions.set(figures.waiting_mentions as f64);
        self.resident_states.set(figures.resident_states as f64);
        self.resident_users.set(figures.resident_users as f64);
        self.protected_users.set(figures.protected_users as f64);
        self.capacity.set(figures.capacity as f64);
        self.smallest_partition
            .set(figures.smallest_partition as f64);
        self.largest_partition.set(figures.largest_partition as f64);
        self.estimated_bytes.set(figures.estimated_bytes as f64);
        self.dirty_states.set(figures.dirty_states as f64);
        self.scheduled_users.set(figures.scheduled_users as f64);
        self.evicting_users.set(figures.evicting_users as f64);
        self.lease_remaining.set(figures.lease_left.as_secs_f64());
    }
}
