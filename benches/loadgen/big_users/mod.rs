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
//!
//! This file holds the flags, the two phases' entry point and the id layout;
//! `setup.rs` connects and creates the data, `cpu.rs` reads the server's CPU
//! time and metrics, `measure.rs` runs the measured phases into the types of
//! `results.rs`, and `report.rs` prints the tables and the machine-readable
//! lines.

use std::time::Duration;

use anyhow::{Context, ensure};

mod cpu;
mod measure;
mod report;
mod results;
mod setup;

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
/// How often the deferred mentions are polled after a fan-out without states.
const DRAIN_POLL: Duration = Duration::from_millis(50);

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
            let clients = setup::connect(
                &args.addr,
                args.connections.max(1),
                args.connect_wait,
                args.call_timeout,
            )
            .await?;
            setup::setup(&args, &layout, &clients).await
        }
        Phase::Measure => {
            let pid = args
                .server_pid
                .context("--phase measure needs --server-pid (the server's CPU is measured)")?;
            let clients =
                setup::connect(&args.addr, 1, args.connect_wait, args.call_timeout).await?;
            let client = clients
                .into_iter()
                .next()
                .context("no connection was opened")?;
            measure::measure(&args, &layout, client, pid).await
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
