//! The cluster's metrics (`cluster.enabled`): the slots served, the lease
//! renewals, the slot handoffs and the slots lost without one, and the
//! calls forwarded to their slot's owner. Registered by every server, so
//! that they read 0 rather than missing without a cluster.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{AtomicHistogram, Counter, Gauge, LATENCY_BUCKETS, Metrics, label_values};

/// The metrics the cluster task keeps.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Slots served, as of the last round.
    pub owned_slots: Gauge,
    pub renewals: LeaseRenewals,
    pub handoffs: HandoffMetrics,
}

impl ClusterMetrics {
    /// Registers the cluster task's handles with `metrics`, once per
    /// server.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            owned_slots: metrics.gauge(
                "readstates_cluster_owned_slots",
                None,
                "Slots whose users this instance serves now (cluster.enabled).",
            ),
            renewals: LeaseRenewals::register(metrics),
            handoffs: HandoffMetrics::register(metrics),
        }
    }
}

impl Default for ClusterMetrics {
    /// Handles that nobody reads: registered in a registry of their own.
    fn default() -> Self {
        Self::register(&Metrics::new())
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

impl LeaseRenewals {
    fn register(metrics: &Metrics) -> Self {
        let [renewed, lost, failed] = metrics.counters(
            "readstates_cluster_lease_renewals_total",
            "result",
            "Renewals of this instance's slot leases (cluster.enabled): result=\"renewed\", \"lost\" (another instance or nobody holds the slot), \"failed\" (an error or timeout; the slot stops being served if its renewals keep failing).",
            ["renewed", "lost", "failed"],
        );
        Self {
            renewed,
            lost,
            failed,
        }
    }
}

/// How slot handoffs ended, how long they took and the users they wrote;
/// and the slots lost without one.
#[derive(Clone)]
pub struct HandoffMetrics {
    pub completed: Counter,
    pub timed_out: Counter,
    pub failed: Counter,
    pub users_written: Counter,
    pub slots_lost: Counter,
    pub duration: Arc<AtomicHistogram>,
}

impl HandoffMetrics {
    fn register(metrics: &Metrics) -> Self {
        let [completed, timed_out, failed] = metrics.counters(
            "readstates_cluster_handoffs_total",
            "result",
            "Slot handoffs (cluster.enabled), by result: \"completed\" (the slots' users written, then their leases released), \"timed_out\" (past cluster.handoff_timeout_ms) or \"failed\" (a store error); the last two keep the leases until they run out and leave the users to the write-behind.",
            ["completed", "timed_out", "failed"],
        );
        Self {
            completed,
            timed_out,
            failed,
            users_written: metrics.counter(
                "readstates_cluster_handoff_users_written_total",
                "Users whose dirty states or deferred mentions a slot handoff wrote.",
            ),
            slots_lost: metrics.counter(
                "readstates_cluster_slots_lost_total",
                "Slots that stopped being served without a handoff (a lease lapsed unrenewed, or found taken): their users were evicted and their dirty states left to the write-behind.",
            ),
            duration: metrics.histogram(
                "readstates_cluster_handoff_duration_seconds",
                "How long slot handoffs took, whatever their result.",
                LATENCY_BUCKETS,
            ),
        }
    }
}

label_values! {
    /// How a forwarded call ended: the `result` label (its counter's index).
    pub enum ForwardResult {
        /// The owner answered OK.
        Ok => "ok",
        /// The owner answered an error status (passed through).
        Error => "error",
        /// No connection to the owner.
        Unreachable => "unreachable",
        /// No answer within the deadline.
        Timeout => "timeout",
    }
}

/// `readstates_cluster_forwards_total{result}` and the latency histogram
/// `readstates_cluster_forward_duration_seconds`. A fan-out split over
/// several owners counts one forward per owner.
pub struct Forwards {
    /// Indexed by [`ForwardResult`].
    results: [Counter; ForwardResult::VALUES.len()],
    duration: Arc<AtomicHistogram>,
}

impl Forwards {
    /// Registers the handles with `metrics`, once per server.
    pub fn register(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            results: metrics.counters(
                "readstates_cluster_forwards_total",
                "result",
                "Calls (or fan-out parts) forwarded to the instance holding their slot (cluster.enabled): result=\"ok\", \"error\" (the owner's error status, passed through), \"unreachable\" (no connection to the owner), \"timeout\" (no answer within the deadline).",
                ForwardResult::VALUES,
            ),
            duration: metrics.histogram(
                "readstates_cluster_forward_duration_seconds",
                "Latency of calls forwarded to their slot's owner, whatever their result.",
                LATENCY_BUCKETS,
            ),
        })
    }

    /// Records one forward.
    pub fn record(&self, result: ForwardResult, elapsed: Duration) {
        self.results[result as usize].increment(1);
        self.duration.record_duration(elapsed);
    }
}
