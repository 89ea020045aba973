//! Prometheus metrics: the registry of one server's handles, the
//! histograms rendered beside it, and the text that `/metrics` serves (see
//! `scrape` for the endpoint).
//!
//! Counters and gauges are handles registered once, at start-up, with this
//! server's own `metrics-exporter-prometheus` recorder (no global recorder,
//! so several servers can live in one process, as in the tests). Latency and
//! size histograms are [`AtomicHistogram`]s, lock- and allocation-free on the
//! request path, rendered beside the recorder's output. Cache counters live
//! in the cache partitions (under the lock a request holds anyway) and are
//! gathered, with the gauges, from a registered [`CacheGauges`] source when
//! `/metrics` is scraped. This module imports nothing of the rooms it
//! counts: they map their own types to its labels.
//!
//! Names follow Prometheus conventions: `readstates_` prefix, base units,
//! `_seconds`, `_bytes`, `_total`. Labels come from small fixed sets.

mod cache;
mod connections;
mod flush;
mod forwarding;
mod handoff;
mod histogram;
mod rpc;
mod store;

pub use cache::{CacheFigures, CacheGauges};
pub use connections::{
    AcceptFailure, ConnectionMetrics, ListenerPort, PortConnections, ReapReason,
};
pub use flush::UnfinishedWrite;
pub use forwarding::{ForwardResult, Forwards};
pub use handoff::HandoffMetrics;
pub use histogram::{AtomicHistogram, LATENCY_BUCKETS, SIZE_BUCKETS};
pub use rpc::Method;
pub use store::{StoreErrorClass, StoreOperation};

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use cache::CacheMetrics;
use flush::{FlushCounters, FlushProgress};
use store::StoreMetrics;

const METADATA: Metadata<'static> = Metadata::new("readstates", Level::INFO, Some(module_path!()));

/// Every metric of one server.
pub struct Metrics {
    /// Renders the recorder's counters and gauges (the handles registered
    /// below keep its registry alive).
    handle: PrometheusHandle,
    /// Indexed by `method * CODES + code` (see `rpc`).
    rpc_durations: Box<[AtomicHistogram]>,
    store: StoreMetrics,
    pub flush_rows_written: Counter,
    pub flush_batches: Counter,
    pub flush_retries: Counter,
    /// 1 while the store refuses the write-behind's writes (the last batch
    /// write failed and none has landed since), else 0.
    pub store_write_failing: Gauge,
    flush_progress: FlushProgress,
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
    cache: CacheMetrics,
    /// Read at each scrape; unset until the server registers its cache
    /// (and in tests and fuzz targets that have none).
    cache_source: OnceLock<Arc<dyn CacheGauges>>,
    process_resident_memory: Gauge,
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

impl LeaseRenewals {
    fn register(recorder: &PrometheusRecorder) -> Self {
        let renewals = labelled_counter(
            recorder,
            "readstates_cluster_lease_renewals_total",
            "result",
            "Renewals of this instance's slot leases (cluster.enabled): result=\"renewed\", \"lost\" (another instance or nobody holds the slot), \"failed\" (an error or timeout; the slot stops being served if its renewals keep failing).",
        );
        Self {
            renewed: renewals("renewed"),
            lost: renewals("lost"),
            failed: renewals("failed"),
        }
    }
}

impl Metrics {
    /// Registers every metric of a server whose store is `store_backend`.
    pub fn new(store_backend: &'static str) -> Arc<Self> {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = |name, help| register_counter(&recorder, name, None, help);
        let gauge = |name, help| register_gauge(&recorder, name, None, help);

        let auth_refused = labelled_counter(
            &recorder,
            "readstates_auth_refused_total",
            "reason",
            "ReadStates calls refused by the authentication check: reason=\"unauthenticated\" (no or bad credentials), \"permission_denied\" (a caller not allowed).",
        );

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

        let flush = FlushCounters::register(&recorder);
        let metrics = Self {
            rpc_durations: rpc::rpc_histograms(),
            store: StoreMetrics::register(&recorder, store_backend),
            flush_rows_written: flush.rows_written,
            flush_batches: flush.batches,
            flush_retries: flush.retries,
            store_write_failing: flush.store_write_failing,
            flush_progress: FlushProgress::register(&recorder),
            queue_delay: register_gauge(
                &recorder,
                "readstates_runtime_queue_delay_seconds",
                Some(Unit::Seconds),
                "How long a task last waited for a runtime worker (the overload signal of limits.max_queue_delay_ms).",
            ),
            auth_refused_unauthenticated: auth_refused("unauthenticated"),
            auth_refused_permission_denied: auth_refused("permission_denied"),
            tls_handshake_failures: counter(
                "readstates_tls_handshake_failures_total",
                "TLS handshakes on the gRPC port that failed (plaintext, a certificate from another CA) or timed out.",
            ),
            lease_renewal_failures: counter(
                "readstates_version_lease_renewal_failures_total",
                "Failed or timed-out renewals of the version lease in the store (retried with backoff).",
            ),
            tombstones_purged: counter(
                "readstates_tombstones_purged_total",
                "Deletion tombstones purged from the store.",
            ),
            cluster_owned_slots: gauge(
                "readstates_cluster_owned_slots",
                "Slots whose users this instance serves now (cluster.enabled).",
            ),
            cluster_lease_renewals: LeaseRenewals::register(&recorder),
            cluster_handoffs: HandoffMetrics::register(&recorder),
            cluster_forwards: Forwards::register(&recorder),
            connections: ConnectionMetrics::register(&recorder),
            cache: CacheMetrics::register(&recorder),
            cache_source: OnceLock::new(),
            process_resident_memory: register_gauge(
                &recorder,
                "readstates_process_resident_memory_bytes",
                Some(Unit::Bytes),
                "Resident memory of the process.",
            ),
            handle,
        };
        Arc::new(metrics)
    }

    /// Registers the source of the cache's figures, read at each scrape.
    /// A server has one cache: a second registration is a bug, and is
    /// ignored.
    pub fn register_cache<Source: CacheGauges + 'static>(&self, source: Arc<Source>) {
        let first = self.cache_source.set(source).is_ok();
        debug_assert!(first, "a second cache registered with one server's metrics");
    }

    /// Gathers the cache's counters and gauges, then renders everything in
    /// the Prometheus text format.
    pub fn render(&self) -> String {
        self.collect();
        let mut text = self.handle.render();
        self.render_histograms(&mut text);
        text
    }

    fn collect(&self) {
        let figures = self.cache_source.get().map(|source| source.cache_figures());
        if let Some(figures) = &figures {
            self.cache.set(figures);
        }
        let bucket_lag = figures.map_or(Duration::ZERO, |figures| figures.flush_lag);
        self.flush_progress.collect(bucket_lag);
        if let Some(bytes) = resident_memory_bytes() {
            self.process_resident_memory.set(bytes as f64);
        }
        self.handle.run_upkeep();
    }

    fn render_histograms(&self, out: &mut String) {
        self.render_rpc(out);
        self.store.render(out);
        self.flush_progress.render(out);
        self.cluster_handoffs.render(out);
        self.cluster_forwards.render(out);
    }
}

/// Describes and registers the unlabelled counter `name`.
fn register_counter(
    recorder: &PrometheusRecorder,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
) -> Counter {
    recorder.describe_counter(name.into(), unit, help.into());
    recorder.register_counter(&Key::from_static_name(name), &METADATA)
}

/// Describes the counter `name`, whose one label is `label`, and returns
/// what registers it for one value of the label (one counter per value,
/// registered once, so recording never looks a label up).
fn labelled_counter<'a>(
    recorder: &'a PrometheusRecorder,
    name: &'static str,
    label: &'static str,
    help: &'static str,
) -> impl Fn(&'static str) -> Counter + 'a {
    recorder.describe_counter(name.into(), None, help.into());
    move |value| {
        recorder.register_counter(
            &Key::from_parts(name, vec![Label::new(label, value)]),
            &METADATA,
        )
    }
}

/// Describes and registers the unlabelled gauge `name`.
fn register_gauge(
    recorder: &PrometheusRecorder,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
) -> Gauge {
    recorder.describe_gauge(name.into(), unit, help.into());
    recorder.register_gauge(&Key::from_static_name(name), &METADATA)
}

/// Returns the process's resident memory, from `/proc/self/statm`.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * 4096)
}
