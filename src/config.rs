//! Service configuration: one TOML file, overridable by environment
//! variables, parsed and validated once at start-up into typed values.
//!
//! Every key has a default that runs on a laptop. An environment variable
//! `READSTATES_<SECTION>_<KEY>` overrides `[section] key`, e.g.
//! `READSTATES_CACHE_CAPACITY=2000000` or `READSTATES_STORE_DATA_DIR=/var/lib/readstates`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod auth;
mod cluster;
mod scylla;

pub use auth::{AuthConfig, TlsConfig};
pub use cluster::ClusterConfig;
pub use scylla::{
    Consistency, RetryPolicyKind, ScyllaConfig, Secret, SpeculativeExecution, is_cql_identifier,
};

/// The environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "READSTATES_";

/// `limits.max_in_flight_calls` when the configuration does not say.
pub const DEFAULT_MAX_IN_FLIGHT_CALLS: usize = 10_000;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub flush: FlushConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub scylla: ScyllaConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
}

/// The most calls one connection may have open. The HTTP/2 layer (h2) guards
/// against floods of small DATA frames with a per-connection budget of about
/// 512 KiB at the default window, charged about 230 bytes for each request
/// not yet read; past it, it closes the connection (GOAWAY
/// `ENHANCE_YOUR_CALM`) and every call on it fails. On an overloaded server,
/// every open stream can hold an unread request, so the stream limit stays
/// below that budget: 2048 streams are about 470 KiB.
pub const MAX_STREAMS_PER_CONNECTION: usize = 2048;

/// The gRPC listener and request handling.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gRPC API listens on.
    pub listen_addr: SocketAddr,
    /// Calls open at once on one connection, advertised to clients as the
    /// HTTP/2 stream limit: a client queues further calls until one ends
    /// (one that ignores the limit gets `UNAVAILABLE`). At most
    /// [`MAX_STREAMS_PER_CONNECTION`].
    pub max_concurrent_requests_per_connection: usize,
    /// A request running longer than this is cancelled (`CANCELLED`/deadline).
    pub request_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long calls in flight may take to finish
    /// before their connections are closed and the final flush starts.
    pub drain_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long the drain and the final flush may take
    /// before the process gives up and exits non-zero.
    pub shutdown_timeout_ms: u64,
    /// Most connections open at once; past it the longest-idle connection
    /// is closed to make room (or, if every one has a call open, the new
    /// one). Lowered at start to fit three quarters of the open-files
    /// limit, less `metrics.max_connections`.
    pub max_connections: usize,
    /// A connection that has not started a call this long after its
    /// accept (TLS handshake included) is closed.
    pub first_request_timeout_ms: u64,
    /// A connection with no call open for this long is closed.
    pub idle_timeout_ms: u64,
    /// HTTP/2 pings to each connection this often (0: none); a client that
    /// does not answer within `keepalive_timeout_ms` is disconnected.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
}

/// Which store holds the states.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (the default, an on-disk database under `data_dir`) or
    /// `scylla` (a ScyllaDB or Cassandra cluster, see [`ScyllaConfig`]).
    pub backend: StoreBackend,
    /// Directory of the embedded database.
    pub data_dir: PathBuf,
    /// Where a shutdown that cannot write its dirty states to the store
    /// keeps them for the next start (see `flush::spill`); by default
    /// `<data_dir>/spill`. On another filesystem than `data_dir`, a shutdown
    /// during a full disk exits at once instead of waiting for space.
    pub spill_dir: Option<PathBuf>,
    /// Threads that load users from the embedded database. Loads beyond
    /// them queue (a request's own load before a fan-out's), so a burst of
    /// cold users cannot crowd the request workers off the CPU.
    pub reader_threads: usize,
    /// The embedded database's own page cache, in MiB (beside the OS page
    /// cache, which holds the file too).
    pub cache_mib: usize,
    /// For benchmarks only: delays every load and batch write by a
    /// log-normal latency of this median (0, the default: no delay), to
    /// model a cluster store's round trips on one machine.
    pub injected_latency_median_ms: u64,
    /// ...and this p99.
    pub injected_latency_p99_ms: u64,
}

/// The store backends.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Embedded,
    #[serde(alias = "cassandra")]
    Scylla,
}

/// The in-memory cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How many read states the cache holds (not users).
    pub capacity: usize,
    /// Independent LRU partitions; more partitions, less lock contention.
    pub partitions: usize,
    /// Pending mentions tracked by id per state (exact, retry-safe
    /// counting); past this, mentions are counted without de-duplication.
    pub max_tracked_mentions: usize,
}

/// Write-behind persistence.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlushConfig {
    /// A change reaches the store at most this long after its state first
    /// became dirty (plus the write itself).
    pub delay_ms: u64,
    /// Granularity of the flush timer: states becoming dirty within one tick
    /// share a timer bucket.
    pub tick_ms: u64,
    /// Store writes in flight at once.
    pub concurrency: usize,
    /// Rows per store write.
    pub batch_size: usize,
    /// Dirty states held before writes are refused with `UNAVAILABLE`
    /// (the store is not keeping up, or is down).
    pub max_dirty_states: usize,
    /// First and largest wait between retries of a failed write (and of a
    /// failed renewal of the version lease).
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// How far ahead of the clock the version lease recorded in the store
    /// runs; it is renewed when half is left. If the store cannot record a
    /// new lease before it runs out, writes get `UNAVAILABLE`.
    pub version_lease_ms: u64,
    /// How often deletion tombstones are purged from the store.
    pub purge_interval_ms: u64,
    /// A tombstone is purged only once it is older than this (and older
    /// than every write not yet landed); at least `delay_ms`.
    pub tombstone_grace_ms: u64,
}

/// Request size limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most user ids in one AddMentions/RemoveMentions.
    pub max_mention_users: usize,
    /// Most acks in one BulkAck.
    pub max_bulk_acks: usize,
    /// Most channel ids in one DeleteReadStates.
    pub max_delete_channels: usize,
    /// Most ReadStates calls in flight at once, over all connections; a
    /// call past it is refused at once with `RESOURCE_EXHAUSTED` rather
    /// than queued into a timeout. Health and reflection are not counted.
    pub max_in_flight_calls: usize,
    /// Largest request message, in bytes; a larger one is refused with
    /// `OUT_OF_RANGE` before it is decoded.
    pub max_request_bytes: usize,
    /// While tasks wait longer than this for a runtime worker (the server
    /// is short of CPU), new calls are refused at once with
    /// `RESOURCE_EXHAUSTED`; 0 turns the check off. See `overload`.
    pub max_queue_delay_ms: u64,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Address of the `/metrics` HTTP endpoint.
    pub listen_addr: SocketAddr,
    /// Most connections open at once; past it the longest-idle one is
    /// closed to make room, so a new scrape always gets through.
    pub max_connections: usize,
    /// A connection whose request headers have not all arrived this long
    /// after its accept, or after its previous response (a kept-alive
    /// connection left idle), is closed.
    pub header_read_timeout_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_connections: 16,
            header_read_timeout_ms: 5_000,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `readstates=debug`; `RUST_LOG`
    /// takes precedence when set.
    pub level: String,
    /// Emit JSON lines instead of human-readable text.
    pub json: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_concurrent_requests_per_connection: 1024,
            request_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
            shutdown_timeout_ms: 60_000,
            max_connections: 10_000,
            first_request_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

impl StoreConfig {
    /// Returns the directory of spill files.
    pub fn spill_dir(&self) -> PathBuf {
        self.spill_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("spill"))
    }

    /// Returns the injected store latency's median and p99, if configured.
    pub fn injected_latency(&self) -> Option<(Duration, Duration)> {
        (self.injected_latency_median_ms > 0).then(|| {
            (
                Duration::from_millis(self.injected_latency_median_ms),
                Duration::from_millis(self.injected_latency_p99_ms),
            )
        })
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            data_dir: PathBuf::from("data"),
            spill_dir: None,
            reader_threads: crate::store::DEFAULT_READER_THREADS,
            cache_mib: crate::store::DEFAULT_CACHE_MIB,
            injected_latency_median_ms: 0,
            injected_latency_p99_ms: 0,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 1_000_000,
            partitions: 64,
            max_tracked_mentions: 1_000,
        }
    }
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self {
            delay_ms: 30_000,
            tick_ms: 1_000,
            concurrency: 4,
            batch_size: 512,
            max_dirty_states: 1_000_000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            version_lease_ms: 120_000,
            purge_interval_ms: 60_000,
            tombstone_grace_ms: 600_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_mention_users: 10_000,
            max_bulk_acks: 1_000,
            max_delete_channels: 1_000,
            max_in_flight_calls: DEFAULT_MAX_IN_FLIGHT_CALLS,
            max_request_bytes: 1 << 20,
            max_queue_delay_ms: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            json: false,
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML (with overrides applied) does not match the schema.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// An environment override names no known setting.
    #[error("environment variable {0} names no setting; expected READSTATES_<SECTION>_<KEY>")]
    UnknownOverride(String),
    /// A value is out of its allowed range.
    #[error("invalid config: {field} {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

const SECTIONS: [&str; 11] = [
    "server", "store", "cache", "flush", "limits", "metrics", "log", "scylla", "tls", "auth",
    "cluster",
];

/// Settings whose environment overrides are taken verbatim as strings: a
/// password such as `007` must not become the integer 7.
const VERBATIM_OVERRIDES: [(&str, &str); 4] = [
    ("scylla", "username"),
    ("scylla", "password"),
    ("cluster", "instance_id"),
    ("cluster", "advertise_addr"),
];

impl Config {
    /// Loads the file at `path` (defaults only when `None`), applies the
    /// `READSTATES_*` environment overrides and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_and_env(&text, std::env::vars())
    }

    /// Parses TOML text, applies overrides from `(name, value)` pairs (only
    /// those starting with [`ENV_PREFIX`] and naming a known section are
    /// considered) and validates.
    pub fn from_toml_and_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = SECTIONS.iter().find_map(|section| {
                let key = rest.strip_prefix(section)?.strip_prefix('_')?;
                Some((*section, key))
            }) else {
                // Other READSTATES_* variables (e.g. test settings) are not ours.
                continue;
            };
            if key.is_empty() {
                return Err(ConfigError::UnknownOverride(name));
            }
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                return Err(ConfigError::UnknownOverride(name));
            };
            let value = if VERBATIM_OVERRIDES.contains(&(section, key)) {
                toml::Value::String(value)
            } else {
                parse_env_value(&value)
            };
            section_table.insert(key.to_owned(), value);
        }
        let config: Config = toml::Value::Table(table).try_into()?;
        config.validate()?;
        Ok(config)
    }

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
}

impl Config {
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

impl ServerConfig {
    /// Returns the HTTP/2 keepalive ping interval, `None` when off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }

    /// Returns how long a keepalive ping may wait for its answer.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }
}

impl FlushConfig {
    /// Returns the flush delay.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }

    /// Returns the flush timer granularity.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Returns how far ahead of the clock the version lease runs.
    pub fn version_lease(&self) -> Duration {
        Duration::from_millis(self.version_lease_ms)
    }
}

/// Reads an override as an integer, bool or float when it looks like one,
/// else as a string.
fn parse_env_value(value: &str) -> toml::Value {
    if let Ok(integer) = value.replace('_', "").parse::<i64>() {
        return toml::Value::Integer(integer);
    }
    if let Ok(boolean) = value.parse::<bool>() {
        return toml::Value::Boolean(boolean);
    }
    if let Ok(float) = value.parse::<f64>() {
        return toml::Value::Float(float);
    }
    toml::Value::String(value.to_owned())
}

#[cfg(test)]
mod tests;
