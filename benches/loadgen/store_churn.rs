//! `readstates-bench store churn` (`benches/loadgen/churn.sh`): a working
//! set rewritten, half deleted, purged and re-created, cycle after cycle,
//! with the file's size beside the live data after each step and loads
//! sampled all along (the data and the writer are in `store_data.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use readstates::clock::unix_micros;
use readstates::ids::UserId;
use readstates::store::{EmbeddedStore, LoadPriority, RowWrite, Store, encode_row};
use tokio::task::JoinSet;

use crate::store_data::{
    Filled, OpenArgs, Versions, Writer, channels_of, database_bytes, database_disk_bytes,
    histogram, mix, open, state,
};

#[derive(Debug, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// The working set, in states.
    #[arg(long, default_value_t = 1_000_000)]
    states: u64,
    #[arg(long, default_value_t = 10)]
    cycles: u32,
    /// Loads per second sampled while the churn runs.
    #[arg(long, default_value_t = 200)]
    load_rate: u64,
    /// Rows per batch (the flusher's `flush.batch_size`).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Batches queued at once (the flusher's `flush.concurrency`).
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// CSV of one row per step.
    #[arg(long)]
    csv: PathBuf,
}

/// Loads random users at a steady rate until stopped, into the histogram
/// of the current step.
fn sample_loads(
    store: EmbeddedStore,
    users: u64,
    rate: u64,
    into: Arc<Mutex<Histogram<u64>>>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for sample in 0u64.. {
            tick.tick().await;
            let user = 1 + mix(sample ^ 0x5eed) % users;
            let began = Instant::now();
            store
                .load_user(UserId::new(user)?, LoadPriority::Urgent)
                .await
                .context("loading a user during the churn")?;
            let micros = began.elapsed().as_micros().max(1) as u64;
            into.lock().record(micros)?;
        }
        Ok(())
    })
}

/// One step of the churn: which users, and what happens to them.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Every user's states get a new version.
    Rewrite,
    /// Half the users (alternating halves) lose every state.
    Delete,
    /// Every deletion marker is purged.
    Purge,
    /// The deleted users' states come back.
    Recreate,
}

pub async fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    if Filled::read(&args.open.dir)?.users != 0 || database_bytes(&args.open.dir) != 0 {
        bail!("churn starts from an empty directory");
    }
    let (store, _) = open(&args.open)?;
    // The working set: users 1..=users hold `states` states.
    let mut users = 0;
    let mut total = 0;
    while total < args.states {
        users += 1;
        total += channels_of(users);
    }
    let row_bytes = |user: u64| -> anyhow::Result<u64> {
        let mut value = Vec::new();
        let mut bytes = 0;
        for rank in 0..channels_of(user) {
            encode_row(&state(user, rank, 1 << 58, 1)?, false, &mut value);
            bytes += 16 + value.len() as u64;
        }
        Ok(bytes)
    };
    let mut live_bytes = vec![0u64; users as usize + 1];
    for user in 1..=users {
        live_bytes[user as usize] = row_bytes(user)?;
    }
    let mut csv = String::from(
        "cycle,step,seconds,live_states,live_bytes,file_bytes,disk_bytes,rows_written,load_p50_us,load_p99_us,load_max_us\n",
    );
    let mut writer = Writer {
        store: store.clone(),
        pending: JoinSet::new(),
        in_flight: args.in_flight.max(1),
    };
    let mut versions = Versions(0);
    let current = Arc::new(Mutex::new(histogram()?));
    let loader = sample_loads(store.clone(), users, args.load_rate, Arc::clone(&current));
    let started = Instant::now();
    let mut live = vec![false; users as usize + 1];
    let mut message = 1u64 << 58;
    // Cycle 0 is the first fill: every user created.
    for cycle in 0..=args.cycles {
        let steps: &[Step] = if cycle == 0 {
            &[Step::Recreate]
        } else {
            &[Step::Rewrite, Step::Delete, Step::Purge, Step::Recreate]
        };
        for &step in steps {
            message += 1;
            let mut rows_written = 0u64;
            let mut batch = Vec::with_capacity(args.batch);
            if let Step::Purge = step {
                let below = unix_micros();
                loop {
                    let purged = store
                        .purge_tombstones(below, usize::MAX)
                        .await
                        .context("purging")?;
                    if purged == 0 {
                        break;
                    }
                    rows_written += purged as u64;
                }
            } else {
                for user in 1..=users {
                    let index = user as usize;
                    let in_half = (user + u64::from(cycle)) % 2 == 0;
                    let (write, deleted) = match step {
                        Step::Rewrite => (live[index], false),
                        Step::Delete => (live[index] && in_half, true),
                        Step::Recreate => (!live[index], false),
                        Step::Purge => (false, false),
                    };
                    if !write {
                        continue;
                    }
                    live[index] = !deleted;
                    for rank in 0..channels_of(user) {
                        batch.push(RowWrite {
                            user_id: UserId::new(user)?,
                            state: state(user, rank, message, versions.next())?,
                            deleted,
                        });
                    }
                    if batch.len() >= args.batch {
                        rows_written += batch.len() as u64;
                        writer.write(std::mem::take(&mut batch)).await?;
                    }
                }
                rows_written += batch.len() as u64;
                if !batch.is_empty() {
                    writer.write(batch).await?;
                }
                writer.finish().await?;
            }
            let loads = std::mem::replace(&mut *current.lock(), histogram()?);
            let (live_states, bytes) = (1..=users).filter(|&user| live[user as usize]).fold(
                (0, 0),
                |(states, bytes), user| {
                    (
                        states + channels_of(user),
                        bytes + live_bytes[user as usize],
                    )
                },
            );
            let file = database_bytes(&args.open.dir);
            let disk = database_disk_bytes(&args.open.dir);
            let line = format!(
                "{cycle},{step:?},{:.2},{live_states},{bytes},{file},{disk},{rows_written},{},{},{}\n",
                started.elapsed().as_secs_f64(),
                loads.value_at_quantile(0.5),
                loads.value_at_quantile(0.99),
                loads.max(),
            );
            eprint!("CHURN {line}");
            csv.push_str(&line);
        }
    }
    loader.abort();
    std::fs::write(&args.csv, csv).with_context(|| format!("writing {}", args.csv.display()))?;
    Ok(())
}
