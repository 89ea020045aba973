//! `readstates-bench`: the project's load generator.
//!
//! `run` drives a target (the readstates gRPC server, the no-op server, or
//! Redis running the same semantics as Lua scripts) with a realistic
//! workload and reports latency; `warm` creates, beforehand, every state
//! that workload can touch (see `warm.rs`), so a run's acks update existing
//! states; `noop-server` serves the same gRPC service with no work, to
//! measure the framework's ceiling on this machine; `watch` follows users on
//! change streams and measures their delivery lag (see `watch.rs`);
//! `big-users` times users with many states and fan-outs to many cold users (see `big_users/`).
//! Against a gRPC target, `--client smart` sends the calls through the
//! project's own client, straight to each user's owner (see
//! `smart_target.rs`), instead of round-robin over the addresses.
//!
//! # Pacing and coordinated omission
//!
//! In the default open-loop mode, requests follow a fixed schedule computed
//! from `--rate`: request `i` is *intended* to start at `t0 + i / rate`,
//! whatever happened to earlier requests. Tokio's timer alone cannot keep
//! that schedule (it has millisecond resolution, far coarser than the gaps
//! between requests at thousands per second), so the scheduler sleeps on it
//! only to within 2 ms of the instant and then spins to the exact instant
//! with `tokio::task::yield_now`, letting the same worker process responses
//! between checks (`--pacer task`, the default). `--pacer thread` keeps the
//! schedule on a dedicated OS thread instead (`nanosleep` at 1 ns timer
//! slack, then `sched_yield` spinning for the last `--spin-us`). Either way,
//! when behind schedule every request already due goes out at once, a small
//! batch in which each request keeps its own intended start.
//!
//! A request's latency is its completion time minus its *intended* start,
//! not its actual send time. When the server stalls, a closed-loop client
//! would simply stop sending and never measure the requests it failed to
//! send ("coordinated omission"); here those requests are still due on
//! schedule and their waiting counts. Beside the results the report prints
//! the scheduler's own lateness (dispatch lag), the generator's CPU use
//! (from /proc/self/stat; with the idle part of the spin-wait estimated and
//! subtracted), the server's CPU (`--server-pid`) and what every other
//! process on the machine used meanwhile, so a reader can tell whether the
//! generator kept up and whether a neighbour skewed the figures.
//!
//! `--closed --concurrency N` instead runs N workers back to back, each
//! sending its next request when the previous answers, for the maximum
//! throughput; there, latency is measured from the actual start.
//!
//! Latencies go into HDR histograms (1 µs to 60 s, 3 significant digits):
//! overall, per operation kind, and per second of the run, so spikes are
//! visible in the p99/max series (`--series FILE` writes it as CSV).

mod big_users;
mod driver;
mod grpc_target;
mod noop;
mod redis_target;
mod report;
mod smart_target;
mod store_churn;
mod store_data;
mod store_scale;
mod warm;
mod watch;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use parking_lot::Mutex;

use crate::driver::{OpenSettings, Pacer, Target, Timing};
use crate::report::{CpuSample, CpuUse, MachineSample, Recorder, RunInfo};
use crate::workload::{Mix, Shape, Workload};

/// Load generator for readstates (and the same workload against Redis).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive a target with the workload and report latency and throughput.
    Run(Box<RunArgs>),
    /// Create every read state the workload (same shape flags) can touch,
    /// acknowledged at a current message id, before a measured run.
    Warm(Box<WarmArgs>),
    /// Serve the ReadStates API with fixed responses and no work.
    NoopServer {
        #[arg(long, default_value = "127.0.0.1:50052")]
        addr: SocketAddr,
        /// CPU time each call spins before it answers, in microseconds: the
        /// floor of a server that costs that much more per call.
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
    },
    /// Follow users on WatchReadStates streams and measure delivery lag.
    Watch(Box<watch::WatchArgs>),
    /// Measure the embedded store itself as it grows: fill it, time cold
    /// loads and write-back, churn it (see `store_scale.rs`).
    Store(Box<store_scale::StoreArgs>),
    /// Measure users with many states and fan-outs to many cold users
    /// through a running server (see `big_users/`).
    BigUsers(Box<big_users::BigUsersArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// A readstates.v1 gRPC server (readstates itself or noop-server).
    Grpc,
    /// Redis, with the semantics as Lua scripts.
    Redis,
}

/// How a gRPC target's calls find their instance (`--client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// Plain gRPC connections, each call to the next one round-robin over
    /// the addresses, whatever instance owns its user.
    Naive,
    /// The project's client (readstates-client): each call straight to its
    /// user's owner.
    Smart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MixKind {
    /// Connects, acks, mention fan-outs, mention removals, pin acks, weighted by the --w-* flags.
    Realistic,
    /// Acks only: the pure Ack throughput figure.
    AckOnly,
}

/// Where the requests go (shared by `run` and `warm`).
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// What to send the load to.
    #[arg(long, value_enum, default_value_t = TargetKind::Grpc)]
    target: TargetKind,
    /// gRPC server address (host:port or http://host:port); several,
    /// comma-separated, share the connections round-robin.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Redis URL, for --target redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// HTTP/2 (or Redis) connections; requests are spread round-robin.
    /// With --client smart: ceil(N / addresses) clients, each holding one
    /// connection per instance.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How gRPC calls are sent. `naive`: plain connections, round-robin over
    /// --addr (with the cluster on, an instance forwards each call whose user
    /// it does not own). `smart`: through readstates-client, built from the
    /// same --addr and --call-timeout, which reads the slot map (GetRouting),
    /// sends each call to its user's owner and splits a mention fan-out by
    /// owner (its parts in parallel, counted as one call); with the cluster
    /// off it goes round-robin too. The smart client is set never to retry,
    /// so every failure counts as an error, as with `naive`; a call refused
    /// because its slot moved still makes it read the map again. The report
    /// names the target `grpc-smart`.
    #[arg(long, value_enum, default_value_t = ClientKind::Naive)]
    client: ClientKind,
    /// How long to keep retrying the first connection while the target starts.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    connect_wait: Duration,
    /// Send AddMentions with `omit_read_states`, as a message-send path
    /// would (a server that predates the field answers with the states).
    #[arg(long)]
    omit_mention_states: bool,
    /// A deadline every gRPC call carries (`grpc-timeout`), as real
    /// clients' calls do; the server drops a call whose deadline passed.
    #[arg(long, value_parser = parse_duration)]
    call_timeout: Option<Duration>,
}

impl TargetArgs {
    /// Connects; returns the target and its name for reports.
    async fn connect(&self) -> anyhow::Result<(Target, String)> {
        if self.target == TargetKind::Redis && self.client == ClientKind::Smart {
            bail!("--client smart needs --target grpc");
        }
        Ok(match self.target {
            TargetKind::Grpc if self.client == ClientKind::Smart => {
                let smart = smart_target::SmartTarget::connect(
                    &self.addr,
                    self.connections,
                    self.connect_wait,
                    self.omit_mention_states,
                    self.call_timeout,
                )
                .await?;
                eprintln!("smart client over {}: {}", self.addr, smart.describe());
                (Target::Smart(smart), format!("grpc-smart {}", self.addr))
            }
            TargetKind::Grpc => (
                Target::Grpc(
                    grpc_target::GrpcTarget::connect(
                        &self.addr,
                        self.connections,
                        self.connect_wait,
                        self.omit_mention_states,
                        self.call_timeout,
                    )
                    .await?,
                ),
                format!("grpc {}", self.addr),
            ),
            TargetKind::Redis => (
                Target::Redis(
                    redis_target::RedisTarget::connect(
                        &self.redis_url,
                        self.connections,
                        self.connect_wait,
                    )
                    .await?,
                ),
                format!("redis {}", self.redis_url),
            ),
        })
    }
}

/// The key space and fan-outs (shared by `run` and `warm`, so `warm`
/// covers exactly the states a `run` with the same flags touches).
#[derive(Debug, clap::Args)]
struct ShapeArgs {
    /// Users (ids 1..=N, Zipf-distributed by id).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Channels in all.
    #[arg(long, default_value_t = 10_000)]
    channels: u64,
    /// Channels of one guild: a user's states stay within its guild's.
    #[arg(long, default_value_t = 100)]
    channels_per_user: u64,
    /// Zipf exponent of users, channels and mentioned members.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    /// Largest mention fan-out.
    #[arg(long, default_value_t = 1000)]
    max_fanout: u64,
    /// Zipf exponent of the fan-out size (2.0: ~60% mention one user, mean ~4.5).
    #[arg(long, default_value_t = 2.0)]
    fanout_s: f64,
}

impl ShapeArgs {
    fn shape(&self) -> Shape {
        Shape {
            users: self.users,
            channels: self.channels,
            channels_per_user: self.channels_per_user,
            zipf_s: self.zipf_s,
            max_fanout: self.max_fanout,
            fanout_s: self.fanout_s,
        }
    }
}

#[derive(Debug, clap::Args)]
struct WarmArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Warm only users 1..=N, the hottest (users are Zipf by id); default:
    /// all of --users.
    #[arg(long)]
    warm_users: Option<u64>,
    /// Requests (one per user) in flight at once, over all connections.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Tokio worker threads of the generator (default: cores available).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// Operation mix.
    #[arg(long, value_enum, default_value_t = MixKind::Realistic)]
    mix: MixKind,
    /// Weight of connects (GetUserReadStates) in the realistic mix.
    #[arg(long, default_value_t = 5)]
    w_connect: u32,
    /// Weight of Ack.
    #[arg(long, default_value_t = 70)]
    w_ack: u32,
    /// Weight of AddMentions (fan-outs of 1 to --max-fanout users).
    #[arg(long, default_value_t = 15)]
    w_add_mentions: u32,
    /// Weight of RemoveMentions.
    #[arg(long, default_value_t = 2)]
    w_remove_mentions: u32,
    /// Weight of AckPins.
    #[arg(long, default_value_t = 8)]
    w_ack_pins: u32,

    #[command(flatten)]
    shape: ShapeArgs,

    /// Open loop: requests per second, on a fixed schedule.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Measured duration (e.g. 20s, 500ms, 1m; a bare number is seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before the measured window, same load, not recorded.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Closed loop: --concurrency workers back to back, for max throughput.
    #[arg(long)]
    closed: bool,
    /// Closed-loop workers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: past this many requests in flight the scheduler waits
    /// (the wait still counts in their latency).
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: u64,
    /// Open loop: where the schedule is kept (see the module docs).
    #[arg(long, value_enum, default_value_t = Pacer::Task)]
    pacer: Pacer,
    /// Open loop, thread pacer: spin (yielding) this many microseconds
    /// before each intended start instead of sleeping all the way.
    #[arg(long, default_value_t = 50)]
    spin_us: u64,
    /// Also report this process's CPU use over the window (the server's,
    /// when it runs on the same machine), and its CPU time per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the per-second series (p50, p99, p99.9, max) as CSV here.
    #[arg(long)]
    series: Option<PathBuf>,
    /// Seed of the workload's random draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tokio worker threads of the generator (default: cores available).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 20s, 500ms or 1m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("not a duration: {text:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::NoopServer { addr, spin_us } => {
            runtime(None)?.block_on(noop::serve(addr, Duration::from_micros(spin_us)))
        }
        Command::Run(args) => runtime(args.threads)?.block_on(run(*args)),
        Command::Warm(args) => runtime(args.threads)?.block_on(warm(*args)),
        Command::Watch(args) => runtime(None)?.block_on(watch::run(*args)),
        Command::Store(args) => runtime(None)?.block_on(store_scale::run(*args)),
        Command::BigUsers(args) => runtime(None)?.block_on(big_users::run(*args)),
    }
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder.build().context("starting the Tokio runtime")
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let rate_ok = args.rate.is_finite() && args.rate > 0.0;
    if !args.closed && !rate_ok {
        bail!("--rate must be a positive number of requests per second");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let (mix, mix_name) = match args.mix {
        MixKind::AckOnly => (Mix::ACK_ONLY, "ack-only"),
        MixKind::Realistic => (
            Mix {
                connect: args.w_connect,
                ack: args.w_ack,
                add_mentions: args.w_add_mentions,
                remove_mentions: args.w_remove_mentions,
                ack_pins: args.w_ack_pins,
            },
            "realistic",
        ),
    };
    let workload = Arc::new(Workload::new(mix, args.shape.shape())?);

    let (target, target_name) = args.target.connect().await?;
    let target = Arc::new(target);

    let timing = Timing {
        t0: Instant::now() + Duration::from_millis(20),
        warmup: args.warmup,
        duration: args.duration,
    };
    let recorder = Arc::new(Mutex::new(Recorder::new(
        timing.window_start(),
        args.duration,
    )?));
    // The generator's (and the server's) CPU over the measured window only.
    let server_pid = args.server_pid;
    if let Some(pid) = server_pid {
        CpuSample::of(pid).with_context(|| format!("--server-pid {pid}"))?;
    }
    let cpu_probe = tokio::spawn(async move {
        tokio::time::sleep_until(timing.window_start().into()).await;
        let before = CpuSample::now()?;
        let machine_before = MachineSample::now()?;
        let server_before = server_pid.map(CpuSample::of).transpose()?;
        tokio::time::sleep_until(timing.window_end().into()).await;
        let after = CpuSample::now()?;
        let machine_after = MachineSample::now()?;
        let server = match (server_pid, server_before) {
            (Some(pid), Some(server_before)) => {
                Some((pid, CpuUse::between(server_before, CpuSample::of(pid)?)))
            }
            _ => None,
        };
        anyhow::Ok((
            CpuUse::between(before, after),
            server,
            MachineSample::busy_pct_between(machine_before, machine_after),
        ))
    });

    let mut info = RunInfo {
        target: target_name.replace(' ', ":"),
        mode: if args.closed { "closed" } else { "open" }.to_string(),
        mix: mix_name.to_string(),
        offered_rate: (!args.closed).then_some(args.rate),
        warmup: args.warmup,
        connections: match target.as_ref() {
            Target::Smart(smart) => smart.connections(),
            _ => args.target.connections,
        },
        concurrency: args.closed.then_some(args.concurrency),
        in_flight_stalls: 0,
        max_in_flight_seen: 0,
        spin_time: Duration::ZERO,
        idle_spin: Duration::ZERO,
    };
    eprintln!(
        "running {} {} for {:?} (+{:?} warm-up)...",
        target_name, info.mode, args.duration, args.warmup
    );
    if args.closed {
        driver::run_closed(
            Arc::clone(&target),
            workload,
            args.seed,
            args.concurrency,
            timing,
            Arc::clone(&recorder),
        )
        .await?;
    } else {
        let stats = driver::run_open(
            Arc::clone(&target),
            workload,
            args.seed,
            OpenSettings {
                rate: args.rate,
                pacer: args.pacer,
                max_in_flight: args.max_in_flight.max(1),
                spin: Duration::from_micros(args.spin_us),
                drain: Duration::from_secs(12),
            },
            timing,
            Arc::clone(&recorder),
        )
        .await?;
        info.in_flight_stalls = stats.stalls;
        info.max_in_flight_seen = stats.max_in_flight_seen;
        info.spin_time = stats.spin_time;
        info.idle_spin = stats.idle_spin;
        recorder.lock().set_dispatch_lag(stats.dispatch_lag);
    }
    let (cpu, server_cpu, machine_busy) = cpu_probe.await.context("the CPU probe panicked")??;
    let recorder = recorder.lock();
    report::print(
        &info,
        &recorder,
        cpu,
        server_cpu,
        machine_busy,
        args.series.as_deref(),
    )
}

async fn warm(args: WarmArgs) -> anyhow::Result<()> {
    // The mix plays no part: only the key space does.
    let workload = Workload::new(Mix::ACK_ONLY, args.shape.shape())?;
    let users = args.warm_users.unwrap_or(args.shape.users);
    if users == 0 {
        bail!("--warm-users must be at least 1");
    }
    let (target, target_name) = args.target.connect().await?;
    eprintln!(
        "warming {target_name}: users 1..={} x {} channels each, {} in flight...",
        users.min(args.shape.users),
        args.shape.channels_per_user,
        args.in_flight
    );
    let warmed = warm::warm(&target, &workload, users, args.in_flight).await?;
    let seconds = warmed.elapsed.as_secs_f64();
    let restored = if matches!(args.target.target, TargetKind::Redis) {
        format!(
            " ({} new users restored from a guild template)",
            warmed.restored
        )
    } else {
        String::new()
    };
    println!(
        "warmed {} users ({} states) of {target_name} in {seconds:.1} s: {:.0} users/s, {:.0} states/s{restored}",
        warmed.users,
        warmed.states,
        warmed.users as f64 / seconds.max(1e-9),
        warmed.states as f64 / seconds.max(1e-9),
    );
    println!(
        "WARM users={} states={} seconds={seconds:.2} target={}",
        warmed.users,
        warmed.states,
        target_name.replace(' ', ":")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("soon").is_err());
    }
}
