//! What the measured phases record: the latencies, server CPU and cache
//! misses of each read phase and of each mode's fan-outs, and the figures
//! derived from them (per state, per user, scaling across sizes).

use std::time::Duration;

use super::Mode;
use super::cpu::CpuSpent;

/// Latencies of one phase's calls.
#[derive(Debug, Clone, Default)]
pub(super) struct Latencies(pub(super) Vec<Duration>);

impl Latencies {
    /// Nearest-rank percentile (`q` in 0..=1), in microseconds.
    pub(super) fn quantile_us(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e6
    }

    pub(super) fn max_us(&self) -> f64 {
        self.0
            .iter()
            .max()
            .map_or(0.0, |max| max.as_secs_f64() * 1e6)
    }
}

/// One measured read phase.
pub(super) struct ReadResult {
    /// `get_cold` or `get_cached`.
    pub(super) kind: &'static str,
    pub(super) size: u64,
    pub(super) latencies: Latencies,
    pub(super) cpu: CpuSpent,
    /// Cache misses the server counted during the phase.
    pub(super) misses: Option<f64>,
}

impl ReadResult {
    pub(super) fn states(&self) -> u64 {
        self.size * self.latencies.0.len() as u64
    }

    pub(super) fn cpu_us_per_state(&self) -> f64 {
        self.cpu.ns as f64 / 1e3 / self.states().max(1) as f64
    }

    pub(super) fn p50_us_per_state(&self) -> f64 {
        self.latencies.quantile_us(0.5) / self.size as f64
    }

    pub(super) fn cpu_us_per_call(&self) -> f64 {
        self.cpu.ns as f64 / 1e3 / self.latencies.0.len().max(1) as f64
    }
}

/// A read phase compared with the other sizes of its kind.
pub(super) struct Scaling {
    /// Per-state CPU over the smallest size's (1 = linear).
    pub(super) cpu_x: f64,
    /// Per-state p50 latency over the smallest size's.
    pub(super) lat_x: f64,
    /// What each state past the next smaller size's cost, per call:
    /// (cost(S) - cost(S')) / (S - S'), which leaves out the fixed cost of a
    /// call; growing with S means worse than linear. `None` for the smallest.
    pub(super) marginal_cpu_us: Option<f64>,
    pub(super) marginal_p50_us: Option<f64>,
}

impl Scaling {
    pub(super) fn of(reads: &[ReadResult], index: usize) -> Self {
        let read = &reads[index];
        let same_kind = || reads.iter().filter(|other| other.kind == read.kind);
        let base = same_kind().next().unwrap_or(read);
        let previous = reads[..index].iter().rfind(|other| other.kind == read.kind);
        let marginal = |cost: fn(&ReadResult) -> f64| {
            previous.map(|previous| {
                (cost(read) - cost(previous)) / (read.size - previous.size).max(1) as f64
            })
        };
        Self {
            cpu_x: read.cpu_us_per_state() / base.cpu_us_per_state().max(1e-9),
            lat_x: read.p50_us_per_state() / base.p50_us_per_state().max(1e-9),
            marginal_cpu_us: marginal(ReadResult::cpu_us_per_call),
            marginal_p50_us: marginal(|read| read.latencies.quantile_us(0.5)),
        }
    }
}

/// The measured fan-outs of one mode.
pub(super) struct FanoutResult {
    pub(super) mode: Mode,
    pub(super) users: u64,
    /// Calls each fan-out was split into.
    pub(super) calls: usize,
    pub(super) latencies: Latencies,
    /// Up to each call's answer.
    pub(super) cpu_call: CpuSpent,
    /// Up to every deferred mention merged (without states), less the
    /// metric scrapes; `None` without --metrics-addr.
    pub(super) cpu_total_ns: Option<f64>,
    /// How long the deferred mentions took to drain after each answer.
    pub(super) drains: Vec<Duration>,
    pub(super) scrapes: u64,
    pub(super) misses: Option<f64>,
}

impl FanoutResult {
    pub(super) fn fanouts(&self) -> u64 {
        self.latencies.0.len() as u64
    }

    pub(super) fn cpu_call_us_per_user(&self) -> f64 {
        self.cpu_call.ns as f64 / 1e3 / (self.users * self.fanouts()).max(1) as f64
    }

    pub(super) fn cpu_total_us_per_user(&self) -> Option<f64> {
        self.cpu_total_ns
            .map(|ns| ns / 1e3 / (self.users * self.fanouts()).max(1) as f64)
    }
}
