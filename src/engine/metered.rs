//! A store wrapper that times every operation, counts failures, and runs
//! each operation in a `store` tracing span (a child of the calling RPC's
//! span): `readstates_store_operation_duration_seconds{operation,backend}`
//! and `readstates_store_errors_total{operation,backend,class}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::{
    AtomicHistogram, Counter, Histograms, LATENCY_BUCKETS, Metrics, render_histograms,
};
use crate::store::{ErrorClass, Operation, Store, StoreError, StoreFuture, StoreLayer};

const STORE_DURATION: &str = "readstates_store_operation_duration_seconds";
const STORE_ERRORS: &str = "readstates_store_errors_total";

/// Any store, measured.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    measures: Arc<StoreMeasures>,
}

impl MeteredStore {
    /// Wraps `inner`, registering its measures with `metrics` (one metered
    /// store per server).
    pub fn new(inner: Arc<dyn Store>, metrics: &Metrics) -> Self {
        let measures = StoreMeasures::register(metrics, inner.backend());
        Self { inner, measures }
    }

    fn measure<'a, T: 'a>(
        &'a self,
        operation: StoreOperation,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        let span =
            tracing::debug_span!("store", operation = ?operation, backend = self.inner.backend());
        Box::pin(
            async move {
                let started = Instant::now();
                let result = call.await;
                self.measures
                    .record(operation, started.elapsed(), result.as_ref().err());
                if let Err(error) = &result {
                    tracing::debug!(%error, "store operation failed");
                }
                result
            }
            .instrument(span),
        )
    }
}

impl StoreLayer for MeteredStore {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    /// Measures every operation but the tombstone purge.
    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        let measured = match operation {
            Operation::LoadUser { .. } => StoreOperation::LoadUser,
            Operation::WriteBatch { .. } => StoreOperation::WriteBatch,
            Operation::LoadVersionFloor => StoreOperation::LoadVersionFloor,
            Operation::RecordVersionFloor { .. } => StoreOperation::RecordVersionFloor,
            Operation::Sync => StoreOperation::Sync,
            Operation::PurgeTombstones { .. } => return call(self.inner()),
        };
        // Started here, as the inner store's own call would be.
        self.measure(measured, call(self.inner()))
    }
}

/// The operations measured: the `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreOperation {
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

/// The `class` label of a failure, in the order of its counters.
const CLASSES: [ErrorClass; 2] = [ErrorClass::Retryable, ErrorClass::Permanent];

/// The latency of each operation, and its failures by class.
struct StoreMeasures {
    backend: &'static str,
    /// Indexed by operation.
    durations: Box<[AtomicHistogram]>,
    /// Indexed by `operation * CLASSES.len() + class`.
    errors: Box<[Counter]>,
}

impl StoreMeasures {
    fn register(metrics: &Metrics, backend: &'static str) -> Arc<Self> {
        metrics.describe_counter(
            STORE_ERRORS,
            "Failed store operations, by operation, backend and class (retryable or permanent).",
        );
        let errors = StoreOperation::ALL
            .iter()
            .flat_map(|operation| CLASSES.map(|class| (operation, class)))
            .map(|(operation, class)| {
                metrics.counter_with(
                    STORE_ERRORS,
                    &[
                        ("operation", operation.name()),
                        ("backend", backend),
                        ("class", class.name()),
                    ],
                )
            })
            .collect();
        let measures = Arc::new(Self {
            backend,
            durations: StoreOperation::ALL
                .iter()
                .map(|_| AtomicHistogram::new(LATENCY_BUCKETS))
                .collect(),
            errors,
        });
        metrics.register_histograms(Arc::clone(&measures) as Arc<dyn Histograms>);
        measures
    }

    fn record(&self, operation: StoreOperation, elapsed: Duration, failure: Option<&StoreError>) {
        self.durations[operation as usize].record_duration(elapsed);
        if let Some(error) = failure {
            let class_index = match error.class() {
                ErrorClass::Retryable => 0,
                ErrorClass::Permanent => 1,
            };
            debug_assert_eq!(CLASSES[class_index], error.class());
            self.errors[operation as usize * CLASSES.len() + class_index].increment(1);
        }
    }
}

impl Histograms for StoreMeasures {
    fn render(&self, out: &mut String) {
        let members = StoreOperation::ALL.into_iter().map(|operation| {
            let labels = format!(
                "operation=\"{}\",backend=\"{}\"",
                operation.name(),
                self.backend
            );
            (labels, &self.durations[operation as usize])
        });
        render_histograms(
            out,
            STORE_DURATION,
            "Store operation latency, by operation and backend.",
            members,
        );
    }
}
