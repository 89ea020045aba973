//! The cache as the source of its metrics: [`CacheStats`] and the version
//! lease's time left, mapped to the figures that a `/metrics` scrape reads
//! (see `metrics::cache`).

use crate::clock::unix_micros;
use crate::metrics::{CacheFigures, CacheGauges};

use super::{Cache, CacheStats};

impl CacheGauges for Cache {
    fn cache_figures(&self) -> CacheFigures {
        let CacheStats {
            hits,
            misses,
            evictions_clean,
            evictions_dirty,
            changed_states,
            newly_dirty,
            deferred_mentions,
            waiting_mentions,
            dirty_states,
            resident_states,
            resident_users,
            protected_users,
            capacity,
            smallest_partition,
            largest_partition,
            scheduled_users,
            evicting_users,
            flush_lag,
            estimated_bytes,
        } = self.stats();
        CacheFigures {
            hits,
            misses,
            evictions_clean,
            evictions_dirty,
            changed_states,
            // A change that did not make a clean state dirty joined a
            // write already pending.
            coalesced_updates: changed_states.saturating_sub(newly_dirty),
            deferred_mentions,
            waiting_mentions,
            resident_states,
            resident_users,
            protected_users,
            capacity,
            smallest_partition,
            largest_partition,
            estimated_bytes,
            dirty_states,
            scheduled_users,
            evicting_users,
            flush_lag,
            lease_left: self.clock().lease_left_at(unix_micros()),
        }
    }
}
