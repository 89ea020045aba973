//! The metrics of calls forwarded to their slot's owner (`cluster.enabled`):
//! `readstates_cluster_forwards_total{result}` and the latency histogram
//! `readstates_cluster_forward_duration_seconds`. A fan-out split over
//! several owners counts one forward per owner.

use std::fmt::Write as _;
use std::time::Duration;

use metrics::Counter;
use metrics_exporter_prometheus::PrometheusRecorder;

use super::histogram::{AtomicHistogram, LATENCY_BUCKETS};
use super::labelled_counter;

const FORWARDS: &str = "readstates_cluster_forwards_total";
const FORWARD_DURATION: &str = "readstates_cluster_forward_duration_seconds";

/// How a forward ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardResult {
    /// The owner answered OK.
    Ok,
    /// The owner answered with an error status, passed to the caller.
    Error,
    /// The owner could not be reached (no connection, or it broke).
    Unreachable,
    /// No answer within the caller's deadline or `cluster.forward_timeout_ms`.
    Timeout,
}

/// Forwarded calls, by result, and their latency.
pub struct Forwards {
    ok: Counter,
    error: Counter,
    unreachable: Counter,
    timeout: Counter,
    duration: AtomicHistogram,
}

impl Forwards {
    pub(super) fn register(recorder: &PrometheusRecorder) -> Self {
        let counter = labelled_counter(
            recorder,
            FORWARDS,
            "result",
            "Calls (or fan-out parts) forwarded to the instance holding their slot (cluster.enabled): result=\"ok\", \"error\" (the owner's error status, passed through), \"unreachable\" (no connection to the owner), \"timeout\" (no answer within the deadline).",
        );
        Self {
            ok: counter("ok"),
            error: counter("error"),
            unreachable: counter("unreachable"),
            timeout: counter("timeout"),
            duration: AtomicHistogram::new(LATENCY_BUCKETS),
        }
    }

    /// Records one forward that ended with `result` after `elapsed`.
    pub fn record(&self, result: ForwardResult, elapsed: Duration) {
        let counter = match result {
            ForwardResult::Ok => &self.ok,
            ForwardResult::Error => &self.error,
            ForwardResult::Unreachable => &self.unreachable,
            ForwardResult::Timeout => &self.timeout,
        };
        counter.increment(1);
        self.duration.record_duration(elapsed);
    }

    pub(super) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {FORWARD_DURATION} Latency of calls forwarded to their slot's owner, whatever their result.\n# TYPE {FORWARD_DURATION} histogram"
        );
        self.duration.render(FORWARD_DURATION, "", out);
    }
}
