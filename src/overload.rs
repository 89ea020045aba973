//! The request workers' queueing delay, as the overload signal.
//!
//! When the server is short of CPU, calls wait for a runtime worker before
//! their handler runs, and a limit on calls in flight does not see that
//! wait: the count only starts once a handler runs. A probe task sleeps for a
//! short period over and over and measures how late it wakes; that lateness
//! is the time a task waits for a worker, the same wait every queued call
//! pays. Past `limits.max_queue_delay_ms`, new calls are refused at once with
//! `RESOURCE_EXHAUSTED`, which costs far less CPU than serving them, so the
//! queue drains and the calls that are admitted stay fast.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::{Gauge, Metrics, Unit};
use tokio_util::sync::CancellationToken;

/// How often the probe measures.
const PROBE_PERIOD: Duration = Duration::from_millis(5);

/// Registers `readstates_runtime_queue_delay_seconds` with `metrics`
/// (read 0 while the probe does not run), once per server.
pub fn queue_delay_gauge(metrics: &Metrics) -> Gauge {
    metrics.gauge(
        "readstates_runtime_queue_delay_seconds",
        Some(Unit::Seconds),
        "How long a task last waited for a runtime worker (the overload signal of limits.max_queue_delay_ms).",
    )
}

/// The latest measured queueing delay of the runtime's workers.
#[derive(Debug, Default)]
pub struct QueueDelay {
    micros: AtomicU64,
}

impl QueueDelay {
    /// Starts the probe on the current runtime, until `stop` is cancelled;
    /// each measurement is also set on `gauge` (in seconds).
    pub fn spawn(gauge: Gauge, stop: CancellationToken) -> Arc<Self> {
        let delay = Arc::new(Self::default());
        let probe = Arc::clone(&delay);
        tokio::spawn(async move {
            loop {
                let asleep = Instant::now();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(PROBE_PERIOD) => {}
                }
                let late = asleep.elapsed().saturating_sub(PROBE_PERIOD);
                probe.set(late);
                gauge.set(late.as_secs_f64());
            }
        });
        delay
    }

    /// Records a measurement.
    pub fn set(&self, late: Duration) {
        let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.micros.store(micros, Ordering::Relaxed);
    }

    /// The latest measurement.
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_worker_shows_as_queueing_delay() {
        let stop = CancellationToken::new();
        let delay = QueueDelay::spawn(Gauge::noop(), stop.clone());
        // Let the probe start sleeping, then keep the only worker busy for
        // far longer than its period: it wakes that much late.
        tokio::time::sleep(Duration::from_millis(1)).await;
        std::thread::sleep(Duration::from_millis(200));
        let mut most = Duration::ZERO;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            most = most.max(delay.get());
        }
        assert!(
            most >= Duration::from_millis(100),
            "measured at most {most:?}"
        );
        stop.cancel();
    }
}
