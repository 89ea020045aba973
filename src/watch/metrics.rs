//! The change streams' metrics: streams open, subscriptions, events sent,
//! resets, subscriptions that fell behind, ends by reason, and the delivery
//! lag from a change's application to its event leaving the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::outbox::EndReason;
use crate::metrics::{AtomicHistogram, Counter, Gauge, LATENCY_BUCKETS, Metrics};

/// The change streams' handles.
#[derive(Clone)]
pub struct WatchMetrics {
    /// Streams open, as [`WatchMetrics::try_open_stream`] counts them.
    open_streams: Arc<AtomicUsize>,
    streams: Gauge,
    pub subscriptions: Gauge,
    pub events: Counter,
    pub resets: Counter,
    pub fell_behind: Counter,
    /// Indexed by [`EndReason`].
    ended: [Counter; EndReason::VALUES.len()],
    pub delivery_lag: Arc<AtomicHistogram>,
}

impl WatchMetrics {
    /// Registers the handles with `metrics`, once per server.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            open_streams: Arc::new(AtomicUsize::new(0)),
            streams: metrics.gauge(
                "readstates_watch_streams",
                None,
                "WatchReadStates streams open.",
            ),
            subscriptions: metrics.gauge(
                "readstates_watch_subscriptions",
                None,
                "Subscriptions of users on WatchReadStates streams (a user with two subscribers counts twice).",
            ),
            events: metrics.counter(
                "readstates_watch_events_total",
                "Events sent on WatchReadStates streams: catch-ups, changes, deletions and ends.",
            ),
            resets: metrics.counter(
                "readstates_watch_resets_total",
                "Catch-ups sent as resets (every state, replacing the subscriber's copy): the difference since its version could not be proved complete.",
            ),
            fell_behind: metrics.counter(
                "readstates_watch_fell_behind_total",
                "Times a subscription fell behind its stream's buffer (watch.buffer_events): its events were dropped and it was caught up again from its last version.",
            ),
            ended: metrics.counters(
                "readstates_watch_ended_total",
                "reason",
                "Subscriptions the server ended, by reason: \"moved\" (the user's slot moved to another instance), \"not_served\" (subscribed at an instance that does not serve the user), \"shutting_down\", \"unavailable\" (the user could not be loaded).",
                EndReason::VALUES,
            ),
            delivery_lag: metrics.histogram(
                "readstates_watch_delivery_lag_seconds",
                "Time from a change's application to its event being handed to the stream's connection.",
                LATENCY_BUCKETS,
            ),
        }
    }

    /// Handles that record nothing, for tests.
    pub fn noop() -> Self {
        Self {
            open_streams: Arc::new(AtomicUsize::new(0)),
            streams: Gauge::noop(),
            subscriptions: Gauge::noop(),
            events: Counter::noop(),
            resets: Counter::noop(),
            fell_behind: Counter::noop(),
            ended: std::array::from_fn(|_| Counter::noop()),
            delivery_lag: Arc::new(AtomicHistogram::new(LATENCY_BUCKETS)),
        }
    }

    /// Counts a stream open, unless `max` are open already; it counts until
    /// the returned guard is dropped.
    pub fn try_open_stream(&self, max: usize) -> Result<OpenStream, usize> {
        let before = self.open_streams.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.open_streams.fetch_sub(1, Ordering::Relaxed);
            return Err(before);
        }
        self.streams.increment(1.0);
        Ok(OpenStream {
            count: Arc::clone(&self.open_streams),
            gauge: self.streams.clone(),
        })
    }

    /// Counts a subscription ended for `reason`.
    pub fn ended(&self, reason: EndReason) {
        self.ended[reason as usize].increment(1);
    }
}

/// One stream counted open.
pub struct OpenStream {
    count: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }
}
