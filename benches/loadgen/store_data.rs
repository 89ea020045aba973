//! The data and the tools that `readstates-bench store` (`store_scale.rs`)
//! and its churn (`store_churn.rs`) share: the stored users and their
//! states, opening the store, writing batches with several in flight, and
//! the file's size.
//!
//! User `u` (1, 2, ...) has 1 to 100 channels ([`channels_of`], 50.5 on
//! average); one state in ten carries 1 to 3 pending mentions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use readstates::clock::unix_micros;
use readstates::ids::{ChannelId, MessageId};
use readstates::read_state::{Mentions, ReadState};
use readstates::store::{EmbeddedOptions, EmbeddedStore, RowWrite, Store};
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub(crate) struct OpenArgs {
    /// The store's data directory.
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// The store's page cache (`store.cache_mib`).
    #[arg(long, default_value_t = 128)]
    cache_mib: usize,
    /// Load threads (`store.reader_threads`).
    #[arg(long, default_value_t = 2)]
    reader_threads: usize,
    /// Background repacking (`store.repack_per_change`; 0 turns it off).
    #[arg(long, default_value_t = readstates::config::DEFAULT_REPACK_PER_CHANGE)]
    repack_per_change: u32,
}

/// SplitMix64: the same data on every run, with no extra crate.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many channels user `u` has: 1 to 100.
pub(crate) fn channels_of(user: u64) -> u64 {
    1 + mix(user) % 100
}

/// Channel ids are snowflake-sized, as a real deployment's are.
const CHANNEL_BASE: u64 = 1 << 50;

/// Versions: above every earlier one and at least the clock, as the
/// service's are (purges are held to the clock).
pub(crate) struct Versions(pub(crate) u64);

impl Versions {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = (self.0 + 1).max(unix_micros());
        self.0
    }
}

/// The state of `user` in its `rank`-th channel, acknowledged at `message`.
pub(crate) fn state(user: u64, rank: u64, message: u64, version: u64) -> anyhow::Result<ReadState> {
    let pending = match mix(user ^ (rank << 40)) % 30 {
        0 => vec![message + 1],
        1 => vec![message + 1, message + 2],
        2 => vec![message + 1, message + 2, message + 3],
        _ => Vec::new(),
    };
    Ok(ReadState {
        channel_id: ChannelId::new(CHANNEL_BASE + rank)?,
        last_message_id: MessageId::new(message)?,
        last_pin_timestamp_ms: 0,
        updated_at_ms: version / 1000,
        version,
        mentions: Mentions::from_parts(pending, 0, 0),
    })
}

pub(crate) fn open(args: &OpenArgs) -> anyhow::Result<(EmbeddedStore, Duration)> {
    let started = Instant::now();
    let store = EmbeddedStore::open_with(&EmbeddedOptions {
        data_dir: args.dir.clone(),
        reader_threads: args.reader_threads,
        cache_mib: args.cache_mib,
        repack_per_change: args.repack_per_change,
    })
    .with_context(|| format!("opening the store under {}", args.dir.display()))?;
    Ok((store, started.elapsed()))
}

/// How far `fill` got: users 1..=users are stored, `states` states in all.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Filled {
    pub(crate) users: u64,
    pub(crate) states: u64,
}

const FILLED_FILE: &str = "scale-filled";

impl Filled {
    pub(crate) fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILLED_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Self::default());
        };
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next()) {
            (Some(Ok(users)), Some(Ok(states))) => Ok(Self { users, states }),
            _ => bail!("{} is not `users states`", path.display()),
        }
    }

    pub(crate) fn write(self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(
            dir.join(FILLED_FILE),
            format!("{} {}\n", self.users, self.states),
        )
        .context("recording the fill")
    }
}

/// The database file's length (an open database keeps it at what it has
/// allocated).
pub(crate) fn database_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(readstates::store::DATABASE_FILE)).map_or(0, |meta| meta.len())
}

/// The disk space the database file takes: the blocks the filesystem holds
/// for it, where never-written pages take none.
pub(crate) fn database_disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join(readstates::store::DATABASE_FILE))
        .map_or(0, |meta| meta.blocks() * 512)
}

/// Writes batches, keeping `in_flight` queued; returns when all landed.
pub(crate) struct Writer {
    pub(crate) store: EmbeddedStore,
    pub(crate) pending: JoinSet<anyhow::Result<()>>,
    pub(crate) in_flight: usize,
}

impl Writer {
    pub(crate) async fn write(&mut self, rows: Vec<RowWrite>) -> anyhow::Result<()> {
        while self.pending.len() >= self.in_flight {
            self.join_one().await?;
        }
        let store = self.store.clone();
        let rows: Arc<[RowWrite]> = rows.into();
        self.pending
            .spawn(async move { store.write_batch(rows).await.context("writing a batch") });
        Ok(())
    }

    async fn join_one(&mut self) -> anyhow::Result<()> {
        if let Some(result) = self.pending.join_next().await {
            result.context("a batch task panicked")??;
        }
        Ok(())
    }

    pub(crate) async fn finish(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a histogram")
}
