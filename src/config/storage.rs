//! The sections of where read states live: `[store]`, the database that
//! holds them; `[cache]`, the memory in front of it; and `[flush]`, the
//! write-behind between the two.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `store.reader_threads` when the configuration does not say: two keep a
/// load from waiting behind one slow read without letting loads take every
/// core of a small machine.
pub const DEFAULT_READER_THREADS: usize = 2;

/// `store.cache_mib` when the configuration does not say: enough for the
/// upper levels of the database's tree and the pages loaded most recently,
/// small enough for a laptop, since the OS page cache holds the file too.
pub const DEFAULT_CACHE_MIB: usize = 128;

/// `store.repack_per_change` when the configuration does not say: rows of
/// the embedded table rewritten full per row deleted or purged.
pub const DEFAULT_REPACK_PER_CHANGE: u32 = 3;

/// Which store holds the states.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (the default, an on-disk database under `data_dir`) or
    /// `scylla` (a ScyllaDB or Cassandra cluster, see [`super::ScyllaConfig`]).
    pub backend: StoreBackend,
    /// Directory of the embedded database.
    pub data_dir: PathBuf,
    /// Where a shutdown that cannot write its dirty states to the store
    /// keeps them for the next start (see `flush::spill`); by default
    /// `<data_dir>/spill`. On another filesystem than `data_dir`, a shutdown
    /// during a full disk exits at once instead of waiting for space.
    pub spill_dir: Option<PathBuf>,
    /// Threads that load the users calls wait for from the embedded
    /// database; as many again load a fan-out's cold users. Loads beyond
    /// them queue, so a burst of cold users cannot crowd the request
    /// workers off the CPU.
    pub reader_threads: usize,
    /// The embedded database's own page cache, in MiB (beside the OS page
    /// cache, which holds the file too).
    pub cache_mib: usize,
    /// Background repacking of the embedded database: for each row a
    /// commit deletes or purges, this many rows of the table are rewritten
    /// in key order into full pages, so that churn does not leave the file
    /// at twice its data. 0 turns it off.
    pub repack_per_change: u32,
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
    /// Whether the process may use transparent huge pages. Off by default:
    /// while the cache fills, the heap grows, and the call that first
    /// touches a new 2 MiB huge page waits for the kernel to zero all of it,
    /// which holds a request worker for up to milliseconds (BENCHMARKS.md,
    /// "The cache's first minutes"). On, a large cache may take fewer TLB
    /// misses. Applies at start only (Linux's `PR_SET_THP_DISABLE`).
    pub transparent_huge_pages: bool,
}

/// Write-behind persistence.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlushConfig {
    /// A change reaches the store at most this long after its state first
    /// became dirty (plus the write itself).
    pub delay_ms: u64,
    /// Granularity of the flush timer: states becoming dirty within one tick
    /// share a timer bucket, and each tick's bucket is written as one round.
    /// Smaller rounds keep the writer's commits short: on a server confined
    /// to one core, a commit's CPU delays the calls that arrive during it
    /// (BENCHMARKS.md, "The tail against the floor").
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
    /// Whether each write-back round also writes the waiting users of the
    /// next key range, so that rows side by side in the store are written
    /// together (ARCHITECTURE.md §2.1). Unset: on for the embedded
    /// store, whose B-tree then rewrites far fewer pages per row, and off
    /// for ScyllaDB/Cassandra, which gains nothing from key order and would
    /// coalesce less.
    pub sweep: Option<bool>,
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
            reader_threads: DEFAULT_READER_THREADS,
            cache_mib: DEFAULT_CACHE_MIB,
            repack_per_change: DEFAULT_REPACK_PER_CHANGE,
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
            transparent_huge_pages: false,
        }
    }
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self {
            delay_ms: 30_000,
            tick_ms: 100,
            concurrency: 4,
            batch_size: 512,
            max_dirty_states: 1_000_000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            version_lease_ms: 120_000,
            purge_interval_ms: 60_000,
            tombstone_grace_ms: 600_000,
            sweep: None,
        }
    }
}

impl FlushConfig {
    /// Whether the write-back sweeps the key space with `backend` as the
    /// store (`sweep`, or the backend's default).
    pub fn sweeps(&self, backend: StoreBackend) -> bool {
        self.sweep.unwrap_or(backend == StoreBackend::Embedded)
    }
}

millis_accessors!(FlushConfig {
    /// Returns the flush delay.
    delay => delay_ms;
    /// Returns the flush timer granularity.
    tick => tick_ms;
    /// Returns how far ahead of the clock the version lease runs.
    version_lease => version_lease_ms;
});
