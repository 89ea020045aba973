//! `big-users`: users with many states, and mention fan-outs to many cold
//! users, through a running server (BENCHMARKS.md, "Big users and big
//! fan-outs"; `benches/loadgen/big_users.sh` runs the whole procedure).
//!
//! It runs in two phases against one data directory, with a restart of the
//! server between them, so that every user is cold (not loaded since the
//! server started) when the measurement begins:
//!
//! - `--phase setup` creates the data through the API: for each size S of
//!   `--sizes`, `--users-per-size` users with S states each (BulkAcks of at
//!   most `--max-bulk-acks` channels, many in flight); a warm-up group of as
//!   many users at the smallest size; and the fan-out populations, one per
//!   mode (with and without `omit_read_states`) and repeat, of
//!   `--fanout-users` users each with one state (an Ack in the population's
//!   channel), plus one warm-up population per mode of
//!   [`WARMUP_FANOUT_USERS`].
//! - `--phase measure`, after the restart, with the same shape flags: first
//!   the warm-up (its group's users read cold and cached, its populations
//!   mentioned), so one-time costs of the first load or the first fan-out do
//!   not land on the smallest size; then, for each size in increasing order,
//!   the first `GetUserReadStates` of each user (from the store), then
//!   `--repeats` more of each, round-robin (from the cache); then each
//!   fan-out population once with `AddMentions` of all its users (split into
//!   calls of at most `--max-mention-users`, the server's
//!   `limits.max_mention_users`, when larger), alternating the two modes.
//!
//! Calls are sent one at a time on one connection, and their latency is
//! measured from send to decoded answer (the generator's decoding of a big
//! answer included). Each answer is checked: a read returns all S states, a
//! fan-out with states returns every user with `mention_count = 1` over the
//! acknowledged message of the setup (proof the user was loaded from the
//! store, not created), one without states returns none, and after the
//! measurement the first and last user of every population without states
//! read the mention.
//!
//! **Server CPU** is taken around each measured phase from `--server-pid`:
//! the sum over its threads of `/proc/PID/task/TID/schedstat`'s run time
//! (nanoseconds; a thread that exits during the phase loses its time since
//! the phase began, so exits are counted and reported), and, as a check at
//! clock-tick resolution, utime + stime of `/proc/PID/stat` (`cpu_ticks_ms`
//! in the machine-readable lines, and stime alone, `cpu_sys_ticks_ms`: the
//! kernel's share, page faults and system calls). It is divided by the
//! states served (reads) or the users mentioned (fan-outs). A fan-out
//! without states returns before the mentioned users are loaded: their
//! mentions wait in inboxes that a background loader merges soon after, so
//! for that mode the CPU is reported twice, up to the call's answer and up
//! to the moment `readstates_mentions_deferred_waiting` (read from
//! `--metrics-addr`) is 0 again, less the measured cost of the metric scrapes
//! made meanwhile. The server should run with a flush delay longer than the
//! measurement, so no write-back falls into a phase (the script sets one).
//!
//! The goal is to find what grows worse than linearly: the report gives,
//! for every size, the cost per state and its ratio to the smallest size's
//! (below 1 where a call's fixed cost dominates the smallest size), and the
//! marginal cost per state, (cost per call at S - at the next smaller S') /
//! (S - S'), which leaves the fixed cost out: one that grows with S is worse
//! than linear.
//!
//! Id layout (disjoint ranges; ids are non-zero and far below 2^63):
//! big-user group g (0 = warm-up, then the sizes in increasing order) has
//! users [`BIG_USER_BASE`] + g * [`GROUP_STRIDE`] + 1..=users-per-size, in
//! channels [`BIG_CHANNEL_BASE`] + 1..=S; fan-out population p (0 and 1 =
//! warm-up with and without states, then 2 + 2 * repeat + mode) has users
//! [`FANOUT_USER_BASE`] + p * [`POPULATION_STRIDE`] + 1..=N, with their
//! state in channel [`FANOUT_CHANNEL_BASE`] + p.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use tonic::transport::{Channel, Endpoint};

use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::{
    AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck, GetReadStateRequest,
    GetUserReadStatesRequest,
};

/// First user id of the big users (group 0, the warm-up group).
pub const BIG_USER_BASE: u64 = 1_000_000_000;
/// Ids between two groups of big users: the most users one size may have.
pub const GROUP_STRIDE: u64 = 1_000_000;
/// Big users' channels are this + 1..=S.
pub const BIG_CHANNEL_BASE: u64 = 1_000_000_000;
/// The largest size accepted (channel ids stay below the fan-outs' ones).
const MAX_SIZE: u64 = 100_000_000;
/// The most sizes accepted (user ids stay below the fan-outs' ones).
const MAX_SIZES: usize = 1_000;
/// First user id of the fan-out populations.
pub const FANOUT_USER_BASE: u64 = 100_000_000_000;
/// Ids between two fan-out populations: the most users one may have.
pub const POPULATION_STRIDE: u64 = 100_000_000;
/// A population's users have their state in channel this + p.
pub const FANOUT_CHANNEL_BASE: u64 = 5_000_000_000;
/// The most fan-out repeats accepted (user ids stay far below 2^63).
const MAX_FANOUT_REPEATS: u64 = 10_000;
/// The message every setup state is acknowledged at.
const SETUP_MESSAGE: u64 = 1_000_000;
/// The message the measured fan-outs mention (newer: it counts).
const MENTION_MESSAGE: u64 = 2_000_000;
/// Users of each warm-up fan-out population (at most `--fanout-users`).
pub const WARMUP_FANOUT_USERS: u64 = 1_000;
/// Cached reads of each warm-up user.
const WARMUP_READS: u64 = 5;
/// How often setup progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often the deferred mentions are polled after a fan-out without states.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Largest answer accepted (tonic's default, 4 MiB, is about 80,000 states).
const MAX_ANSWER_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Create the users and states through the API.
    Setup,
    /// Time reads and fan-outs on a server restarted since the setup.
    Measure,
}

/// What to create or measure; setup and measure need the same shape flags.
#[derive(Debug, clap::Args)]
pub struct BigUsersArgs {
    /// `setup` (before the restart) or `measure` (after it).
    #[arg(long, value_enum)]
    phase: Phase,
    /// gRPC server address (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// States per big user, one group of users per size (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 1_000, 10_000])]
    sizes: Vec<u64>,
    /// Big users of each size.
    #[arg(long, default_value_t = 10)]
    users_per_size: u64,
    /// Measure: cached reads of each big user after its first (cold) one.
    #[arg(long, default_value_t = 50)]
    repeats: u64,
    /// Users of each fan-out (all cold, each with one stored state).
    #[arg(long, default_value_t = 10_000)]
    fanout_users: u64,
    /// Fan-outs measured per mode (with and without omit_read_states), each
    /// to its own population.
    #[arg(long, default_value_t = 5)]
    fanout_repeats: u64,
    /// The server's limits.max_mention_users: a fan-out to more users is
    /// split into calls of at most this many (and the report says so).
    #[arg(long, default_value_t = 10_000)]
    max_mention_users: usize,
    /// The server's limits.max_bulk_acks: acks per setup BulkAck.
    #[arg(long, default_value_t = 1_000)]
    max_bulk_acks: usize,
    /// Setup: calls in flight at once, over all connections.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Setup: HTTP/2 connections (the measurement uses one).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measure: the server's process id, for its CPU time (required).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Measure: the server's metrics address (host:port), to wait for the
    /// deferred mentions of fan-outs without states and to report cache
    /// misses and evictions. Without it, those figures are left out.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Measure: the longest wait for deferred mentions to be loaded.
    #[arg(long, default_value = "300s", value_parser = crate::parse_duration)]
    drain_wait: Duration,
    /// The deadline of every call.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    call_timeout: Duration,
    /// How long to keep retrying the first connection while the server starts.
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration)]
    connect_wait: Duration,
}

/// `readstates-bench big-users`.
pub async fn run(args: BigUsersArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args)?;
    match args.phase {
        Phase::Setup => {
            let clients = connect(
                &args.addr,
                args.connections.max(1),
                args.connect_wait,
                args.call_timeout,
            )
            .await?;
            setup(&args, &layout, &clients).await
        }
        Phase::Measure => {
            let pid = args
                .server_pid
                .context("--phase measure needs --server-pid (the server's CPU is measured)")?;
            let clients = connect(&args.addr, 1, args.connect_wait, args.call_timeout).await?;
            let client = clients
                .into_iter()
                .next()
                .context("no connection was opened")?;
            measure(&args, &layout, client, pid).await
        }
    }
}

// --- the id layout -----------------------------------------------------------

/// Where every user and state of the benchmark lies (see the module docs).
struct Layout {
    /// Increasing, without duplicates.
    sizes: Vec<u64>,
    users_per_size: u64,
    fanout_users: u64,
    fanout_repeats: u64,
}

/// A fan-out's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `omit_read_states = false`: the call loads every cold user.
    States,
    /// `omit_read_states = true`: cold users' mentions are deferred.
    Omit,
}

impl Mode {
    const BOTH: [Mode; 2] = [Mode::States, Mode::Omit];

    fn index(self) -> u64 {
        match self {
            Mode::States => 0,
            Mode::Omit => 1,
        }
    }

    fn omit(self) -> bool {
        self == Mode::Omit
    }

    fn kind(self) -> &'static str {
        match self {
            Mode::States => "fanout_states",
            Mode::Omit => "fanout_omit",
        }
    }
}

impl Layout {
    fn new(args: &BigUsersArgs) -> anyhow::Result<Self> {
        let mut sizes = args.sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        ensure!(!sizes.is_empty(), "--sizes must name at least one size");
        ensure!(
            sizes[0] >= 1 && sizes[sizes.len() - 1] <= MAX_SIZE,
            "--sizes must be between 1 and {MAX_SIZE}"
        );
        ensure!(
            sizes.len() <= MAX_SIZES,
            "at most {MAX_SIZES} --sizes are supported"
        );
        ensure!(
            (1..GROUP_STRIDE).contains(&args.users_per_size),
            "--users-per-size must be between 1 and {}",
            GROUP_STRIDE - 1
        );
        ensure!(
            (1..POPULATION_STRIDE).contains(&args.fanout_users),
            "--fanout-users must be between 1 and {}",
            POPULATION_STRIDE - 1
        );
        ensure!(
            (1..=MAX_FANOUT_REPEATS).contains(&args.fanout_repeats),
            "--fanout-repeats must be between 1 and {MAX_FANOUT_REPEATS}"
        );
        ensure!(
            args.max_mention_users >= 1,
            "--max-mention-users must be at least 1"
        );
        ensure!(
            args.max_bulk_acks >= 1,
            "--max-bulk-acks must be at least 1"
        );
        Ok(Self {
            sizes,
            users_per_size: args.users_per_size,
            fanout_users: args.fanout_users,
            fanout_repeats: args.fanout_repeats,
        })
    }

    /// The groups of big users: (group, size), the warm-up group (0, at the
    /// smallest size) first.
    fn groups(&self) -> Vec<(u64, u64)> {
        std::iter::once((0, self.sizes[0]))
            .chain((1..).zip(self.sizes.iter().copied()))
            .collect()
    }

    /// The measured group of `size`.
    fn group_of(&self, size: u64) -> anyhow::Result<u64> {
        let index = self
            .sizes
            .iter()
            .position(|&s| s == size)
            .with_context(|| format!("no group of size {size}"))?;
        Ok(index as u64 + 1)
    }

    /// The users of a group.
    fn group_users(&self, group: u64) -> impl Iterator<Item = u64> + use<> {
        let first = BIG_USER_BASE + group * GROUP_STRIDE + 1;
        first..first + self.users_per_size
    }

    /// The channels of a big user of `size` states.
    fn big_channels(size: u64) -> impl Iterator<Item = u64> {
        BIG_CHANNEL_BASE + 1..=BIG_CHANNEL_BASE + size
    }

    /// Every fan-out population, warm-up ones included.
    fn populations(&self) -> impl Iterator<Item = u64> + use<> {
        0..2 + 2 * self.fanout_repeats
    }

    fn warmup_population(mode: Mode) -> u64 {
        mode.index()
    }

    fn measured_population(repeat: u64, mode: Mode) -> u64 {
        2 + 2 * repeat + mode.index()
    }

    /// The users of population `p`.
    fn population_users(&self, p: u64) -> impl Iterator<Item = u64> + use<> {
        let count = if p < 2 {
            self.fanout_users.min(WARMUP_FANOUT_USERS)
        } else {
            self.fanout_users
        };
        let first = FANOUT_USER_BASE + p * POPULATION_STRIDE + 1;
        first..first + count
    }

    fn population_channel(p: u64) -> u64 {
        FANOUT_CHANNEL_BASE + p
    }
}

// --- connections -------------------------------------------------------------

/// Opens `connections` HTTP/2 connections to `addr` (as `grpc_target.rs`
/// does), retrying for up to `wait` while the server starts.
async fn connect(
    addr: &str,
    connections: usize,
    wait: Duration,
    call_timeout: Duration,
) -> anyhow::Result<Vec<ReadStatesClient<Channel>>> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("invalid address {uri}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(call_timeout)
        .buffer_size(16 * 1024);
    let deadline = Instant::now() + wait;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error).with_context(|| format!("connecting to {uri}")),
            }
        };
        clients.push(ReadStatesClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES));
    }
    Ok(clients)
}

/// A failed call as an error naming what was called.
fn call_error(what: impl std::fmt::Display, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} failed: {:?}: {}", status.code(), status.message())
}

// --- setup -------------------------------------------------------------------

/// Creates every user and state of the layout.
async fn setup(
    args: &BigUsersArgs,
    layout: &Layout,
    clients: &[ReadStatesClient<Channel>],
) -> anyhow::Result<()> {
    let start = Instant::now();

    // Big users: one BulkAck per chunk of a user's channels.
    let mut chunks = Vec::new();
    let mut big_users = 0u64;
    for (group, size) in layout.groups() {
        let channels: Vec<u64> = Layout::big_channels(size).collect();
        for user in layout.group_users(group) {
            big_users += 1;
            for chunk in channels.chunks(args.max_bulk_acks) {
                chunks.push((user, chunk.to_vec()));
            }
        }
    }
    eprintln!(
        "setup: {big_users} big users (sizes {:?} x {}, warm-up group included) in {} BulkAcks...",
        layout.sizes,
        layout.users_per_size,
        chunks.len()
    );
    let big_states = in_flight(
        "big users' states",
        chunks.into_iter().enumerate(),
        args.in_flight,
        |(index, (user, channels))| {
            let mut client = clients[index % clients.len()].clone();
            async move {
                let wanted = channels.len();
                let acks = channels
                    .into_iter()
                    .map(|channel_id| ChannelAck {
                        channel_id,
                        message_id: SETUP_MESSAGE,
                    })
                    .collect();
                let answer = client
                    .bulk_ack(BulkAckRequest {
                        user_id: user,
                        acks,
                    })
                    .await
                    .map_err(|status| {
                        call_error(
                            format_args!("BulkAck of user {user} ({wanted} acks)"),
                            status,
                        )
                    })?
                    .into_inner();
                ensure!(
                    answer.read_states.len() == wanted,
                    "BulkAck of user {user}: {wanted} acks answered with {} states",
                    answer.read_states.len()
                );
                Ok(wanted as u64)
            }
        },
    )
    .await?;

    // Fan-out populations: one Ack per user, in the population's channel.
    let acks: Vec<(u64, u64)> = layout
        .populations()
        .flat_map(|p| {
            layout
                .population_users(p)
                .map(move |user| (user, Layout::population_channel(p)))
        })
        .collect();
    let populations = layout.populations().count();
    eprintln!(
        "setup: {} fan-out users in {populations} populations (2 of them warm-up), one Ack each...",
        acks.len()
    );
    let fanout_states = in_flight(
        "fan-out users",
        acks.into_iter().enumerate(),
        args.in_flight,
        |(index, (user, channel))| {
            let mut client = clients[index % clients.len()].clone();
            async move {
                let answer = client
                    .ack(AckRequest {
                        user_id: user,
                        channel_id: channel,
                        message_id: SETUP_MESSAGE,
                        manual: false,
                        mention_count: None,
                    })
                    .await
                    .map_err(|status| {
                        call_error(format_args!("Ack of user {user} in {channel}"), status)
                    })?
                    .into_inner();
                let state = answer
                    .read_state
                    .with_context(|| format!("Ack of user {user}: no state in the answer"))?;
                ensure!(
                    state.last_message_id == SETUP_MESSAGE,
                    "Ack of user {user}: last_message_id {} after an ack at {SETUP_MESSAGE}",
                    state.last_message_id
                );
                Ok(1)
            }
        },
    )
    .await?;

    let seconds = start.elapsed().as_secs_f64();
    println!(
        "set up {big_users} big users ({big_states} states) and {fanout_states} fan-out users in {seconds:.1} s"
    );
    println!(
        "SETUP big_users={big_users} big_states={big_states} fanout_users={fanout_states} \
         populations={populations} seconds={seconds:.2}"
    );
    Ok(())
}

/// Runs `call` on every item with at most `limit` in flight, printing
/// progress; returns the sum of what the calls return. The first error
/// stops it.
async fn in_flight<I, F, Fut>(what: &str, items: I, limit: usize, call: F) -> anyhow::Result<u64>
where
    I: ExactSizeIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let total = items.len();
    let start = Instant::now();
    let mut next_progress = start + PROGRESS_EVERY;
    let (done, sum) = stream::iter(items)
        .map(call)
        .buffer_unordered(limit.max(1))
        .try_fold((0usize, 0u64), |(done, sum), value| {
            let done = done + 1;
            if Instant::now() >= next_progress {
                next_progress += PROGRESS_EVERY;
                eprintln!(
                    "  {what}: {done} of {total} calls ({:.0}%), {:.0} s",
                    done as f64 * 100.0 / total.max(1) as f64,
                    start.elapsed().as_secs_f64()
                );
            }
            async move { anyhow::Ok((done, sum + value)) }
        })
        .await?;
    ensure!(done == total, "{what}: {done} of {total} calls answered");
    Ok(sum)
}

// --- the server's CPU --------------------------------------------------------

/// The server's CPU time at one moment.
#[derive(Debug, Clone)]
struct CpuSnapshot {
    at: Instant,
    /// Run time (ns) of each thread, from its schedstat.
    threads: HashMap<u32, u64>,
    /// utime + stime of the whole process, in clock ticks.
    ticks: u64,
    /// stime alone.
    system_ticks: u64,
}

/// The server's CPU time over a phase.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSpent {
    /// Nanoseconds on CPU: the threads' schedstat run time, or the ticks
    /// where schedstat is not available.
    ns: u64,
    /// utime + stime, at clock-tick resolution, in nanoseconds.
    ticks_ns: u64,
    /// stime alone (the kernel's share: page faults, system calls).
    system_ticks_ns: u64,
    /// Threads that exited during the phase (their time in it is lost to
    /// `ns`).
    exited: usize,
    wall: Duration,
}

impl CpuSpent {
    fn add(&mut self, other: CpuSpent) {
        self.ns += other.ns;
        self.ticks_ns += other.ticks_ns;
        self.system_ticks_ns += other.system_ticks_ns;
        self.exited += other.exited;
        self.wall += other.wall;
    }
}

/// Reads a process's CPU time (all its threads).
struct ServerCpu {
    pid: u32,
    ns_per_tick: f64,
}

impl ServerCpu {
    fn new(pid: u32) -> anyhow::Result<Self> {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let cpu = Self {
            pid,
            ns_per_tick: 1e9 / if ticks > 0 { ticks as f64 } else { 100.0 },
        };
        cpu.snapshot()
            .with_context(|| format!("reading --server-pid {pid}'s CPU time"))?;
        Ok(cpu)
    }

    fn snapshot(&self) -> anyhow::Result<CpuSnapshot> {
        let at = Instant::now();
        let task_dir = format!("/proc/{}/task", self.pid);
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(&task_dir).with_context(|| format!("reading {task_dir}"))? {
            let entry = entry.with_context(|| format!("reading {task_dir}"))?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            let path = entry.path().join("schedstat");
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let ns = text
                        .split_whitespace()
                        .next()
                        .and_then(|field| field.parse().ok())
                        .with_context(|| format!("unexpected {}: {text:?}", path.display()))?;
                    threads.insert(tid, ns);
                }
                // The thread exited since the listing.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("reading {}", path.display()));
                }
            }
        }
        let (user_ticks, system_ticks) = process_ticks(self.pid)?;
        Ok(CpuSnapshot {
            at,
            threads,
            ticks: user_ticks + system_ticks,
            system_ticks,
        })
    }

    fn between(&self, before: &CpuSnapshot, after: &CpuSnapshot) -> CpuSpent {
        let ns: u64 = after
            .threads
            .iter()
            .map(|(tid, &ns)| ns.saturating_sub(before.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        let exited = before
            .threads
            .keys()
            .filter(|tid| !after.threads.contains_key(tid))
            .count();
        let to_ns = |ticks: u64| (ticks as f64 * self.ns_per_tick).round() as u64;
        let ticks_ns = to_ns(after.ticks.saturating_sub(before.ticks));
        let system_ticks_ns = to_ns(after.system_ticks.saturating_sub(before.system_ticks));
        // schedstat reads 0 for every thread where the kernel does not keep it.
        let precise = after.threads.values().any(|&ns| ns > 0);
        CpuSpent {
            ns: if precise { ns } else { ticks_ns },
            ticks_ns,
            system_ticks_ns,
            exited,
            wall: after.at.saturating_duration_since(before.at),
        }
    }
}

/// utime and stime of a process, in clock ticks (fields 14 and 15 of
/// /proc/PID/stat).
fn process_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
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
    Ok((field(11)?, field(12)?))
}

// --- the server's metrics ----------------------------------------------------

/// The server's Prometheus endpoint.
struct Metrics {
    addr: String,
}

impl Metrics {
    /// Every metric, summed over its labels.
    async fn scrape(&self) -> anyhow::Result<HashMap<String, f64>> {
        let addr = self.addr.clone();
        tokio::task::spawn_blocking(move || scrape_blocking(&addr))
            .await
            .context("the metrics scrape panicked")?
    }
}

/// A metric's value (summed over labels), 0 when absent.
fn metric(values: &HashMap<String, f64>, name: &str) -> f64 {
    values.get(name).copied().unwrap_or(0.0)
}

/// One GET of /metrics over HTTP/1.0 (so the body is not chunked).
fn scrape_blocking(addr: &str) -> anyhow::Result<HashMap<String, f64>> {
    let socket = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving --metrics-addr {addr}"))?
        .next()
        .with_context(|| format!("--metrics-addr {addr} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(5))
        .with_context(|| format!("connecting to the metrics at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: readstates\r\n\r\n")
        .with_context(|| format!("asking {addr} for its metrics"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the metrics of {addr}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from the metrics at {addr}"))?;
    let status = head.lines().next().unwrap_or_default();
    ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "the metrics at {addr} answered {status:?}"
    );
    let mut values = HashMap::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let Some(value) = line
            .rsplit(' ')
            .next()
            .and_then(|value| value.parse::<f64>().ok())
        else {
            continue;
        };
        *values.entry(line[..name_end].to_string()).or_insert(0.0) += value;
    }
    Ok(values)
}

// --- measure -----------------------------------------------------------------

/// Latencies of one phase's calls.
#[derive(Debug, Clone, Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    /// Nearest-rank percentile (`q` in 0..=1), in microseconds.
    fn quantile_us(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e6
    }

    fn max_us(&self) -> f64 {
        self.0
            .iter()
            .max()
            .map_or(0.0, |max| max.as_secs_f64() * 1e6)
    }
}

/// One measured read phase.
struct ReadResult {
    /// `get_cold` or `get_cached`.
    kind: &'static str,
    size: u64,
    latencies: Latencies,
    cpu: CpuSpent,
    /// Cache misses the server counted during the phase.
    misses: Option<f64>,
}

impl ReadResult {
    fn states(&self) -> u64 {
        self.size * self.latencies.0.len() as u64
    }

    fn cpu_us_per_state(&self) -> f64 {
        self.cpu.ns as f64 / 1e3 / self.states().max(1) as f64
    }

    fn p50_us_per_state(&self) -> f64 {
        self.latencies.quantile_us(0.5) / self.size as f64
    }

    fn cpu_us_per_call(&self) -> f64 {
        self.cpu.ns as f64 / 1e3 / self.latencies.0.len().max(1) as f64
    }
}

/// A read phase compared with the other sizes of its kind.
struct Scaling {
    /// Per-state CPU over the smallest size's (1 = linear).
    cpu_x: f64,
    /// Per-state p50 latency over the smallest size's.
    lat_x: f64,
    /// What each state past the next smaller size's cost, per call:
    /// (cost(S) - cost(S')) / (S - S'), which leaves out the fixed cost of a
    /// call; growing with S means worse than linear. `None` for the smallest.
    marginal_cpu_us: Option<f64>,
    marginal_p50_us: Option<f64>,
}

impl Scaling {
    fn of(reads: &[ReadResult], index: usize) -> Self {
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
struct FanoutResult {
    mode: Mode,
    users: u64,
    /// Calls each fan-out was split into.
    calls: usize,
    latencies: Latencies,
    /// Up to each call's answer.
    cpu_call: CpuSpent,
    /// Up to every deferred mention merged (without states), less the
    /// metric scrapes; `None` without --metrics-addr.
    cpu_total_ns: Option<f64>,
    /// How long the deferred mentions took to drain after each answer.
    drains: Vec<Duration>,
    scrapes: u64,
    misses: Option<f64>,
}

impl FanoutResult {
    fn fanouts(&self) -> u64 {
        self.latencies.0.len() as u64
    }

    fn cpu_call_us_per_user(&self) -> f64 {
        self.cpu_call.ns as f64 / 1e3 / (self.users * self.fanouts()).max(1) as f64
    }

    fn cpu_total_us_per_user(&self) -> Option<f64> {
        self.cpu_total_ns
            .map(|ns| ns / 1e3 / (self.users * self.fanouts()).max(1) as f64)
    }
}

/// What measuring needs at hand.
struct Bench<'a> {
    layout: &'a Layout,
    client: ReadStatesClient<Channel>,
    cpu: ServerCpu,
    metrics: Option<Metrics>,
    max_mention_users: usize,
    drain_wait: Duration,
    /// Server CPU of one metrics scrape (ns), measured at the start.
    scrape_ns: f64,
}

async fn measure(
    args: &BigUsersArgs,
    layout: &Layout,
    client: ReadStatesClient<Channel>,
    pid: u32,
) -> anyhow::Result<()> {
    let mut bench = Bench {
        layout,
        client,
        cpu: ServerCpu::new(pid)?,
        metrics: args.metrics_addr.clone().map(|addr| Metrics { addr }),
        max_mention_users: args.max_mention_users,
        drain_wait: args.drain_wait,
        scrape_ns: 0.0,
    };
    let fanout_calls = layout.fanout_users.div_ceil(args.max_mention_users as u64);
    if fanout_calls > 1 {
        eprintln!(
            "NOTE: --fanout-users {} exceeds --max-mention-users {} (the server's limits.max_mention_users): \
             each fan-out is split into {fanout_calls} calls, sent one after another; its latency is theirs together",
            layout.fanout_users, args.max_mention_users
        );
    }

    // The server's idle CPU, and what a metrics scrape costs it.
    let before = bench.cpu.snapshot()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = bench.cpu.between(&before, &bench.cpu.snapshot()?);
    let idle_us_per_s = idle.ns as f64 / 1e3 / idle.wall.as_secs_f64().max(1e-9);
    if let Some(metrics) = &bench.metrics {
        const SCRAPES: u32 = 10;
        let before = bench.cpu.snapshot()?;
        for _ in 0..SCRAPES {
            metrics.scrape().await?;
        }
        let spent = bench.cpu.between(&before, &bench.cpu.snapshot()?);
        let idle_ns = idle_us_per_s * 1e3 * spent.wall.as_secs_f64();
        bench.scrape_ns = ((spent.ns as f64 - idle_ns) / f64::from(SCRAPES)).max(0.0);
    }
    eprintln!(
        "server pid {pid}: idle CPU {idle_us_per_s:.0} us/s; one metrics scrape {:.0} us",
        bench.scrape_ns / 1e3
    );

    // Warm-up, not recorded: a cold and a few cached reads of the warm-up
    // group, and one fan-out per mode.
    eprintln!("warm-up...");
    let warmup_size = layout.sizes[0];
    bench.reads(0, warmup_size, 1, "get_cold").await?;
    bench
        .reads(0, warmup_size, WARMUP_READS, "get_cached")
        .await?;
    for mode in Mode::BOTH {
        bench.fan_out(Layout::warmup_population(mode), mode).await?;
    }

    // Reads, by size.
    let mut reads = Vec::new();
    for &size in &layout.sizes {
        let group = layout.group_of(size)?;
        eprintln!(
            "reads of {} users of {size} states: cold, then {} cached each...",
            layout.users_per_size, args.repeats
        );
        reads.push(bench.reads(group, size, 1, "get_cold").await?);
        if args.repeats > 0 {
            reads.push(bench.reads(group, size, args.repeats, "get_cached").await?);
        }
    }

    // Fan-outs, alternating the modes.
    let mut fanouts: Vec<FanoutResult> = Mode::BOTH
        .iter()
        .map(|&mode| FanoutResult {
            mode,
            users: layout.fanout_users,
            calls: fanout_calls as usize,
            latencies: Latencies::default(),
            cpu_call: CpuSpent::default(),
            cpu_total_ns: bench.metrics.as_ref().map(|_| 0.0),
            drains: Vec::new(),
            scrapes: 0,
            misses: bench.metrics.as_ref().map(|_| 0.0),
        })
        .collect();
    for repeat in 0..layout.fanout_repeats {
        for (result, mode) in fanouts.iter_mut().zip(Mode::BOTH) {
            eprintln!(
                "fan-out {} of {}: AddMentions to {} cold users, {}...",
                repeat + 1,
                layout.fanout_repeats,
                layout.fanout_users,
                if mode.omit() {
                    "omit_read_states"
                } else {
                    "with states"
                }
            );
            let one = bench
                .fan_out(Layout::measured_population(repeat, mode), mode)
                .await?;
            result.latencies.0.push(one.latency);
            result.cpu_call.add(one.cpu_call);
            result.scrapes += one.scrapes;
            if let Some(drain) = one.drain {
                result.drains.push(drain);
            }
            if let (Some(total), Some(one_total)) = (&mut result.cpu_total_ns, one.cpu_total_ns) {
                *total += one_total;
            }
            if let (Some(misses), Some(one_misses)) = (&mut result.misses, one.misses) {
                *misses += one_misses;
            }
        }
    }

    // Checks, outside every measured phase: each population without states
    // holds its mention once its deferred mentions are merged.
    bench.check_deferred().await?;
    let evictions = match &bench.metrics {
        Some(metrics) => Some(metric(
            &metrics.scrape().await?,
            "readstates_cache_evictions_total",
        )),
        None => None,
    };

    print_report(
        args,
        layout,
        &reads,
        &fanouts,
        idle_us_per_s,
        bench.scrape_ns,
        evictions,
    );
    Ok(())
}

/// One fan-out's figures.
struct OneFanout {
    latency: Duration,
    cpu_call: CpuSpent,
    cpu_total_ns: Option<f64>,
    drain: Option<Duration>,
    scrapes: u64,
    misses: Option<f64>,
}

impl Bench<'_> {
    async fn scrape(&self) -> anyhow::Result<Option<HashMap<String, f64>>> {
        match &self.metrics {
            Some(metrics) => Ok(Some(metrics.scrape().await?)),
            None => Ok(None),
        }
    }

    /// Reads every user of `group` (each with `size` states) `repeats`
    /// times, round-robin, one call at a time.
    async fn reads(
        &mut self,
        group: u64,
        size: u64,
        repeats: u64,
        kind: &'static str,
    ) -> anyhow::Result<ReadResult> {
        let users: Vec<u64> = self.layout.group_users(group).collect();
        let mut latencies = Vec::with_capacity(users.len() * repeats as usize);
        let metrics_before = self.scrape().await?;
        let cpu_before = self.cpu.snapshot()?;
        for _ in 0..repeats {
            for &user in &users {
                let start = Instant::now();
                let answer = self
                    .client
                    .get_user_read_states(GetUserReadStatesRequest {
                        user_id: user,
                        since_version: None,
                    })
                    .await
                    .map_err(|status| {
                        call_error(format_args!("GetUserReadStates of user {user}"), status)
                    })?;
                latencies.push(start.elapsed());
                let states = answer.into_inner().read_states.len();
                ensure!(
                    states as u64 == size,
                    "GetUserReadStates of user {user} answered {states} states, not {size}: \
                     was the setup run with the same --sizes and --users-per-size?"
                );
            }
        }
        let cpu = self.cpu.between(&cpu_before, &self.cpu.snapshot()?);
        let metrics_after = self.scrape().await?;
        let misses = metrics_before.zip(metrics_after).map(|(before, after)| {
            metric(&after, "readstates_cache_misses_total")
                - metric(&before, "readstates_cache_misses_total")
        });
        Ok(ReadResult {
            kind,
            size,
            latencies: Latencies(latencies),
            cpu,
            misses,
        })
    }

    /// Mentions every user of population `p` once, in calls of at most
    /// `max_mention_users`, one after another; without states, then waits
    /// until the server has merged every deferred mention.
    async fn fan_out(&mut self, p: u64, mode: Mode) -> anyhow::Result<OneFanout> {
        let users: Vec<u64> = self.layout.population_users(p).collect();
        let channel = Layout::population_channel(p);
        let requests: Vec<AddMentionsRequest> = users
            .chunks(self.max_mention_users)
            .map(|chunk| AddMentionsRequest {
                channel_id: channel,
                message_id: MENTION_MESSAGE,
                user_ids: chunk.to_vec(),
                omit_read_states: mode.omit(),
            })
            .collect();
        let metrics_before = self.scrape().await?;
        let cpu_before = self.cpu.snapshot()?;
        let start = Instant::now();
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let count = request.user_ids.len();
            let answer = self.client.add_mentions(request).await.map_err(|status| {
                call_error(
                    format_args!("AddMentions of {count} users in channel {channel}"),
                    status,
                )
            })?;
            answers.push(answer.into_inner());
        }
        let latency = start.elapsed();
        let cpu_call_end = self.cpu.snapshot()?;
        let cpu_call = self.cpu.between(&cpu_before, &cpu_call_end);

        // Without states: wait for the deferred mentions to be merged.
        let mut scrapes = 0u64;
        let mut drain = None;
        let mut cpu_total_ns = None;
        if let (Mode::Omit, Some(metrics)) = (mode, &self.metrics) {
            let deadline = Instant::now() + self.drain_wait;
            loop {
                scrapes += 1;
                let waiting = metric(
                    &metrics.scrape().await?,
                    "readstates_mentions_deferred_waiting",
                );
                if waiting == 0.0 {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{waiting} deferred mentions still waiting {:?} after the fan-out",
                    self.drain_wait
                );
                tokio::time::sleep(DRAIN_POLL).await;
            }
            drain = Some(start.elapsed().saturating_sub(latency));
            let total = self.cpu.between(&cpu_before, &self.cpu.snapshot()?);
            cpu_total_ns = Some((total.ns as f64 - scrapes as f64 * self.scrape_ns).max(0.0));
        } else if mode == Mode::States {
            cpu_total_ns = self.metrics.as_ref().map(|_| cpu_call.ns as f64);
        }
        let metrics_after = self.scrape().await?;
        let misses = metrics_before.zip(metrics_after).map(|(before, after)| {
            metric(&after, "readstates_cache_misses_total")
                - metric(&before, "readstates_cache_misses_total")
        });

        // Check the answers.
        let mut expected = users.iter();
        for answer in &answers {
            if mode.omit() {
                ensure!(
                    answer.read_states.is_empty(),
                    "AddMentions with omit_read_states answered {} states",
                    answer.read_states.len()
                );
                continue;
            }
            for state in &answer.read_states {
                let user = expected
                    .next()
                    .context("AddMentions answered more states than users")?;
                ensure!(
                    state.user_id == *user
                        && state.channel_id == channel
                        && state.mention_count == 1
                        && state.last_message_id == SETUP_MESSAGE,
                    "AddMentions answered {state:?} for user {user} in channel {channel}: expected \
                     one mention over last_message_id {SETUP_MESSAGE} (the setup's stored state)"
                );
            }
        }
        ensure!(
            mode.omit() || expected.next().is_none(),
            "AddMentions answered fewer states than users"
        );
        Ok(OneFanout {
            latency,
            cpu_call,
            cpu_total_ns,
            drain,
            scrapes,
            misses,
        })
    }

    /// The first and last user of every population mentioned without
    /// states read the mention over their stored state.
    async fn check_deferred(&mut self) -> anyhow::Result<()> {
        let populations = std::iter::once(Layout::warmup_population(Mode::Omit)).chain(
            (0..self.layout.fanout_repeats)
                .map(|repeat| Layout::measured_population(repeat, Mode::Omit)),
        );
        for p in populations {
            let users: Vec<u64> = self.layout.population_users(p).collect();
            let channel = Layout::population_channel(p);
            for user in [users.first(), users.last()].into_iter().flatten() {
                let state = self
                    .client
                    .get_read_state(GetReadStateRequest {
                        user_id: *user,
                        channel_id: channel,
                    })
                    .await
                    .map_err(|status| {
                        call_error(format_args!("GetReadState of user {user}"), status)
                    })?
                    .into_inner()
                    .read_state
                    .with_context(|| format!("GetReadState of user {user}: no state"))?;
                ensure!(
                    state.mention_count == 1 && state.last_message_id == SETUP_MESSAGE,
                    "user {user} in channel {channel} reads {state:?} after a deferred mention: \
                     expected one mention over last_message_id {SETUP_MESSAGE}"
                );
            }
        }
        Ok(())
    }
}

// --- the report --------------------------------------------------------------

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1e3)
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.decimals$}"))
}

fn print_report(
    args: &BigUsersArgs,
    layout: &Layout,
    reads: &[ReadResult],
    fanouts: &[FanoutResult],
    idle_us_per_s: f64,
    scrape_ns: f64,
    evictions: Option<f64>,
) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== big users: GetUserReadStates of {} users per size, cold (first read since the server started) \
         and cached ({} reads each); one call at a time",
        layout.users_per_size, args.repeats
    );
    let _ = writeln!(
        out,
        "{:<11} {:>7} {:>6} {:>10} {:>10} {:>10} {:>12} {:>6} {:>12} {:>12} {:>6} {:>12} {:>7}",
        "kind",
        "size",
        "calls",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "cpu_us/state",
        "cpu_x",
        "cpu_marginal",
        "p50_us/state",
        "lat_x",
        "p50_marginal",
        "misses"
    );
    for (index, read) in reads.iter().enumerate() {
        let scaling = Scaling::of(reads, index);
        let _ = writeln!(
            out,
            "{:<11} {:>7} {:>6} {:>10} {:>10} {:>10} {:>12.4} {:>6.2} {:>12} {:>12.4} {:>6.2} {:>12} {:>7}",
            read.kind,
            read.size,
            read.latencies.0.len(),
            ms(read.latencies.quantile_us(0.5)),
            ms(read.latencies.quantile_us(0.99)),
            ms(read.latencies.max_us()),
            read.cpu_us_per_state(),
            scaling.cpu_x,
            opt(scaling.marginal_cpu_us, 4),
            read.p50_us_per_state(),
            scaling.lat_x,
            opt(scaling.marginal_p50_us, 4),
            opt(read.misses, 0),
        );
    }
    let split = if fanouts.first().is_some_and(|fanout| fanout.calls > 1) {
        format!(
            ", each split into {} calls of at most {} (limits.max_mention_users)",
            fanouts[0].calls, args.max_mention_users
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "\n== fan-outs: AddMentions to {} cold users (one stored state each), {} per mode{split}",
        layout.fanout_users, layout.fanout_repeats
    );
    let _ = writeln!(
        out,
        "{:<14} {:>7} {:>8} {:>10} {:>10} {:>10} {:>15} {:>16} {:>12} {:>8}",
        "kind",
        "users",
        "fanouts",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "cpu_us/user:call",
        "cpu_us/user:total",
        "drain_ms_max",
        "misses"
    );
    for fanout in fanouts {
        let drain = fanout
            .drains
            .iter()
            .max()
            .map(|drain| drain.as_secs_f64() * 1e3);
        let _ = writeln!(
            out,
            "{:<14} {:>7} {:>8} {:>10} {:>10} {:>10} {:>16.3} {:>17} {:>12} {:>8}",
            fanout.mode.kind(),
            fanout.users,
            fanout.fanouts(),
            ms(fanout.latencies.quantile_us(0.5)),
            ms(fanout.latencies.quantile_us(0.99)),
            ms(fanout.latencies.max_us()),
            fanout.cpu_call_us_per_user(),
            opt(fanout.cpu_total_us_per_user(), 3),
            opt(drain, 1),
            opt(fanout.misses, 0),
        );
    }
    let cold_per_user = reads
        .iter()
        .find(|read| read.kind == "get_cold")
        .map(|read| read.cpu.ns as f64 / 1e3 / read.latencies.0.len().max(1) as f64);
    let _ = writeln!(
        out,
        "\nserver CPU: the sum of its threads' run time (schedstat) over each phase, per state read \
         or per user mentioned; cpu_x and lat_x: per-state cost over the smallest size's, same kind \
         (1.00 = linear; below 1 where a call's fixed cost dominates the small size); *_marginal: \
         us per state past the next smaller size, (cost per call(S) - cost per call(S')) / (S - S'), \
         free of the fixed cost: growing with S is worse than linear. Server idle: {idle_us_per_s:.0} us/s (not subtracted). fanout_omit: 'call' \
         is up to the answer (the background loader starts meanwhile), 'total' until every deferred \
         mention is merged (readstates_mentions_deferred_waiting = 0), less {:.0} us per metrics \
         scrape made while waiting (polled every {} ms: drain_ms is that coarse). For reference, a cold read of a {}-state user cost {} us of CPU.",
        scrape_ns / 1e3,
        DRAIN_POLL.as_millis(),
        layout.sizes[0],
        opt(cold_per_user, 1),
    );
    let exited: usize = reads.iter().map(|read| read.cpu.exited).sum::<usize>()
        + fanouts
            .iter()
            .map(|fanout| fanout.cpu_call.exited)
            .sum::<usize>();
    if exited > 0 {
        let _ = writeln!(
            out,
            "WARNING: {exited} server threads exited during measured phases; their time in them is not counted"
        );
    }
    match evictions {
        Some(evictions) if evictions > 0.0 => {
            let _ = writeln!(
                out,
                "WARNING: the server evicted {evictions} users during the measurement: raise cache.capacity \
                 (reads and fan-outs may have found users cold by eviction, not only by the restart)"
            );
        }
        Some(_) => {
            let _ = writeln!(out, "evictions during the measurement: 0");
        }
        None => {}
    }

    // Machine-readable lines.
    for (index, read) in reads.iter().enumerate() {
        let scaling = Scaling::of(reads, index);
        let _ = writeln!(
            out,
            "BIG kind={} size={} calls={} states={} p50_us={:.0} p99_us={:.0} max_us={:.0} \
             cpu_us_per_state={:.4} cpu_ratio={:.3} cpu_marginal_us_per_state={} \
             p50_us_per_state={:.4} lat_ratio={:.3} p50_marginal_us_per_state={} cpu_us_per_call={:.1} \
             cpu_ms={:.3} cpu_ticks_ms={:.0} cpu_sys_ticks_ms={:.0} misses={}",
            read.kind,
            read.size,
            read.latencies.0.len(),
            read.states(),
            read.latencies.quantile_us(0.5),
            read.latencies.quantile_us(0.99),
            read.latencies.max_us(),
            read.cpu_us_per_state(),
            scaling.cpu_x,
            opt(scaling.marginal_cpu_us, 4),
            read.p50_us_per_state(),
            scaling.lat_x,
            opt(scaling.marginal_p50_us, 4),
            read.cpu_us_per_call(),
            read.cpu.ns as f64 / 1e6,
            read.cpu.ticks_ns as f64 / 1e6,
            read.cpu.system_ticks_ns as f64 / 1e6,
            opt(read.misses, 0),
        );
    }
    for fanout in fanouts {
        let _ = writeln!(
            out,
            "BIG kind={} users={} fanouts={} calls_per_fanout={} p50_us={:.0} p99_us={:.0} max_us={:.0} \
             cpu_us_per_user={:.3} cpu_us_per_user_total={} drain_max_ms={} cpu_ms={:.3} \
             cpu_ticks_ms={:.0} cpu_sys_ticks_ms={:.0} scrapes={} misses={}",
            fanout.mode.kind(),
            fanout.users,
            fanout.fanouts(),
            fanout.calls,
            fanout.latencies.quantile_us(0.5),
            fanout.latencies.quantile_us(0.99),
            fanout.latencies.max_us(),
            fanout.cpu_call_us_per_user(),
            opt(fanout.cpu_total_us_per_user(), 3),
            opt(
                fanout
                    .drains
                    .iter()
                    .max()
                    .map(|drain| drain.as_secs_f64() * 1e3),
                1
            ),
            fanout.cpu_call.ns as f64 / 1e6,
            fanout.cpu_call.ticks_ns as f64 / 1e6,
            fanout.cpu_call.system_ticks_ns as f64 / 1e6,
            fanout.scrapes,
            opt(fanout.misses, 0),
        );
    }
    print!("{out}");
}
