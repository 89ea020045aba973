//! The store's operations: their latency,
//! `readstates_store_operation_duration_seconds{operation,backend}`, and
//! their failures, `readstates_store_errors_total{operation,backend,class}`.
//!
//! The error class is this module's own [`StoreErrorClass`], not the
//! store's: the store room maps its errors to it, so that metrics, a floor
//! below the store's wrappers, imports nothing of the store.

use std::fmt::Write as _;
use std::time::Duration;

use metrics::{Counter, Key, Label, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::{AtomicHistogram, LATENCY_BUCKETS, METADATA, Metrics};

const STORE_DURATION: &str = "readstates_store_operation_duration_seconds";
const STORE_ERRORS: &str = "readstates_store_errors_total";

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

/// The `class` label of a failed store operation: whether retrying it can
/// succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorClass {
    /// The same operation may succeed later.
    Retryable,
    /// Retrying repeats the failure until someone changes something.
    Permanent,
}

impl StoreErrorClass {
    /// In declaration order: a class's index among the error counters.
    const ALL: [StoreErrorClass; 2] = [StoreErrorClass::Retryable, StoreErrorClass::Permanent];

    fn name(self) -> &'static str {
        match self {
            StoreErrorClass::Retryable => "retryable",
            StoreErrorClass::Permanent => "permanent",
        }
    }
}

/// The store operations' histograms and error counters, of one backend.
pub(super) struct StoreMetrics {
    backend: &'static str,
    /// Indexed by `operation`.
    durations: Box<[AtomicHistogram]>,
    /// Indexed by `operation * StoreErrorClass::ALL.len() + class`.
    errors: Box<[Counter]>,
}

impl StoreMetrics {
    /// Registers the error counters of `backend` with `recorder`.
    pub(super) fn register(recorder: &PrometheusRecorder, backend: &'static str) -> Self {
        recorder.describe_counter(
            STORE_ERRORS.into(),
            None,
            "Failed store operations, by operation, backend and class (retryable or permanent)."
                .into(),
        );
        let errors = StoreOperation::ALL
            .iter()
            .flat_map(|operation| StoreErrorClass::ALL.map(|class| (operation, class)))
            .map(|(operation, class)| {
                let labels = vec![
                    Label::new("operation", operation.name()),
                    Label::new("backend", backend),
                    Label::new("class", class.name()),
                ];
                recorder.register_counter(&Key::from_parts(STORE_ERRORS, labels), &METADATA)
            })
            .collect();
        Self {
            backend,
            durations: StoreOperation::ALL
                .iter()
                .map(|_| AtomicHistogram::new(LATENCY_BUCKETS))
                .collect(),
            errors,
        }
    }

    /// Appends the latency histograms in the Prometheus text format.
    pub(super) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {STORE_DURATION} Store operation latency, by operation and backend.\n# TYPE {STORE_DURATION} histogram"
        );
        for operation in StoreOperation::ALL {
            let labels = format!(
                "operation=\"{}\",backend=\"{}\"",
                operation.name(),
                self.backend
            );
            self.durations[operation as usize].render(STORE_DURATION, &labels, out);
        }
    }
}

impl Metrics {
    /// Records one store operation, and its failure's class if it failed.
    pub fn record_store(
        &self,
        operation: StoreOperation,
        elapsed: Duration,
        failure: Option<StoreErrorClass>,
    ) {
        let store = &self.store;
        store.durations[operation as usize].record_duration(elapsed);
        if let Some(class) = failure {
            debug_assert_eq!(StoreErrorClass::ALL[class as usize], class);
            let index = operation as usize * StoreErrorClass::ALL.len() + class as usize;
            store.errors[index].increment(1);
        }
    }
}
