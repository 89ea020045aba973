//! What a `/metrics` scrape reads of the engine: the cache's counters and
//! sizes, summed over its partitions once, which also give the write-behind
//! its flush lag.

use std::sync::Arc;

use crate::cache::{Cache, CacheMetrics};
use crate::flush::FlushMetrics;
use crate::metrics::{Collect, Metrics};

/// The engine's scrape source.
struct EngineGauges {
    cache: Arc<Cache>,
    cache_metrics: CacheMetrics,
    flush: Arc<FlushMetrics>,
}

impl Collect for EngineGauges {
    fn collect(&self) {
        let stats = self.cache.stats();
        self.cache_metrics.set(&stats);
        self.flush.collect(stats.flush_lag);
    }
}

/// Registers the cache's handles with `metrics`, set with the write-behind's
/// lag from `cache` at each scrape.
pub(super) fn register(metrics: &Metrics, cache: &Arc<Cache>, flush: &Arc<FlushMetrics>) {
    metrics.register_source(Arc::new(EngineGauges {
        cache: Arc::clone(cache),
        cache_metrics: CacheMetrics::register(metrics),
        flush: Arc::clone(flush),
    }));
}
