//! A fixed-bucket histogram of atomic counters, rendered in the Prometheus
//! text format.
//!
//! Recording is a bucket search and three relaxed atomic adds: no lock, no
//! allocation, so it is safe on the request path. (The exporter's own
//! histograms queue samples in blocks that are allocated as they fill and
//! drained only on render.)

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of latency buckets: microseconds for cache
/// hits up to seconds for slow store calls.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of row-count buckets (flush batch sizes).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0,
];

/// A histogram with fixed bucket bounds.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One counter per bound, plus the +Inf bucket (not cumulative).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum, in nanounits (nanoseconds for latencies), to stay integral.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// Creates an empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records a duration.
    pub fn record_duration(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.record_nanos(elapsed.as_secs_f64(), nanos);
    }

    /// Records a plain value (e.g. a row count).
    pub fn record_value(&self, value: u64) {
        self.record_nanos(value as f64, value.saturating_mul(1_000_000_000));
    }

    fn record_nanos(&self, value: f64, nanos: u64) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Returns the number of samples.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the `_bucket`, `_sum` and `_count` series of this histogram
    /// with the given labels (`key="value",...` or empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (index, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_cumulative_buckets() {
        let histogram = AtomicHistogram::new(LATENCY_BUCKETS);
        histogram.record_duration(Duration::from_micros(3));
        histogram.record_duration(Duration::from_micros(5));
        histogram.record_duration(Duration::from_millis(30));
        histogram.record_duration(Duration::from_secs(60));
        let mut text = String::new();
        histogram.render("rpc_seconds", "method=\"Ack\"", &mut text);
        assert!(
            text.contains("rpc_seconds_bucket{method=\"Ack\",le=\"0.000002\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_bucket{method=\"Ack\",le=\"0.000005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_bucket{method=\"Ack\",le=\"0.025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_bucket{method=\"Ack\",le=\"0.05\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_bucket{method=\"Ack\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_count{method=\"Ack\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_sum{method=\"Ack\"} 60.030008\n"),
            "{text}"
        );
        assert_eq!(histogram.count(), 4);
    }

    #[test]
    fn values_render_without_labels() {
        let histogram = AtomicHistogram::new(SIZE_BUCKETS);
        histogram.record_value(7);
        let mut text = String::new();
        histogram.render("batch_rows", "", &mut text);
        assert!(text.contains("batch_rows_bucket{le=\"10\"} 1\n"), "{text}");
        assert!(text.contains("batch_rows_sum 7\n"), "{text}");
    }
}
