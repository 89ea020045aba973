//! A store wrapper that delays every load and batch write by a random
//! latency, for measuring how the service's tail follows a slow store's:
//! a cluster store's round trips, modelled on the embedded store on one
//! machine. Off unless `store.injected_latency_median_ms` is set; not for
//! production.
//!
//! Latencies are log-normal, the usual shape of a network store's: the
//! configured median and p99 fix the distribution, and a draw is capped at
//! [`CAP_TIMES_P99`] times the p99 so that one draw from the far tail does
//! not stand for a timeout the driver would have cut short.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Operation, Store, StoreFuture, StoreLayer};

/// The standard normal quantile of 0.99.
const Z_99: f64 = 2.326_347_874;

/// A draw is capped at this many times the p99.
const CAP_TIMES_P99: f64 = 4.0;

/// Any store, slowed down.
pub struct DelayedStore {
    inner: Arc<dyn Store>,
    latency: LogNormal,
}

impl DelayedStore {
    /// Wraps `inner`, delaying its loads and writes by latencies of the
    /// given median and p99 (`p99 >= median > 0`).
    pub fn new(inner: Arc<dyn Store>, median: Duration, p99: Duration) -> Self {
        Self {
            inner,
            latency: LogNormal::new(median, p99),
        }
    }
}

impl StoreLayer for DelayedStore {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    /// Delays loads and batch writes; the other operations are the inner
    /// store's own.
    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if !matches!(
            operation,
            Operation::LoadUser { .. } | Operation::WriteBatch { .. }
        ) {
            return call(self.inner());
        }
        let delay = self.latency.sample();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            call(self.inner()).await
        })
    }
}

/// A capped log-normal distribution of latencies, drawn with a lock-free
/// xorshift generator (statistical quality is ample for a delay).
struct LogNormal {
    mu: f64,
    sigma: f64,
    cap_secs: f64,
    state: AtomicU64,
}

impl LogNormal {
    fn new(median: Duration, p99: Duration) -> Self {
        let median = median.as_secs_f64().max(1e-6);
        let p99 = p99.as_secs_f64().max(median);
        Self {
            mu: median.ln(),
            sigma: (p99 / median).ln() / Z_99,
            cap_secs: p99 * CAP_TIMES_P99,
            state: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
        }
    }

    /// Returns a uniform draw in (0, 1).
    fn uniform(&self) -> f64 {
        let mut next = 0;
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mut x| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                next = x;
                Some(x)
            });
        ((next >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&self) -> Duration {
        // Box-Muller: one standard normal draw from two uniforms.
        let normal = (-2.0 * self.uniform().ln()).sqrt()
            * (2.0 * std::f64::consts::PI * self.uniform()).cos();
        let secs = (self.mu + self.sigma * normal).exp().min(self.cap_secs);
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_the_configured_median_and_p99() {
        let latency = LogNormal::new(Duration::from_millis(1), Duration::from_millis(50));
        let mut draws: Vec<f64> = (0..200_000)
            .map(|_| latency.sample().as_secs_f64() * 1e3)
            .collect();
        draws.sort_by(f64::total_cmp);
        let quantile = |q: f64| draws[(q * draws.len() as f64) as usize];
        let (median, p99) = (quantile(0.5), quantile(0.99));
        assert!((0.9..1.1).contains(&median), "median {median} ms");
        assert!((42.0..58.0).contains(&p99), "p99 {p99} ms");
        assert!(draws[draws.len() - 1] <= 200.0 + 1e-9, "capped at 4 x p99");
    }
}
