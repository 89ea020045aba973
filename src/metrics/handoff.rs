//! The metrics of slot handoffs (`cluster.enabled`): how each ended, how
//! long it took, and the users it wrote; and the slots lost without one.

use std::fmt::Write as _;
use std::sync::Arc;

use metrics::{Counter, Key, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::{AtomicHistogram, LATENCY_BUCKETS, METADATA, labelled_counter};

const HANDOFFS: &str = "readstates_cluster_handoffs_total";
const DURATION: &str = "readstates_cluster_handoff_duration_seconds";
const USERS_WRITTEN: &str = "readstates_cluster_handoff_users_written_total";
const SLOTS_LOST: &str = "readstates_cluster_slots_lost_total";

/// The handoff metrics' handles.
#[derive(Clone)]
pub struct HandoffMetrics {
    /// Handoffs that wrote everything, so the leases were released.
    pub completed: Counter,
    /// Handoffs past `cluster.handoff_timeout_ms`.
    pub timed_out: Counter,
    /// Handoffs a store error stopped.
    pub failed: Counter,
    /// Users whose dirty states or deferred mentions a handoff wrote.
    pub users_written: Counter,
    /// Slots that stopped being served without a handoff (a lease that
    /// lapsed unrenewed, or was found taken).
    pub slots_lost: Counter,
    /// How long each handoff took, whatever its result.
    pub duration: Arc<AtomicHistogram>,
}

impl Default for HandoffMetrics {
    /// Handles that record nothing anyone reads.
    fn default() -> Self {
        Self {
            completed: Counter::noop(),
            timed_out: Counter::noop(),
            failed: Counter::noop(),
            users_written: Counter::noop(),
            slots_lost: Counter::noop(),
            duration: Arc::new(AtomicHistogram::new(LATENCY_BUCKETS)),
        }
    }
}

impl HandoffMetrics {
    /// Registers the counters with `recorder`.
    pub(super) fn register(recorder: &PrometheusRecorder) -> Self {
        let handoffs = labelled_counter(
            recorder,
            HANDOFFS,
            "result",
            "Slot handoffs (cluster.enabled), by result: \"completed\" (the slots' users written, then their leases released), \"timed_out\" (past cluster.handoff_timeout_ms) or \"failed\" (a store error); the last two keep the leases until they run out and leave the users to the write-behind.",
        );
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
            recorder.register_counter(&Key::from_static_name(name), &METADATA)
        };
        Self {
            completed: handoffs("completed"),
            timed_out: handoffs("timed_out"),
            failed: handoffs("failed"),
            users_written: counter(
                USERS_WRITTEN,
                "Users whose dirty states or deferred mentions a slot handoff wrote.",
            ),
            slots_lost: counter(
                SLOTS_LOST,
                "Slots that stopped being served without a handoff (a lease lapsed unrenewed, or found taken): their users were evicted and their dirty states left to the write-behind.",
            ),
            duration: Arc::new(AtomicHistogram::new(LATENCY_BUCKETS)),
        }
    }

    /// Appends the duration histogram in the Prometheus text format.
    pub(super) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {DURATION} How long slot handoffs took, whatever their result.\n# TYPE {DURATION} histogram"
        );
        self.duration.render(DURATION, "", out);
    }
}
