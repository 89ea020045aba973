//! Validation: the ranges and the agreements between settings that serde
//! cannot express, checked once after loading so that a bad file stops the
//! start (or a reload) with the setting it names.

use super::{
    Check, Config, ConfigError, MAX_STREAMS_PER_CONNECTION, StoreBackend, auth, first_failure,
};

impl Config {
    /// Checks the ranges serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [Check; 28] = [
            (
                self.store.injected_latency_median_ms > 0
                    && self.store.injected_latency_p99_ms < self.store.injected_latency_median_ms,
                "store.injected_latency_p99_ms",
                "must be at least store.injected_latency_median_ms",
            ),
            between!(self.store.reader_threads, 1, 256, "store.reader_threads"),
            between!(self.store.cache_mib, 1, 1048576, "store.cache_mib"),
            at_most!(self.store.repack_per_change, 64, "store.repack_per_change"),
            (
                self.server.drain_timeout_ms >= self.server.shutdown_timeout_ms,
                "server.drain_timeout_ms",
                "must be less than server.shutdown_timeout_ms",
            ),
            at_least!(self.cache.capacity, 1, "cache.capacity"),
            between!(self.cache.partitions, 1, 65536, "cache.partitions"),
            at_least!(
                self.cache.max_tracked_mentions,
                1000,
                "cache.max_tracked_mentions"
            ),
            at_least!(self.flush.delay_ms, 1, "flush.delay_ms"),
            (
                self.flush.tick_ms == 0 || self.flush.tick_ms > self.flush.delay_ms,
                "flush.tick_ms",
                "must be between 1 and flush.delay_ms",
            ),
            at_least!(self.flush.concurrency, 1, "flush.concurrency"),
            at_least!(self.flush.batch_size, 1, "flush.batch_size"),
            at_least!(self.flush.max_dirty_states, 1, "flush.max_dirty_states"),
            (
                self.flush.retry_initial_ms == 0
                    || self.flush.retry_max_ms < self.flush.retry_initial_ms,
                "flush.retry_max_ms",
                "must be at least flush.retry_initial_ms, which must be at least 1",
            ),
            at_least!(self.flush.version_lease_ms, 1000, "flush.version_lease_ms"),
            at_least!(self.flush.purge_interval_ms, 1, "flush.purge_interval_ms"),
            (
                self.flush.tombstone_grace_ms < self.flush.delay_ms,
                "flush.tombstone_grace_ms",
                "must be at least flush.delay_ms",
            ),
            at_least!(self.limits.max_mention_users, 1, "limits.max_mention_users"),
            at_least!(self.limits.max_bulk_acks, 1, "limits.max_bulk_acks"),
            at_least!(
                self.limits.max_in_flight_calls,
                1,
                "limits.max_in_flight_calls"
            ),
            at_least!(
                self.limits.max_request_bytes,
                1024,
                "limits.max_request_bytes"
            ),
            at_least!(
                self.limits.max_delete_channels,
                1,
                "limits.max_delete_channels"
            ),
            at_least!(self.watch.max_streams, 1, "watch.max_streams"),
            at_least!(
                self.watch.max_users_per_stream,
                1,
                "watch.max_users_per_stream"
            ),
            at_least!(self.watch.buffer_events, 16, "watch.buffer_events"),
            (
                self.watch.coalesce_ms > 1_000,
                "watch.coalesce_ms",
                "must be at most 1000: every event of a busy stream waits up to this long",
            ),
            at_least!(
                self.server.max_concurrent_requests_per_connection,
                1,
                "server.max_concurrent_requests_per_connection"
            ),
            (
                self.server.max_concurrent_requests_per_connection > MAX_STREAMS_PER_CONNECTION,
                "server.max_concurrent_requests_per_connection",
                "must be at most 2048: HTTP/2 closes a connection whose unread request frames \
                 exceed its flood budget, failing every call on it",
            ),
        ];
        first_failure(checks)?;
        self.validate_connections()?;
        self.scylla.validate()?;
        self.cluster
            .validate(self.store.backend == StoreBackend::Scylla)?;
        self.cluster.validate_forwarding(&self.tls)?;
        auth::validate(&self.tls, &self.auth)
    }

    /// Checks the connection settings of `[server]` and `[metrics]`.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        let (server, metrics) = (&self.server, &self.metrics);
        let checks: [Check; 7] = [
            (
                server.max_connections == 0,
                "server.max_connections",
                "must be at least 1 (and below the open-files limit, ulimit -n)",
            ),
            at_least!(
                server.first_request_timeout_ms,
                100,
                "server.first_request_timeout_ms"
            ),
            at_least!(server.idle_timeout_ms, 1000, "server.idle_timeout_ms"),
            (
                server.keepalive_interval_ms != 0 && server.keepalive_interval_ms < 1_000,
                "server.keepalive_interval_ms",
                "must be 0 (no pings) or at least 1000",
            ),
            at_least!(
                server.keepalive_timeout_ms,
                100,
                "server.keepalive_timeout_ms"
            ),
            at_least!(metrics.max_connections, 1, "metrics.max_connections"),
            at_least!(
                metrics.header_read_timeout_ms,
                100,
                "metrics.header_read_timeout_ms"
            ),
        ];
        first_failure(checks)
    }
}
