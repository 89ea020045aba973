//! Live and restart-only settings. A reload (SIGHUP) applies the settings
//! named in [`LiveSettings`] at once; every other setting keeps its value
//! until the next start. Which are which is written once, here: the
//! restart-only ones are whatever is not live, found by comparing every
//! key of every section, so a setting added anywhere is restart-only until
//! it is made live on purpose.

use super::{
    AuthConfig, CacheConfig, ClusterConfig, Config, FlushConfig, LimitsConfig, LogConfig,
    MetricsConfig, ScyllaConfig, ServerConfig, StoreConfig, TlsConfig, WatchConfig,
};

/// The settings a running server applies on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// `cache.capacity`: a smaller one evicts at once.
    pub cache_capacity: usize,
    /// `flush.delay_ms`.
    pub flush_delay_ms: u64,
    /// `flush.max_dirty_states`.
    pub max_dirty_states: usize,
    /// `flush.batch_size`.
    pub batch_size: usize,
    /// `[log]`, which the binary applies itself.
    pub log: LogConfig,
}

/// Returns the keys of one section whose values differ between two
/// configurations, each as `"section.key"`. The pattern names every field
/// of the section without `..`, so a field added to it does not compile
/// until it is listed here.
macro_rules! changed_keys {
    ($section:literal, $type:ident { $($key:ident),+ $(,)? }, $current:expr, $new:expr) => {{
        let (current, new): (&$type, &$type) = ($current, $new);
        let $type { $($key: _),+ } = current;
        let mut changed: Vec<&'static str> = Vec::new();
        $(
            if current.$key != new.$key {
                changed.push(concat!($section, ".", stringify!($key)));
            }
        )+
        changed
    }};
}

impl Config {
    /// Returns the settings a reload applies, as they are in `self`.
    pub fn live_settings(&self) -> LiveSettings {
        LiveSettings {
            cache_capacity: self.cache.capacity,
            flush_delay_ms: self.flush.delay_ms,
            max_dirty_states: self.flush.max_dirty_states,
            batch_size: self.flush.batch_size,
            log: self.log.clone(),
        }
    }

    /// Returns `self` with its live settings replaced by `live`.
    pub fn with_live_settings(&self, live: LiveSettings) -> Config {
        // Destructured without `..`: a live setting added to the type does
        // not compile until it is written back here.
        let LiveSettings {
            cache_capacity,
            flush_delay_ms,
            max_dirty_states,
            batch_size,
            log,
        } = live;
        let mut config = self.clone();
        config.cache.capacity = cache_capacity;
        config.flush.delay_ms = flush_delay_ms;
        config.flush.max_dirty_states = max_dirty_states;
        config.flush.batch_size = batch_size;
        config.log = log;
        config
    }

    /// Returns the restart-only settings that differ in `new`, as
    /// `"section.key"`, in the order of the sections and their keys: those
    /// a reload to `new` cannot apply. Live settings never count.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let new = new.with_live_settings(self.live_settings());
        // Every section, without `..`: a section added to `Config` does not
        // compile until it is compared here.
        let Config {
            server,
            store,
            cache,
            flush,
            limits,
            metrics,
            log,
            scylla,
            tls,
            auth,
            cluster,
            watch,
        } = &new;
        [
            changed_keys!(
                "server",
                ServerConfig {
                    listen_addr,
                    max_concurrent_requests_per_connection,
                    request_timeout_ms,
                    drain_timeout_ms,
                    shutdown_timeout_ms,
                    max_connections,
                    first_request_timeout_ms,
                    idle_timeout_ms,
                    keepalive_interval_ms,
                    keepalive_timeout_ms,
                },
                &self.server,
                server
            ),
            changed_keys!(
                "store",
                StoreConfig {
                    backend,
                    data_dir,
                    spill_dir,
                    reader_threads,
                    cache_mib,
                    repack_per_change,
                    injected_latency_median_ms,
                    injected_latency_p99_ms,
                },
                &self.store,
                store
            ),
            changed_keys!(
                "cache",
                CacheConfig {
                    capacity,
                    partitions,
                    max_tracked_mentions,
                    transparent_huge_pages,
                },
                &self.cache,
                cache
            ),
            changed_keys!(
                "flush",
                FlushConfig {
                    delay_ms,
                    tick_ms,
                    concurrency,
                    batch_size,
                    max_dirty_states,
                    retry_initial_ms,
                    retry_max_ms,
                    version_lease_ms,
                    purge_interval_ms,
                    tombstone_grace_ms,
                    sweep,
                },
                &self.flush,
                flush
            ),
            changed_keys!(
                "limits",
                LimitsConfig {
                    max_mention_users,
                    max_bulk_acks,
                    max_delete_channels,
                    max_in_flight_calls,
                    max_request_bytes,
                    max_queue_delay_ms,
                },
                &self.limits,
                limits
            ),
            changed_keys!(
                "metrics",
                MetricsConfig {
                    enabled,
                    listen_addr,
                    max_connections,
                    header_read_timeout_ms,
                },
                &self.metrics,
                metrics
            ),
            changed_keys!("log", LogConfig { level, json }, &self.log, log),
            changed_keys!(
                "scylla",
                ScyllaConfig {
                    contact_points,
                    local_datacenter,
                    keyspace,
                    replication,
                    read_consistency,
                    write_consistency,
                    request_timeout_ms,
                    connect_timeout_ms,
                    page_size,
                    max_in_flight,
                    retry_policy,
                    speculative_execution,
                    speculative_delay_ms,
                    speculative_max_attempts,
                    migrate_on_start,
                    username,
                    password,
                    tls,
                    tls_ca_file,
                    tls_cert_file,
                    tls_key_file,
                    tls_verify_hostname,
                },
                &self.scylla,
                scylla
            ),
            changed_keys!(
                "tls",
                TlsConfig {
                    cert_file,
                    key_file,
                    client_ca_file,
                },
                &self.tls,
                tls
            ),
            changed_keys!(
                "auth",
                AuthConfig {
                    allowed_callers,
                    tokens_file,
                },
                &self.auth,
                auth
            ),
            changed_keys!(
                "cluster",
                ClusterConfig {
                    enabled,
                    instance_id,
                    advertise_addr,
                    slots,
                    lease_ms,
                    safety_margin_ms,
                    heartbeat_ms,
                    handoff_timeout_ms,
                    forward_timeout_ms,
                    tls_ca_file,
                    tls_cert_file,
                    tls_key_file,
                    tls_server_name,
                },
                &self.cluster,
                cluster
            ),
            changed_keys!(
                "watch",
                WatchConfig {
                    max_streams,
                    max_users_per_stream,
                    buffer_events,
                    coalesce_ms,
                },
                &self.watch,
                watch
            ),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn changing_only_live_settings_needs_no_restart() {
        let current = Config::default();
        let mut new = current.clone();
        new.cache.capacity += 1;
        new.flush.delay_ms += 1;
        new.flush.max_dirty_states += 1;
        new.flush.batch_size += 1;
        new.log.level = "debug".to_owned();
        new.log.json = !new.log.json;
        assert_eq!(current.restart_only_changes(&new), Vec::<&str>::new());
        assert_eq!(
            current.with_live_settings(new.live_settings()),
            new,
            "the live settings are all that differ"
        );
    }

    #[test]
    fn changing_a_section_names_its_changed_keys() {
        let current = Config::default();
        // The key expected, and a change of it alone.
        type Change = (&'static str, fn(&mut Config));
        let changes: [Change; 13] = [
            ("server.request_timeout_ms", |c| {
                c.server.request_timeout_ms += 1
            }),
            ("store.data_dir", |c| {
                c.store.data_dir = PathBuf::from("elsewhere")
            }),
            ("cache.partitions", |c| c.cache.partitions += 1),
            ("cache.transparent_huge_pages", |c| {
                c.cache.transparent_huge_pages = !c.cache.transparent_huge_pages
            }),
            ("flush.tick_ms", |c| c.flush.tick_ms += 1),
            ("limits.max_bulk_acks", |c| c.limits.max_bulk_acks += 1),
            ("metrics.enabled", |c| {
                c.metrics.enabled = !c.metrics.enabled
            }),
            ("scylla.keyspace", |c| c.scylla.keyspace.push('2')),
            ("tls.cert_file", |c| {
                c.tls.cert_file = Some(PathBuf::from("cert.pem"))
            }),
            ("auth.allowed_callers", |c| {
                c.auth.allowed_callers.push("caller".to_owned())
            }),
            ("cluster.slots", |c| c.cluster.slots += 1),
            ("store.reader_threads", |c| c.store.reader_threads += 1),
            ("watch.buffer_events", |c| c.watch.buffer_events += 1),
        ];
        for (expected, change) in changes {
            let mut new = current.clone();
            change(&mut new);
            assert_eq!(current.restart_only_changes(&new), vec![expected]);
        }
    }

    #[test]
    fn live_and_restart_only_changes_together_name_only_the_restart_only_ones() {
        let current = Config::default();
        let mut new = current.clone();
        new.cache.capacity = 12;
        new.cache.partitions = 8;
        new.flush.batch_size = 7;
        new.flush.retry_initial_ms = 50;
        new.flush.retry_max_ms = 5_000;
        new.server.max_connections = 10;
        assert_eq!(
            current.restart_only_changes(&new),
            vec![
                "server.max_connections",
                "cache.partitions",
                "flush.retry_initial_ms",
                "flush.retry_max_ms",
            ]
        );
    }
}
