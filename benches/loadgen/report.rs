//! Recording latencies in HDR histograms and printing the results: overall
//! and per operation kind, errors by code, a per-second series of p99 and
//! max, and the generator's own CPU use.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::workload::OpKind;

/// Latencies are recorded in microseconds, from 1 µs to one minute, with 3
/// significant digits.
const HIGHEST_US: u64 = 60_000_000;

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).context("creating a histogram")
}

fn micros(duration: Duration) -> u64 {
    (duration.as_micros() as u64).clamp(1, HIGHEST_US)
}

/// Every result of one run; shared by the issuing tasks behind a mutex.
pub struct Recorder {
    /// Start of the measurement window (after the warm-up).
    window_start: Instant,
    /// Its length: requests intended to start after it are not recorded.
    window: Duration,
    overall: Histogram<u64>,
    per_kind: Vec<Histogram<u64>>,
    /// One histogram per second of the window, by intended start.
    series: Vec<Histogram<u64>>,
    /// Open loop only: actual dispatch minus intended start.
    dispatch_lag: Histogram<u64>,
    errors: BTreeMap<(String, OpKind), u64>,
    /// The first message seen of each error code (an error is reported as
    /// its code, optionally followed by a tab and the message).
    error_samples: BTreeMap<String, String>,
    /// Requests of the window still in flight when the run ended.
    unfinished: u64,
    ok: u64,
}

impl Recorder {
    pub fn new(window_start: Instant, window: Duration) -> anyhow::Result<Self> {
        let seconds = window.as_secs_f64().ceil() as usize;
        Ok(Self {
            window_start,
            window,
            overall: new_histogram()?,
            per_kind: OpKind::ALL
                .iter()
                .map(|_| new_histogram())
                .collect::<anyhow::Result<_>>()?,
            series: (0..seconds.max(1))
                .map(|_| new_histogram())
                .collect::<anyhow::Result<_>>()?,
            dispatch_lag: new_histogram()?,
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            unfinished: 0,
            ok: 0,
        })
    }

    /// Where in the window `start` falls, or `None` outside it.
    fn offset(&self, start: Instant) -> Option<Duration> {
        let offset = start.checked_duration_since(self.window_start)?;
        (offset < self.window).then_some(offset)
    }

    /// Records one finished request. `start` is the intended start (open
    /// loop) or the actual start (closed loop); latency = `done - start`.
    pub fn record(
        &mut self,
        kind: OpKind,
        start: Instant,
        done: Instant,
        result: Result<(), String>,
    ) {
        let Some(offset) = self.offset(start) else {
            return;
        };
        match result {
            Ok(()) => {
                let latency = micros(done.saturating_duration_since(start));
                self.ok += 1;
                // Values are clamped into the histogram's range, so these
                // cannot fail.
                let _ = self.overall.record(latency);
                let _ = self.per_kind[kind.index()].record(latency);
                if let Some(second) = self.series.get_mut(offset.as_secs() as usize) {
                    let _ = second.record(latency);
                }
            }
            Err(error) => {
                let (code, message) = error.split_once('\t').unwrap_or((error.as_str(), ""));
                if !self.error_samples.contains_key(code) {
                    self.error_samples
                        .insert(code.to_owned(), message.to_owned());
                }
                *self.errors.entry((code.to_owned(), kind)).or_insert(0) += 1;
            }
        }
    }

    /// Stores the open-loop scheduler's dispatch lag (actual minus intended
    /// send time), recorded by the scheduler thread itself.
    pub fn set_dispatch_lag(&mut self, lag: Histogram<u64>) {
        self.dispatch_lag = lag;
    }

    /// Counts requests still in flight when the run gave up waiting.
    pub fn record_unfinished(&mut self, count: u64) {
        self.unfinished += count;
    }

    fn error_total(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.unfinished
    }
}

/// CPU time of this process so far, from /proc/self/stat.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    user_ticks: u64,
    system_ticks: u64,
}

impl CpuSample {
    /// This process's CPU time so far.
    pub fn now() -> anyhow::Result<Self> {
        Self::read("/proc/self/stat")
    }

    /// Another process's CPU time so far (all its threads).
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        Self::read(&format!("/proc/{pid}/stat"))
    }

    fn read(path: &str) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        // The command name (field 2) is in parentheses and may hold spaces:
        // count fields after the last ')'. utime and stime are fields 14 and
        // 15, i.e. the 12th and 13th after it.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .with_context(|| format!("unexpected {path} format"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |index: usize| -> anyhow::Result<u64> {
            fields
                .get(index)
                .with_context(|| format!("short {path}"))?
                .parse()
                .with_context(|| format!("parsing {path}"))
        };
        Ok(Self {
            at: Instant::now(),
            user_ticks: field(11)?,
            system_ticks: field(12)?,
        })
    }
}

/// Busy CPU time of the whole machine so far, from /proc/stat.
#[derive(Debug, Clone, Copy)]
pub struct MachineSample {
    at: Instant,
    busy_ticks: u64,
}

impl MachineSample {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|line| line.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice).
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        let at = |index: usize| ticks.get(index).copied().unwrap_or(0);
        Ok(Self {
            at: Instant::now(),
            busy_ticks: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
        })
    }

    /// Percent of one core the whole machine was busy between two samples.
    pub fn busy_pct_between(before: MachineSample, after: MachineSample) -> f64 {
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
        if wall > 0.0 {
            after.busy_ticks.saturating_sub(before.busy_ticks) as f64 / clock_ticks_per_s() / wall
                * 100.0
        } else {
            0.0
        }
    }
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// A process's CPU use between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// Percent of one core.
    pub user_pct: f64,
    pub system_pct: f64,
    /// Cores this process may run on (its affinity mask).
    pub cores: usize,
}

impl CpuUse {
    pub fn between(before: CpuSample, after: CpuSample) -> Self {
        let ticks_per_s = clock_ticks_per_s();
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
        let pct = |from: u64, to: u64| {
            if wall > 0.0 {
                to.saturating_sub(from) as f64 / ticks_per_s / wall * 100.0
            } else {
                0.0
            }
        };
        Self {
            user_pct: pct(before.user_ticks, after.user_ticks),
            system_pct: pct(before.system_ticks, after.system_ticks),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub fn total_pct(&self) -> f64 {
        self.user_pct + self.system_pct
    }
}

/// What was run, for the report header.
pub struct RunInfo {
    pub target: String,
    pub mode: String,
    pub mix: String,
    pub offered_rate: Option<f64>,
    pub warmup: Duration,
    pub connections: usize,
    pub concurrency: Option<usize>,
    /// Open loop: times the scheduler waited for the in-flight limit.
    pub in_flight_stalls: u64,
    pub max_in_flight_seen: u64,
    /// Open loop: time the scheduler spent spin-waiting, and the part of it
    /// in which nothing else ran (CPU burnt only to keep time).
    pub spin_time: Duration,
    pub idle_spin: Duration,
}

/// Formats microseconds for a table.
fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn row(name: &str, histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return format!("{name:<16} {:>10}", 0);
    }
    format!(
        "{name:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        histogram.len(),
        fmt_us(histogram.value_at_quantile(0.50)),
        fmt_us(histogram.value_at_quantile(0.99)),
        fmt_us(histogram.value_at_quantile(0.999)),
        fmt_us(histogram.max()),
        fmt_us(histogram.mean().round() as u64),
    )
}

/// Prints the full report to stdout, writes the series CSV if asked, and
/// ends with one `SUMMARY key=value ...` line for scripts.
pub fn print(
    info: &RunInfo,
    recorder: &Recorder,
    cpu: CpuUse,
    server_cpu: Option<(u32, CpuUse)>,
    machine_busy_pct: f64,
    series_csv: Option<&Path>,
) -> anyhow::Result<()> {
    let seconds = recorder.window.as_secs_f64();
    let achieved = recorder.ok as f64 / seconds;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {} | {} | mix {} | {}{} | warm-up {:.0}s, measured {:.0}s | {} connection(s)",
        info.target,
        info.mode,
        info.mix,
        info.offered_rate.map_or_else(
            || "closed loop".to_string(),
            |r| format!("offered {r:.0} req/s")
        ),
        info.concurrency
            .map_or_else(String::new, |c| format!(", concurrency {c}")),
        info.warmup.as_secs_f64(),
        seconds,
        info.connections,
    );
    let _ = writeln!(
        out,
        "achieved: {achieved:.0} req/s ({} ok, {} errors)",
        recorder.ok,
        recorder.error_total()
    );
    let _ = writeln!(
        out,
        "generator CPU: {:.1}% of one core (user {:.1}%, sys {:.1}%), {} core(s) available to it",
        cpu.total_pct(),
        cpu.user_pct,
        cpu.system_pct,
        cpu.cores
    );
    let idle_spin_pct = info.idle_spin.as_secs_f64() / seconds * 100.0;
    let gen_busy_pct = (cpu.total_pct() - idle_spin_pct).max(0.0);
    if !info.spin_time.is_zero() {
        let _ = writeln!(
            out,
            "  the scheduler spin-waited {:.1}% of the time; {idle_spin_pct:.1}% of a core was \
             idle spinning (yields with nothing else to run), so the generator's real work \
             was ~{gen_busy_pct:.1}% of one core",
            info.spin_time.as_secs_f64() / seconds * 100.0
        );
    }
    let server_us_per_req = server_cpu.map(|(pid, server)| {
        let per_request = if recorder.ok > 0 {
            server.total_pct() / 100.0 * seconds / recorder.ok as f64 * 1e6
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "server (pid {pid}) CPU: {:.1}% of one core (user {:.1}%, sys {:.1}%), \
             {per_request:.2} us of CPU per successful request",
            server.total_pct(),
            server.user_pct,
            server.system_pct,
        );
        (server.total_pct(), per_request)
    });
    // Everything else that ran meanwhile (other processes, kernel threads):
    // a noisy neighbour shows here.
    let others =
        (machine_busy_pct - cpu.total_pct() - server_us_per_req.map_or(0.0, |(pct, _)| pct))
            .max(0.0);
    let _ = writeln!(
        out,
        "machine: {machine_busy_pct:.1}% of one core busy in all; other processes {others:.1}%{}",
        if server_cpu.is_none() {
            " (server included: no --server-pid)"
        } else {
            ""
        }
    );
    let lag = &recorder.dispatch_lag;
    if !lag.is_empty() {
        let _ = writeln!(
            out,
            "scheduler dispatch lag (actual - intended start): p50 {} p99 {} max {}; \
             in-flight limit stalls {}, most in flight {}",
            fmt_us(lag.value_at_quantile(0.5)),
            fmt_us(lag.value_at_quantile(0.99)),
            fmt_us(lag.max()),
            info.in_flight_stalls,
            info.max_in_flight_seen,
        );
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ok", "p50", "p99", "p99.9", "max", "mean"
    );
    let _ = writeln!(out, "{}", row("all", &recorder.overall));
    for kind in OpKind::ALL {
        let histogram = &recorder.per_kind[kind.index()];
        if !histogram.is_empty() {
            let _ = writeln!(out, "{}", row(kind.name(), histogram));
        }
    }
    if recorder.error_total() == 0 {
        let _ = writeln!(out, "\nerrors: none");
    } else {
        let _ = writeln!(out, "\nerrors (code, op): count");
        for ((code, kind), count) in &recorder.errors {
            let _ = writeln!(out, "  {code}, {}: {count}", kind.name());
        }
        if recorder.unfinished > 0 {
            let _ = writeln!(
                out,
                "  unfinished (still in flight at the end): {}",
                recorder.unfinished
            );
        }
        for (code, message) in &recorder.error_samples {
            if !message.is_empty() {
                let _ = writeln!(out, "  first {code} message: {message}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nper second (by {} start): second, ok, p50, p99, max",
        if info.offered_rate.is_some() {
            "intended"
        } else {
            "actual"
        }
    );
    let mut csv = String::from("second,ok,p50_us,p99_us,p999_us,max_us\n");
    for (second, histogram) in recorder.series.iter().enumerate() {
        if histogram.is_empty() {
            let _ = writeln!(out, "  {second:>4} {:>8}", 0);
            let _ = writeln!(csv, "{second},0,,,,");
            continue;
        }
        let _ = writeln!(
            out,
            "  {second:>4} {:>8} {:>9} {:>9} {:>9}",
            histogram.len(),
            fmt_us(histogram.value_at_quantile(0.5)),
            fmt_us(histogram.value_at_quantile(0.99)),
            fmt_us(histogram.max()),
        );
        let _ = writeln!(
            csv,
            "{second},{},{},{},{},{}",
            histogram.len(),
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max()
        );
    }
    if let Some(path) = series_csv {
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
        let _ = writeln!(out, "series written to {}", path.display());
    }
    let overall = &recorder.overall;
    let quantile = |q: f64| {
        if overall.is_empty() {
            0
        } else {
            overall.value_at_quantile(q)
        }
    };
    let _ = writeln!(
        out,
        "SUMMARY target={} mode={} mix={} offered={} achieved={achieved:.0} ok={} errors={} \
         p50_us={} p99_us={} p999_us={} max_us={} gen_cpu_pct={:.1} gen_busy_pct={gen_busy_pct:.1} lag_p99_us={} \
         server_cpu_pct={:.1} server_us_per_req={:.2} other_cpu_pct={others:.1}",
        info.target,
        info.mode,
        info.mix,
        info.offered_rate.map_or(0.0, |r| r.round()),
        recorder.ok,
        recorder.error_total(),
        quantile(0.5),
        quantile(0.99),
        quantile(0.999),
        if overall.is_empty() { 0 } else { overall.max() },
        cpu.total_pct(),
        if lag.is_empty() {
            0
        } else {
            lag.value_at_quantile(0.99)
        },
        server_us_per_req.map_or(0.0, |(pct, _)| pct),
        server_us_per_req.map_or(0.0, |(_, us)| us),
    );
    print!("{out}");
    Ok(())
}
