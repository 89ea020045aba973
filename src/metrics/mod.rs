//! Prometheus metrics: what the service counts, and their exposition on
//! `/metrics` (see `http`).
//!
//! Counters and gauges are handles registered once, at start-up, with this
//! server's own `metrics-exporter-prometheus` recorder (no global recorder,
//! so several servers can live in one process, as in the tests). Latency and
//! size histograms are [`AtomicHistogram`]s, lock- and allocation-free on the
//! request path, rendered beside the recorder's output. Cache counters live
//! in the cache partitions (under the lock a request holds anyway) and are
//! gathered, with the gauges, when `/metrics` is scraped.
//!
//! Names follow Prometheus conventions: `readstates_` prefix, base units,
//! `_seconds`, `_bytes`, `_total`. Labels come from small fixed sets.

mod connections;
mod forwarding;
mod handoff;
mod histogram;
mod http;

pub use connections::{
    AcceptFailure, ConnectionMetrics, ListenerPort, PortConnections, ReapReason,
};
pub use forwarding::{ForwardResult, Forwards};
pub use handoff::HandoffMetrics;
pub use histogram::{AtomicHistogram, LATENCY_BUCKETS, SIZE_BUCKETS};
pub use http::serve_metrics;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tonic::Code;

use crate::cache::Cache;
use crate::clock::unix_micros;
use crate::store::ErrorClass;

const METADATA: Metadata<'static> = Metadata::new("readstates", Level::INFO, Some(module_path!()));

/// The RPCs of `readstates.v1.ReadStates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Ack,
    BulkAck,
    AddMentions,
    RemoveMentions,
    AckPins,
    GetReadState,
    GetUserReadStates,
    DeleteReadStates,
    GetRouting,
}

impl Method {
    const ALL: [Method; 9] = [
        Method::Ack,
        Method::BulkAck,
        Method::AddMentions,
        Method::RemoveMentions,
        Method::AckPins,
        Method::GetReadState,
        Method::GetUserReadStates,
        Method::DeleteReadStates,
        Method::GetRouting,
    ];

    /// Returns the RPC's name as gRPC spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ack => "Ack",
            Method::BulkAck => "BulkAck",
            Method::AddMentions => "AddMentions",
            Method::RemoveMentions => "RemoveMentions",
            Method::AckPins => "AckPins",
            Method::GetReadState => "GetReadState",
            Method::GetUserReadStates => "GetUserReadStates",
            Method::DeleteReadStates => "DeleteReadStates",
            Method::GetRouting => "GetRouting",
        }
    }
}

/// The store operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOperation {
    LoadUser,
    WriteBatch,
    LoadVersionFloor,
    RecordVersionFloor,
    Sync,
}

impl StoreOperation {
    const ALL: [StoreOperation; 5] = [
        StoreOperation::LoadUser,
        StoreOperation::WriteBatch,
        StoreOperation::LoadVersionFloor,
        StoreOperation::RecordVersionFloor,
        StoreOperation::Sync,
    ];

    fn name(self) -> &'static str {
        match self {
            StoreOperation::LoadUser => "load_user",
            StoreOperation::WriteBatch => "write_batch",
            StoreOperation::LoadVersionFloor => "load_version_floor",
            StoreOperation::RecordVersionFloor => "record_version_floor",
            StoreOperation::Sync => "sync",
        }
    }
}

/// The store error classes, in declaration order (the counters' index).
const ERROR_CLASSES: [ErrorClass; 2] = [ErrorClass::Retryable, ErrorClass::Permanent];

/// The gRPC status codes, 0 to 16.
const CODES: usize = 17;

const RPC_DURATION: &str = "readstates_rpc_duration_seconds";
const STORE_DURATION: &str = "readstates_store_operation_duration_seconds";
const FLUSH_BATCH_ROWS: &str = "readstates_flush_batch_rows";

/// Every metric of one server.
pub struct Metrics {
    /// Renders the recorder's counters and gauges (the handles registered
    /// below keep its registry alive).
    handle: PrometheusHandle,
    store_backend: &'static str,
    /// Indexed by `method * CODES + code`.
    rpc_durations: Box<[AtomicHistogram]>,
    store_durations: Box<[AtomicHistogram]>,
    /// Indexed by `operation * ERROR_CLASSES.len() + class`.
    store_errors: Box<[Counter]>,
    flush_batch_rows: AtomicHistogram,
    pub flush_rows_written: Counter,
    pub flush_batches: Counter,
    pub flush_retries: Counter,
    /// 1 while the store refuses the write-behind's writes (the last batch
    /// write failed and none has landed since), else 0.
    pub store_write_failing: Gauge,
    /// How late the runtime's probe task last woke (see `overload`).
    pub queue_delay: Gauge,
    /// ReadStates calls refused by the authentication check, by reason.
    pub auth_refused_unauthenticated: Counter,
    pub auth_refused_permission_denied: Counter,
    /// TLS handshakes on the gRPC port that failed or timed out.
    pub tls_handshake_failures: Counter,
    pub lease_renewal_failures: Counter,
    pub tombstones_purged: Counter,
    /// Slots this instance serves (0 without `cluster.enabled`).
    pub cluster_owned_slots: Gauge,
    /// Slot lease renewals, by result.
    pub cluster_lease_renewals: LeaseRenewals,
    /// Slot handoffs, and slots lost without one.
    pub cluster_handoffs: HandoffMetrics,
    /// Calls forwarded to their slot's owner.
    pub cluster_forwards: Forwards,
    /// Connections open, reaped and refused on the gRPC and metrics ports.
    pub connections: ConnectionMetrics,
    lease_remaining: Gauge,
    cache: CacheMetrics,
    process_resident_memory: Gauge,
    /// Start times of batch writes not yet done (retries included), by id.
    unfinished_writes: Mutex<(u64, BTreeMap<u64, Instant>)>,
}

/// Marks a batch write as unfinished until dropped.
pub struct UnfinishedWrite<'a> {
    metrics: &'a Metrics,
    id: u64,
}

impl Drop for UnfinishedWrite<'_> {
    fn drop(&mut self) {
        self.metrics.unfinished_writes.lock().1.remove(&self.id);
    }
}

/// `readstates_cluster_lease_renewals_total`, by `result`.
#[derive(Clone)]
pub struct LeaseRenewals {
    /// The lease was extended.
    pub renewed: Counter,
    /// Another instance holds the slot, or nobody does: it was lost.
    pub lost: Counter,
    /// The request failed or timed out; the slot may still be ours.
    pub failed: Counter,
}

impl Default for LeaseRenewals {
    fn default() -> Self {
        Self {
            renewed: Counter::noop(),
            lost: Counter::noop(),
            failed: Counter::noop(),
        }
    }
}

struct CacheMetrics {
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
    flush_lag: Gauge,
    flush_write_age: Gauge,
}

impl Metrics {
    /// Registers every metric of a server whose store is `store_backend`.
    pub fn new(store_backend: &'static str) -> Arc<Self> {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, help.into());
            recorder.register_counter(&Key::from_static_name(name), &METADATA)
        };
        let gauge = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_gauge(name.into(), unit, help.into());
            recorder.register_gauge(&Key::from_static_name(name), &METADATA)
        };

        recorder.describe_counter(
            "readstates_store_errors_total".into(),
            None,
            "Failed store operations, by operation, backend and class (retryable or permanent)."
                .into(),
        );
        let store_errors = StoreOperation::ALL
            .iter()
            .flat_map(|operation| ERROR_CLASSES.map(|class| (operation, class)))
            .map(|(operation, class)| {
                let labels = vec![
                    Label::new("operation", operation.name()),
                    Label::new("backend", store_backend),
                    Label::new("class", class.name()),
                ];
                recorder.register_counter(
                    &Key::from_parts("readstates_store_errors_total", labels),
                    &METADATA,
                )
            })
            .collect();

        recorder.describe_counter(
            "readstates_cache_evictions_total".into(),
            None,
            "Users evicted from the cache; dirty=\"true\" ones were written on eviction.".into(),
        );
        let eviction = |dirty: &'static str| {
            recorder.register_counter(
                &Key::from_parts(
                    "readstates_cache_evictions_total",
                    vec![Label::new("dirty", dirty)],
                ),
                &METADATA,
            )
        };
        recorder.describe_counter(
            "readstates_auth_refused_total".into(),
            None,
            "ReadStates calls refused by the authentication check: reason=\"unauthenticated\" (no or bad credentials), \"permission_denied\" (a caller not allowed).".into(),
        );
        let auth_refused = |reason: &'static str| {
            recorder.register_counter(
                &Key::from_parts(
                    "readstates_auth_refused_total",
                    vec![Label::new("reason", reason)],
                ),
                &METADATA,
            )
        };
        recorder.describe_counter(
            "readstates_cluster_lease_renewals_total".into(),
            None,
            "Renewals of this instance's slot leases (cluster.enabled): result=\"renewed\", \"lost\" (another instance or nobody holds the slot), \"failed\" (an error or timeout; the slot stops being served if its renewals keep failing).".into(),
        );
        let renewals = |result: &'static str| {
            recorder.register_counter(
                &Key::from_parts(
                    "readstates_cluster_lease_renewals_total",
                    vec![Label::new("result", result)],
                ),
                &METADATA,
            )
        };
        let cluster_lease_renewals = LeaseRenewals {
            renewed: renewals("renewed"),
            lost: renewals("lost"),
            failed: renewals("failed"),
        };
        let cache = CacheMetrics {
            hits: counter(
                "readstates_cache_hits_total",
                None,
                "Requests that found their user cached.",
            ),
            misses: counter(
                "readstates_cache_misses_total",
                None,
                "Requests that had to load their user from the store.",
            ),
            evictions_clean: eviction("false"),
            evictions_dirty: eviction("true"),
            changed_states: counter(
                "readstates_state_changes_total",
                None,
                "Read-state changes.",
            ),
            coalesced_updates: counter(
                "readstates_flush_coalesced_updates_total",
                None,
                "Changes to states already waiting for a write: coalesced into that write.",
            ),
            deferred_mentions: counter(
                "readstates_mentions_deferred_total",
                None,
                "Mentions of users not in memory, kept for the users' next load (AddMentions with omit_read_states).",
            ),
            waiting_mentions: gauge(
                "readstates_mentions_deferred_waiting",
                None,
                "Deferred mentions not yet merged into their users' states.",
            ),
            resident_states: gauge(
                "readstates_cache_read_states",
                None,
                "Cached read states (a cached user without states counts as one).",
            ),
            resident_users: gauge("readstates_cache_users", None, "Cached users."),
            protected_users: gauge(
                "readstates_cache_protected_users",
                None,
                "Cached users in the LRU's protected segment (used again since their load).",
            ),
            capacity: gauge(
                "readstates_cache_capacity_read_states",
                None,
                "Cache capacity, in read states.",
            ),
            smallest_partition: gauge(
                "readstates_cache_partition_read_states_min",
                None,
                "Read states in the emptiest cache partition.",
            ),
            largest_partition: gauge(
                "readstates_cache_partition_read_states_max",
                None,
                "Read states in the fullest cache partition.",
            ),
            estimated_bytes: gauge(
                "readstates_cache_estimated_bytes",
                Some(Unit::Bytes),
                "Estimated heap memory of the cached read states.",
            ),
            dirty_states: gauge(
                "readstates_dirty_read_states",
                None,
                "Read states changed but not yet written to the store.",
            ),
            scheduled_users: gauge(
                "readstates_flush_queue_users",
                None,
                "Users waiting in flush timer buckets.",
            ),
            evicting_users: gauge(
                "readstates_flush_eviction_queue_users",
                None,
                "Evicted dirty users waiting for (or in) their write.",
            ),
            flush_lag: gauge(
                "readstates_flush_lag_seconds",
                Some(Unit::Seconds),
                "Age of the oldest change waiting in a flush timer bucket, or of the oldest batch write not yet done.",
            ),
            flush_write_age: gauge(
                "readstates_flush_write_age_seconds",
                Some(Unit::Seconds),
                "Age of the oldest batch write not yet done (0 when none is): the store's part of the flush lag.",
            ),
        };

        let build_info = {
            let name = "readstates_build_info";
            recorder.describe_gauge(
                name.into(),
                None,
                "Always 1; the version label names the build.".into(),
            );
            let labels = vec![Label::new("version", env!("CARGO_PKG_VERSION"))];
            recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
        };
        build_info.set(1.0);

        let metrics = Self {
            store_backend,
            rpc_durations: (0..Method::ALL.len() * CODES)
                .map(|_| AtomicHistogram::new(LATENCY_BUCKETS))
                .collect(),
            store_durations: StoreOperation::ALL
                .iter()
                .map(|_| AtomicHistogram::new(LATENCY_BUCKETS))
                .collect(),
            store_errors,
            flush_batch_rows: AtomicHistogram::new(SIZE_BUCKETS),
            flush_rows_written: counter(
                "readstates_flush_rows_written_total",
                None,
                "Rows written to the store by the write-behind.",
            ),
            flush_batches: counter(
                "readstates_flush_batches_total",
                None,
                "Batches written to the store by the write-behind.",
            ),
            flush_retries: counter(
                "readstates_flush_retries_total",
                None,
                "Failed batch writes that were retried.",
            ),
            store_write_failing: gauge(
                "readstates_store_write_failing",
                None,
                "1 while the store refuses the write-behind's writes (the last batch write failed and none has landed since), else 0.",
            ),
            queue_delay: gauge(
                "readstates_runtime_queue_delay_seconds",
                Some(Unit::Seconds),
                "How long a task last waited for a runtime worker (the overload signal of limits.max_queue_delay_ms).",
            ),
            auth_refused_unauthenticated: auth_refused("unauthenticated"),
            auth_refused_permission_denied: auth_refused("permission_denied"),
            tls_handshake_failures: counter(
                "readstates_tls_handshake_failures_total",
                None,
                "TLS handshakes on the gRPC port that failed (plaintext, a certificate from another CA) or timed out.",
            ),
            lease_renewal_failures: counter(
                "readstates_version_lease_renewal_failures_total",
                None,
                "Failed or timed-out renewals of the version lease in the store (retried with backoff).",
            ),
            tombstones_purged: counter(
                "readstates_tombstones_purged_total",
                None,
                "Deletion tombstones purged from the store.",
            ),
            cluster_owned_slots: gauge(
                "readstates_cluster_owned_slots",
                None,
                "Slots whose users this instance serves now (cluster.enabled).",
            ),
            cluster_lease_renewals,
            cluster_handoffs: HandoffMetrics::register(&recorder),
            cluster_forwards: Forwards::register(&recorder),
            connections: ConnectionMetrics::register(&recorder),
            lease_remaining: gauge(
                "readstates_version_lease_remaining_seconds",
                Some(Unit::Seconds),
                "Time left on the version lease recorded in the store; at 0, writes get UNAVAILABLE until it is renewed.",
            ),
            cache,
            process_resident_memory: gauge(
                "readstates_process_resident_memory_bytes",
                Some(Unit::Bytes),
                "Resident memory of the process.",
            ),
            handle,
            unfinished_writes: Mutex::new((0, BTreeMap::new())),
        };
        Arc::new(metrics)
    }

    /// Records one call of `method` that ended with `code`.
    pub fn record_rpc(&self, method: Method, code: Code, elapsed: Duration) {
        let code_index = (code as usize).min(CODES - 1);
        self.rpc_durations[method as usize * CODES + code_index].record_duration(elapsed);
    }

    /// Records one store operation, and its failure's class if it failed.
    pub fn record_store(
        &self,
        operation: StoreOperation,
        elapsed: Duration,
        failure: Option<ErrorClass>,
    ) {
        self.store_durations[operation as usize].record_duration(elapsed);
        if let Some(class) = failure {
            debug_assert_eq!(ERROR_CLASSES[class as usize], class);
            let index = operation as usize * ERROR_CLASSES.len() + class as usize;
            self.store_errors[index].increment(1);
        }
    }

    /// Marks the start of a batch write, queued since `queued_at`; the flush
    /// lag counts it from then until the returned guard is dropped.
    pub fn write_started(&self, queued_at: Instant) -> UnfinishedWrite<'_> {
        let mut writes = self.unfinished_writes.lock();
        let id = writes.0;
        writes.0 += 1;
        writes.1.insert(id, queued_at);
        UnfinishedWrite { metrics: self, id }
    }

    /// Records one flushed batch.
    pub fn record_flush_batch(&self, rows: usize) {
        self.flush_batch_rows.record_value(rows as u64);
        self.flush_batches.increment(1);
        self.flush_rows_written.increment(rows as u64);
    }

    /// Gathers the cache's counters and gauges, then renders everything in
    /// the Prometheus text format.
    pub fn render(&self, cache: &Cache) -> String {
        self.collect(cache);
        let mut text = self.handle.render();
        self.render_histograms(&mut text);
        text
    }

    fn collect(&self, cache: &Cache) {
        let stats = cache.stats();
        let c = &self.cache;
        c.hits.absolute(stats.hits);
        c.misses.absolute(stats.misses);
        c.evictions_clean.absolute(stats.evictions_clean);
        c.evictions_dirty.absolute(stats.evictions_dirty);
        c.changed_states.absolute(stats.changed_states);
        c.coalesced_updates
            .absolute(stats.changed_states.saturating_sub(stats.newly_dirty));
        c.deferred_mentions.absolute(stats.deferred_mentions);
        c.waiting_mentions.set(stats.waiting_mentions as f64);
        c.resident_states.set(stats.resident_states as f64);
        c.resident_users.set(stats.resident_users as f64);
        c.protected_users.set(stats.protected_users as f64);
        c.capacity.set(stats.capacity as f64);
        c.smallest_partition.set(stats.smallest_partition as f64);
        c.largest_partition.set(stats.largest_partition as f64);
        c.estimated_bytes.set(stats.estimated_bytes as f64);
        c.dirty_states.set(stats.dirty_states as f64);
        c.scheduled_users.set(stats.scheduled_users as f64);
        c.evicting_users.set(stats.evicting_users as f64);
        let oldest_write = self.unfinished_writes.lock().1.values().min().copied();
        let write_lag = oldest_write.map_or(Duration::ZERO, |started| started.elapsed());
        c.flush_lag
            .set(stats.flush_lag.max(write_lag).as_secs_f64());
        c.flush_write_age.set(write_lag.as_secs_f64());
        let lease_left = cache.clock().lease_left_at(unix_micros());
        self.lease_remaining.set(lease_left.as_secs_f64());
        if let Some(bytes) = resident_memory_bytes() {
            self.process_resident_memory.set(bytes as f64);
        }
        self.handle.run_upkeep();
    }

    fn render_histograms(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {RPC_DURATION} gRPC call latency, by method and status code.\n# TYPE {RPC_DURATION} histogram"
        );
        for method in Method::ALL {
            for code in 0..CODES {
                let histogram = &self.rpc_durations[method as usize * CODES + code];
                // OK is always shown, so queries work before the first call.
                if code != 0 && histogram.count() == 0 {
                    continue;
                }
                let labels = format!("method=\"{}\",code=\"{}\"", method.name(), code_name(code));
                histogram.render(RPC_DURATION, &labels, out);
            }
        }
        let _ = writeln!(
            out,
            "# HELP {STORE_DURATION} Store operation latency, by operation and backend.\n# TYPE {STORE_DURATION} histogram"
        );
        for operation in StoreOperation::ALL {
            let labels = format!(
                "operation=\"{}\",backend=\"{}\"",
                operation.name(),
                self.store_backend
            );
            self.store_durations[operation as usize].render(STORE_DURATION, &labels, out);
        }
        let _ = writeln!(
            out,
            "# HELP {FLUSH_BATCH_ROWS} Rows per write-behind batch.\n# TYPE {FLUSH_BATCH_ROWS} histogram"
        );
        self.flush_batch_rows.render(FLUSH_BATCH_ROWS, "", out);
        self.cluster_handoffs.render(out);
        self.cluster_forwards.render(out);
    }
}

/// Returns the gRPC name of a status code, e.g. `OK`, `INVALID_ARGUMENT`.
fn code_name(code: usize) -> &'static str {
    const NAMES: [&str; CODES] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code).copied().unwrap_or("UNKNOWN")
}

/// Returns the process's resident memory, from `/proc/self/statm`.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * 4096)
}
