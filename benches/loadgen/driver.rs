//! Issuing requests: the open-loop scheduler and the closed-loop workers.
//!
//! Open loop: request `i` has the intended start `t0 + i / rate`, fixed
//! before the run begins. The scheduler draws the operation ahead of time,
//! waits for the intended instant (see [`Pacer`]: a Tokio task that sleeps
//! coarsely and then spins with `yield_now`, or an OS thread that
//! `nanosleep`s at 1 ns timer slack and then spins with `sched_yield`), and
//! hands the request to the runtime. When it is behind schedule, every
//! request already due goes out at once, a small batch in which each
//! request keeps its own intended start. Latency is measured from that
//! intended start to completion, so a stall anywhere (server, network or
//! generator) counts against every request it delayed, including the ones
//! not yet sent: the coordinated-omission correction. The dispatch lag
//! (actual minus intended send time) is recorded separately to show how
//! well the scheduler kept time.
//!
//! Closed loop: N workers, each sending its next request as soon as the
//! previous one answers; latency is measured from the actual start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::grpc_target::GrpcTarget;
use crate::redis_target::RedisTarget;
use crate::report::Recorder;
use crate::smart_target::SmartTarget;
use crate::workload::{Generator, Op, Workload};

/// What the load is sent to.
pub enum Target {
    Grpc(GrpcTarget),
    /// The gRPC service through `readstates-client` (`--client smart`).
    Smart(SmartTarget),
    Redis(RedisTarget),
}

impl Target {
    async fn execute(&self, op: &Op) -> Result<(), String> {
        match self {
            Target::Grpc(target) => target.execute(op).await,
            Target::Smart(target) => target.execute(op).await,
            Target::Redis(target) => target.execute(op).await,
        }
    }
}

/// The timing of a run: a warm-up (not recorded), then the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub t0: Instant,
    pub warmup: Duration,
    pub duration: Duration,
}

impl Timing {
    pub fn window_start(&self) -> Instant {
        self.t0 + self.warmup
    }

    pub fn window_end(&self) -> Instant {
        self.t0 + self.warmup + self.duration
    }
}

/// Where the open-loop schedule is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pacer {
    /// A Tokio task on the runtime's own worker(s): sleeps on Tokio's timer
    /// to within 2 ms of the instant, then spins with `yield_now`, so
    /// responses are processed between checks on the same thread.
    Task,
    /// A dedicated OS thread: `nanosleep` at 1 ns timer slack, then spins
    /// the last `--spin-us` with `sched_yield`; it competes with the
    /// runtime's threads for the core.
    Thread,
}

/// Open-loop settings.
#[derive(Debug, Clone, Copy)]
pub struct OpenSettings {
    pub rate: f64,
    pub pacer: Pacer,
    /// Past this many requests in flight, the scheduler waits (the wait
    /// still counts in their latency).
    pub max_in_flight: u64,
    /// Thread pacer: spin (yielding) for this long before each intended
    /// start instead of sleeping; 0 = sleep only.
    pub spin: Duration,
    /// How long to wait for requests still in flight after the schedule.
    pub drain: Duration,
}

/// What the open-loop scheduler observed about itself.
pub struct OpenStats {
    pub dispatch_lag: Histogram<u64>,
    pub stalls: u64,
    pub max_in_flight_seen: u64,
    /// Time spent spin-waiting during the measured window, including the
    /// work other tasks or threads did while the scheduler yielded.
    pub spin_time: Duration,
    /// The part of `spin_time` in which nothing else ran: yields that came
    /// straight back (under [`IDLE_YIELD`]). Subtracted from the generator's
    /// CPU, it estimates the CPU that did real work.
    pub idle_spin: Duration,
}

/// A yield that returns within this found nothing else to run.
const IDLE_YIELD: Duration = Duration::from_micros(4);

/// Time spent spinning, and the part of it that was idle.
#[derive(Debug, Clone, Copy, Default)]
struct Spun {
    total: Duration,
    idle: Duration,
}

/// Lowers this thread's timer slack so `nanosleep` wakes on time.
fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK only changes the calling thread's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Thread pacer: sleeps until `spin` before `instant`, then spins, yielding
/// the core meanwhile.
fn wait_until_blocking(instant: Instant, spin: Duration) -> Spun {
    let now = Instant::now();
    if instant <= now {
        return Spun::default();
    }
    let wait = instant - now;
    if wait > spin {
        std::thread::sleep(wait - spin);
    }
    let spin_start = Instant::now();
    let mut idle = Duration::ZERO;
    let mut now = spin_start;
    while now < instant {
        std::thread::yield_now();
        let after = Instant::now();
        if after - now < IDLE_YIELD {
            idle += after - now;
        }
        now = after;
    }
    Spun {
        total: now - spin_start,
        idle,
    }
}

/// Task pacer: Tokio's timer (millisecond resolution) for the coarse part,
/// then `yield_now` until the instant, letting every other task on the
/// worker run between checks.
async fn wait_until_async(instant: Instant) -> Spun {
    const TIMER_MARGIN: Duration = Duration::from_millis(2);
    let now = Instant::now();
    if instant <= now {
        return Spun::default();
    }
    if instant - now > TIMER_MARGIN {
        tokio::time::sleep_until((instant - TIMER_MARGIN).into()).await;
    }
    let spin_start = Instant::now();
    let mut idle = Duration::ZERO;
    let mut now = spin_start;
    while now < instant {
        tokio::task::yield_now().await;
        let after = Instant::now();
        if after - now < IDLE_YIELD {
            idle += after - now;
        }
        now = after;
    }
    Spun {
        total: now - spin_start,
        idle,
    }
}

/// The open-loop schedule and what it observed.
struct Schedule {
    target: Arc<Target>,
    recorder: Arc<Mutex<Recorder>>,
    in_flight: Arc<AtomicU64>,
    generator: Generator,
    timing: Timing,
    period_ns: f64,
    total: u64,
    stats: OpenStats,
}

impl Schedule {
    fn new(
        target: Arc<Target>,
        workload: Arc<Workload>,
        seed: u64,
        settings: &OpenSettings,
        timing: Timing,
        recorder: Arc<Mutex<Recorder>>,
        in_flight: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            target,
            recorder,
            in_flight,
            generator: Generator::new(workload, seed),
            timing,
            period_ns: 1e9 / settings.rate,
            total: (settings.rate * (timing.warmup + timing.duration).as_secs_f64()).ceil() as u64,
            stats: OpenStats {
                dispatch_lag: Histogram::new_with_bounds(1, 60_000_000, 3)
                    .context("creating a histogram")?,
                stalls: 0,
                max_in_flight_seen: 0,
                spin_time: Duration::ZERO,
                idle_spin: Duration::ZERO,
            },
        })
    }

    /// Request `i`'s intended start: computed from `i`, not accumulated, so
    /// rounding never drifts.
    fn intended(&self, i: u64) -> Instant {
        self.timing.t0 + Duration::from_nanos((i as f64 * self.period_ns) as u64)
    }

    fn in_window(&self, instant: Instant) -> bool {
        instant >= self.timing.window_start() && instant < self.timing.window_end()
    }

    fn full(&mut self, max_in_flight: u64) -> bool {
        let full = self.in_flight.load(Ordering::Acquire) >= max_in_flight;
        if full {
            self.stats.stalls += 1;
        }
        full
    }

    /// Sends `op` now; its latency will count from `intended`.
    fn dispatch(&mut self, runtime: &tokio::runtime::Handle, op: Op, intended: Instant) {
        let dispatched = Instant::now();
        if self.in_window(intended) {
            let lag = dispatched.saturating_duration_since(intended).as_micros() as u64;
            let _ = self.stats.dispatch_lag.record(lag.clamp(1, 60_000_000));
        }
        let now_in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.stats.max_in_flight_seen = self.stats.max_in_flight_seen.max(now_in_flight);
        let target = Arc::clone(&self.target);
        let recorder = Arc::clone(&self.recorder);
        let in_flight = Arc::clone(&self.in_flight);
        runtime.spawn(async move {
            let result = target.execute(&op).await;
            let done = Instant::now();
            recorder.lock().record(op.kind(), intended, done, result);
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// The thread pacer's loop.
    fn run_blocking(
        mut self,
        runtime: &tokio::runtime::Handle,
        settings: OpenSettings,
    ) -> OpenStats {
        precise_timers();
        for i in 0..self.total {
            let intended = self.intended(i);
            let op = self.generator.next_op();
            let spun = wait_until_blocking(intended, settings.spin);
            if self.in_window(intended) {
                self.stats.spin_time += spun.total;
                self.stats.idle_spin += spun.idle;
            }
            while self.full(settings.max_in_flight) {
                std::thread::sleep(Duration::from_micros(50));
            }
            self.dispatch(runtime, op, intended);
        }
        self.stats
    }

    /// The task pacer's loop.
    async fn run_async(mut self, settings: OpenSettings) -> OpenStats {
        let runtime = tokio::runtime::Handle::current();
        for i in 0..self.total {
            let intended = self.intended(i);
            let op = self.generator.next_op();
            let spun = wait_until_async(intended).await;
            if self.in_window(intended) {
                self.stats.spin_time += spun.total;
                self.stats.idle_spin += spun.idle;
            }
            while self.full(settings.max_in_flight) {
                tokio::task::yield_now().await;
            }
            self.dispatch(&runtime, op, intended);
        }
        self.stats
    }
}

/// Runs the open loop; returns once every request finished or the drain
/// timeout passed.
pub async fn run_open(
    target: Arc<Target>,
    workload: Arc<Workload>,
    seed: u64,
    settings: OpenSettings,
    timing: Timing,
    recorder: Arc<Mutex<Recorder>>,
) -> anyhow::Result<OpenStats> {
    let in_flight = Arc::new(AtomicU64::new(0));
    let schedule = Schedule::new(
        target,
        workload,
        seed,
        &settings,
        timing,
        Arc::clone(&recorder),
        Arc::clone(&in_flight),
    )?;
    let stats = match settings.pacer {
        Pacer::Task => tokio::spawn(schedule.run_async(settings))
            .await
            .context("the scheduler task panicked")?,
        Pacer::Thread => {
            let runtime = tokio::runtime::Handle::current();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("open-loop-scheduler".into())
                .spawn(move || {
                    let _ = done_tx.send(schedule.run_blocking(&runtime, settings));
                })
                .context("starting the scheduler thread")?;
            done_rx.await.context("the scheduler thread died")?
        }
    };

    let drain_deadline = Instant::now() + settings.drain;
    while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    recorder
        .lock()
        .record_unfinished(in_flight.load(Ordering::Acquire));
    Ok(stats)
}

/// Runs `concurrency` closed-loop workers, each issuing its next request
/// when the previous one completes, until the end of the window.
pub async fn run_closed(
    target: Arc<Target>,
    workload: Arc<Workload>,
    seed: u64,
    concurrency: usize,
    timing: Timing,
    recorder: Arc<Mutex<Recorder>>,
) -> anyhow::Result<()> {
    let deadline = timing.window_end();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let target = Arc::clone(&target);
        let recorder = Arc::clone(&recorder);
        let mut generator = Generator::new(Arc::clone(&workload), seed.wrapping_add(worker as u64));
        workers.spawn(async move {
            loop {
                let op = generator.next_op();
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                let result = target.execute(&op).await;
                let done = Instant::now();
                recorder.lock().record(op.kind(), start, done, result);
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a closed-loop worker panicked")?;
    }
    Ok(())
}
