//! Validation: the ranges and the agreements between settings that serde
//! cannot express, checked once after loading so that a bad file stops the
//! start (or a reload) with the setting it names.

use super::{Config, ConfigError, MAX_STREAMS_PER_CONNECTION, StoreBackend, auth};

impl Config {
    /// Checks the ranges serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(bool, &'static str, &'static str); 23] = [
            (
                self.store.injected_latency_median_ms > 0
                    && self.store.injected_latency_p99_ms < self.store.injected_latency_median_ms,
                "store.injected_latency_p99_ms",
                "must be at least store.injected_latency_median_ms",
            ),
            (
                self.store.reader_threads == 0 || self.store.reader_threads > 256,
                "store.reader_threads",
                "must be between 1 and 256",
            ),
            (
                self.store.cache_mib == 0 || self.store.cache_mib > 1 << 20,
                "store.cache_mib",
                "must be between 1 and 1048576",
            ),
            (
                self.server.drain_timeout_ms >= self.server.shutdown_timeout_ms,
                "server.drain_timeout_ms",
                "must be less than server.shutdown_timeout_ms",
            ),
            (
                self.cache.capacity == 0,
                "cache.capacity",
                "must be at least 1",
            ),
            (
                self.cache.partitions == 0 || self.cache.partitions > 65_536,
                "cache.partitions",
                "must be between 1 and 65536",
            ),
            (
                self.cache.max_tracked_mentions < 1_000,
                "cache.max_tracked_mentions",
                "must be at least 1000",
            ),
            (
                self.flush.delay_ms == 0,
                "flush.delay_ms",
                "must be at least 1",
            ),
            (
                self.flush.tick_ms == 0 || self.flush.tick_ms > self.flush.delay_ms,
                "flush.tick_ms",
                "must be between 1 and flush.delay_ms",
            ),
            (
                self.flush.concurrency == 0,
                "flush.concurrency",
                "must be at least 1",
            ),
            (
                self.flush.batch_size == 0,
                "flush.batch_size",
                "must be at least 1",
            ),
            (
                self.flush.max_dirty_states == 0,
                "flush.max_dirty_states",
                "must be at least 1",
            ),
            (
                self.flush.retry_initial_ms == 0
                    || self.flush.retry_max_ms < self.flush.retry_initial_ms,
                "flush.retry_max_ms",
                "must be at least flush.retry_initial_ms, which must be at least 1",
            ),
            (
                self.flush.version_lease_ms < 1_000,
                "flush.version_lease_ms",
                "must be at least 1000",
            ),
            (
                self.flush.purge_interval_ms == 0,
                "flush.purge_interval_ms",
                "must be at least 1",
            ),
            (
                self.flush.tombstone_grace_ms < self.flush.delay_ms,
                "flush.tombstone_grace_ms",
                "must be at least flush.delay_ms",
            ),
            (
                self.limits.max_mention_users == 0,
                "limits.max_mention_users",
                "must be at least 1",
            ),
            (
                self.limits.max_bulk_acks == 0,
                "limits.max_bulk_acks",
                "must be at least 1",
            ),
            (
                self.limits.max_in_flight_calls == 0,
                "limits.max_in_flight_calls",
                "must be at least 1",
            ),
            (
                self.limits.max_request_bytes < 1024,
                "limits.max_request_bytes",
                "must be at least 1024",
            ),
            (
                self.limits.max_delete_channels == 0,
                "limits.max_delete_channels",
                "must be at least 1",
            ),
            (
                self.server.max_concurrent_requests_per_connection == 0,
                "server.max_concurrent_requests_per_connection",
                "must be at least 1",
            ),
            (
                self.server.max_concurrent_requests_per_connection > MAX_STREAMS_PER_CONNECTION,
                "server.max_concurrent_requests_per_connection",
                "must be at most 2048: HTTP/2 closes a connection whose unread request frames \
                 exceed its flood budget, failing every call on it",
            ),
        ];
        match checks.into_iter().find(|(failed, _, _)| *failed) {
            Some((_, field, reason)) => Err(ConfigError::Invalid { field, reason }),
            None => {
                self.validate_connections()?;
                self.scylla.validate()?;
                self.cluster
                    .validate(self.store.backend == StoreBackend::Scylla)?;
                self.cluster.validate_forwarding(&self.tls)?;
                auth::validate(&self.tls, &self.auth)
            }
        }
    }

    /// Checks the connection settings of `[server]` and `[metrics]`.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        let (server, metrics) = (&self.server, &self.metrics);
        let checks: [(bool, &'static str, &'static str); 7] = [
            (
                server.max_connections == 0,
                "server.max_connections",
                "must be at least 1 (and below the open-files limit, ulimit -n)",
            ),
            (
                server.first_request_timeout_ms < 100,
                "server.first_request_timeout_ms",
                "must be at least 100",
            ),
            (
                server.idle_timeout_ms < 1_000,
                "server.idle_timeout_ms",
                "must be at least 1000",
            ),
            (
                server.keepalive_interval_ms != 0 && server.keepalive_interval_ms < 1_000,
                "server.keepalive_interval_ms",
                "must be 0 (no pings) or at least 1000",
            ),
            (
                server.keepalive_timeout_ms < 100,
                "server.keepalive_timeout_ms",
                "must be at least 100",
            ),
            (
                metrics.max_connections == 0,
                "metrics.max_connections",
                "must be at least 1",
            ),
            (
                metrics.header_read_timeout_ms < 100,
                "metrics.header_read_timeout_ms",
                "must be at least 100",
            ),
        ];
        match checks.into_iter().find(|(failed, _, _)| *failed) {
            Some((_, field, reason)) => Err(ConfigError::Invalid { field, reason }),
            None => Ok(()),
        }
    }
}
