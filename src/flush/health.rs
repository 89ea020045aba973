//! Whether the store takes the write-behind's writes: the last batch write
//! failed and none has landed since. The server reports it through
//! `grpc.health.v1` (see `server`) and `readstates_store_write_failing`.
//!
//! Reads of cached users, and changes until the dirty backlog fills, go on
//! while writes fail, so this is a separate signal from the service's own
//! health: an outage of the store alone must not take every instance out
//! of a load balancer's rotation.

use metrics::Gauge;
use tokio::sync::watch;

/// The write-behind's view of the store, shared by its batch writers.
pub struct WriteHealth {
    failing: watch::Sender<bool>,
    gauge: Gauge,
}

impl WriteHealth {
    /// Starts out healthy: nothing has failed yet.
    pub fn new(gauge: Gauge) -> Self {
        gauge.set(0.0);
        Self {
            failing: watch::Sender::new(false),
            gauge,
        }
    }

    /// Records a batch write that landed.
    pub fn written(&self) {
        self.set(false);
    }

    /// Records a batch write that failed (it will be retried).
    pub fn failed(&self) {
        self.set(true);
    }

    /// Returns a receiver that sees each change: true while writes fail.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.failing.subscribe()
    }

    fn set(&self, failing: bool) {
        let changed = self.failing.send_if_modified(|current| {
            let changed = *current != failing;
            *current = failing;
            changed
        });
        if changed {
            self.gauge.set(if failing { 1.0 } else { 0.0 });
            if failing {
                tracing::warn!("the store refuses writes: dirty read states are kept and retried");
            } else {
                tracing::info!("the store takes writes again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_seen_until_a_write_lands() {
        let health = WriteHealth::new(Gauge::noop());
        let mut failing = health.subscribe();
        assert!(!*failing.borrow_and_update());
        health.failed();
        assert!(failing.has_changed().unwrap_or(false));
        assert!(*failing.borrow_and_update());
        health.failed();
        assert!(
            !failing.has_changed().unwrap_or(true),
            "no change, no wake-up"
        );
        health.written();
        assert!(!*failing.borrow_and_update());
    }
}
