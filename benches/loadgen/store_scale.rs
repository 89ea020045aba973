//! `readstates-bench store`: the embedded store as it grows, measured
//! through the same store API the service uses (no gRPC, no cache), so each
//! figure is the store's own. `benches/loadgen/scale.sh` runs them at 1M,
//! 10M and 100M states, and `churn.sh` the churn.
//!
//! * `fill` extends a store to `--states` states, in key order, through
//!   `Store::write_batch` (the flusher's path: read-compare-write, one fsynced
//!   commit per group of batches). Loading in key order is the fastest
//!   honest path: a bulk import sorts its input first.
//! * `loads` times loads of random users, one at a time.
//! * `writeback` times batches of the flusher's shape (512 rows, 8 states of
//!   each of 64 random users) with `--in-flight` batches queued at once.
//! * `churn` (in `store_churn.rs`) rewrites, deletes, purges and
//!   re-creates a working set for `--cycles` cycles, recording the file's
//!   size and the live data after each step, with loads sampled throughout.
//! * `wait-serving` polls the gRPC health check until the server answers
//!   `SERVING` and prints how long after `--started-ns` that was.
//!
//! The data, and the tools shared with the churn, are in `store_data.rs`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use readstates::ids::UserId;
use readstates::store::{LoadPriority, RowWrite, Store};
use tokio::task::JoinSet;

use crate::store_data::{
    Filled, OpenArgs, Versions, Writer, channels_of, database_bytes, histogram, mix, open, state,
};

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Extend the store to `--states` states.
    Fill(FillArgs),
    /// Time loads of random users.
    Loads(LoadsArgs),
    /// Time batch writes of the flusher's shape.
    Writeback(WritebackArgs),
    /// Rewrite, delete, purge and re-create a working set, cycle after cycle.
    Churn(crate::store_churn::ChurnArgs),
    /// Wait until a server's health check says SERVING.
    WaitServing(WaitArgs),
}

#[derive(Debug, Args)]
struct FillArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Stop once at least this many states are stored.
    #[arg(long)]
    states: u64,
    /// Rows per batch.
    #[arg(long, default_value_t = 8192)]
    batch: usize,
    /// Batches queued at once (the writer commits up to 16 together).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
}

#[derive(Debug, Args)]
struct LoadsArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Loads to time.
    #[arg(long, default_value_t = 2000)]
    samples: u64,
    /// Loads of other random users first, not timed: a serving store has
    /// the upper levels of its tree in memory, an opened one not yet.
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct WritebackArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Batches to write.
    #[arg(long, default_value_t = 400)]
    batches: u64,
    /// Batches queued at once (the flusher's `flush.concurrency` is 4).
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct WaitArgs {
    /// The server's gRPC address.
    #[arg(long)]
    addr: String,
    /// When the server was started, in ns since the epoch (`date +%s%N`).
    #[arg(long)]
    started_ns: u128,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Fill(args) => fill(args).await,
        StoreCommand::Loads(args) => loads(args).await,
        StoreCommand::Writeback(args) => writeback(args).await,
        StoreCommand::Churn(args) => crate::store_churn::churn(args).await,
        StoreCommand::WaitServing(args) => wait_serving(args).await,
    }
}

async fn fill(args: FillArgs) -> anyhow::Result<()> {
    let (store, opened) = open(&args.open)?;
    let mut filled = Filled::read(&args.open.dir)?;
    let before = filled;
    let mut writer = Writer {
        store,
        pending: JoinSet::new(),
        in_flight: args.in_flight.max(1),
    };
    let mut versions = Versions(0);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(args.batch);
    while filled.states < args.states {
        let user = filled.users + 1;
        for rank in 0..channels_of(user) {
            let version = versions.next();
            batch.push(RowWrite {
                user_id: UserId::new(user)?,
                state: state(user, rank, 1 << 58, version)?,
                deleted: false,
            });
        }
        filled.users = user;
        filled.states += channels_of(user);
        if batch.len() >= args.batch {
            writer.write(std::mem::take(&mut batch)).await?;
            batch.reserve(args.batch);
        }
    }
    if !batch.is_empty() {
        writer.write(batch).await?;
    }
    writer.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    filled.write(&args.open.dir)?;
    // Closed first: an open database keeps the file at its allocated size.
    drop(writer);
    let bytes = database_bytes(&args.open.dir);
    let added = filled.states - before.states;
    println!(
        "FILL states={} users={} added={added} seconds={seconds:.1} rows_per_s={:.0} file_bytes={bytes} bytes_per_state={:.1} open_ms={:.1}",
        filled.states,
        filled.users,
        added as f64 / seconds.max(1e-9),
        bytes as f64 / filled.states.max(1) as f64,
        opened.as_secs_f64() * 1e3,
    );
    Ok(())
}

fn quantiles(histogram: &Histogram<u64>) -> String {
    format!(
        "p50_us={} p99_us={} p999_us={} max_us={}",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    )
}

async fn loads(args: LoadsArgs) -> anyhow::Result<()> {
    let filled = Filled::read(&args.open.dir)?;
    if filled.users == 0 {
        bail!("{} holds no filled store", args.open.dir.display());
    }
    let (store, opened) = open(&args.open)?;
    for sample in 0..args.warmup {
        let user = 1 + mix(!args.seed.wrapping_mul(1 << 32) ^ sample) % filled.users;
        store
            .load_user(UserId::new(user)?, LoadPriority::Urgent)
            .await
            .context("loading a user")?;
    }
    let mut latency = histogram()?;
    let mut states = 0u64;
    let started = Instant::now();
    for sample in 0..args.samples {
        let user = 1 + mix(args.seed.wrapping_mul(1 << 32) ^ sample) % filled.users;
        let began = Instant::now();
        let rows = store
            .load_user(UserId::new(user)?, LoadPriority::Urgent)
            .await
            .context("loading a user")?;
        latency.record(began.elapsed().as_micros().max(1) as u64)?;
        states += rows.states.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "LOADS stored={} samples={} {} mean_us={:.0} states_per_load={:.1} loads_per_s={:.0} open_ms={:.1}",
        filled.states,
        args.samples,
        quantiles(&latency),
        latency.mean(),
        states as f64 / args.samples.max(1) as f64,
        args.samples as f64 / seconds.max(1e-9),
        opened.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Users touched per write-back batch, and states per user: 512 rows.
const BATCH_USERS: u64 = 64;
const STATES_PER_USER: u64 = 8;

async fn writeback(args: WritebackArgs) -> anyhow::Result<()> {
    let filled = Filled::read(&args.open.dir)?;
    if filled.users == 0 {
        bail!("{} holds no filled store", args.open.dir.display());
    }
    let (store, _) = open(&args.open)?;
    let mut writer = Writer {
        store,
        pending: JoinSet::new(),
        in_flight: args.in_flight.max(1),
    };
    let mut versions = Versions(0);
    let mut rows_written = 0u64;
    let started = Instant::now();
    for number in 0..args.batches {
        let mut batch = Vec::with_capacity((BATCH_USERS * STATES_PER_USER) as usize);
        for slot in 0..BATCH_USERS {
            let user = 1 + mix(args.seed ^ (number << 20) ^ slot) % filled.users;
            let channels = channels_of(user);
            let first = mix(user ^ number) % channels;
            for step in 0..STATES_PER_USER.min(channels) {
                let version = versions.next();
                batch.push(RowWrite {
                    user_id: UserId::new(user)?,
                    state: state(user, (first + step) % channels, (1 << 58) + number, version)?,
                    deleted: false,
                });
            }
        }
        rows_written += batch.len() as u64;
        writer.write(batch).await?;
    }
    writer.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "WRITEBACK stored={} in_flight={} batches={} rows={rows_written} seconds={seconds:.2} rows_per_s={:.0} batches_per_s={:.1}",
        filled.states,
        args.in_flight,
        args.batches,
        rows_written as f64 / seconds.max(1e-9),
        args.batches as f64 / seconds.max(1e-9),
    );
    Ok(())
}

async fn wait_serving(args: WaitArgs) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let endpoint = format!("http://{}", args.addr);
    loop {
        if Instant::now() > deadline {
            bail!(
                "{} did not answer SERVING in {} s",
                args.addr,
                args.timeout_s
            );
        }
        let channel = tonic::transport::Channel::from_shared(endpoint.clone())
            .context("the server's address")?
            .connect()
            .await;
        if let Ok(channel) = channel {
            let mut client = HealthClient::new(channel);
            let request = HealthCheckRequest {
                service: "readstates.v1.ReadStates".to_owned(),
            };
            if let Ok(answer) = client.check(request).await
                && answer.into_inner().status == ServingStatus::Serving as i32
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_nanos();
    println!(
        "SERVING after_ms={:.1}",
        now_ns.saturating_sub(args.started_ns) as f64 / 1e6
    );
    Ok(())
}
