//! The default store: an embedded copy-on-write B-tree database (redb) in
//! one file under `data_dir`.
//!
//! Rows are keyed by `(user_id, channel_id)`, so one user's rows are one
//! contiguous key range: a cache miss is one range read. Values use the
//! shared row layout. Deletes are written as tombstone rows carrying their
//! version, so a stale flush that lands after a delete cannot resurrect the
//! row.
//!
//! Why a B-tree with snapshot reads: a load must never wait for background
//! work. A reader sees the last committed tree and shares no lock with the
//! writer's commit or its fsync, so a load costs its own page reads and
//! nothing else. (The LSM store used before held one lock, taken by every
//! read, while it freed a flushed memtable and while it fsynced its
//! manifest; loads stalled for 0.1 to 0.9 s every memtable rotation.)
//!
//! Every batch is committed with an fsync before the flusher hears that it
//! landed, so what the flusher wrote survives a power loss, not only a
//! killed process. Batches that queue up while one commits are committed
//! together (group commit), so a slow disk makes commits larger rather than
//! the queue longer.
//!
//! redb's calls block on disk I/O, so no async worker makes them. User
//! loads run on small fixed pools of reader threads, one for the loads a
//! call waits for and one, at idle priority, for a fan-out's (see
//! `readers`). Batch writes run on one dedicated writer thread in the
//! background (see `writer`), which gives way to request threads between
//! the pieces of its commits (see `paced`). On a machine whose CPUs are
//! all busy, write-back slows down and the dirty backlog limit
//! (`flush.max_dirty_states`) refuses writes before memory grows.
//!
//! Under churn the writer keeps the table's pages full: rows a batch adds
//! go in together, and a sweep repacks what deletes and purges emptied
//! (see `repack`).
//!
//! A data directory written by the earlier LSM store is imported once, on
//! first open (see `legacy`).
//!
//! Tombstones have an index by version, so the oldest can be purged without
//! a scan once no stale write can arrive (see `tombstones`). A purge is one
//! more job for the writer thread, committed in the group it lands in, and
//! it raises the deletion horizon recorded beside the version floor in the
//! same commit: loads return every tombstone at or above it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

mod compact;
mod error;
mod handle;
mod legacy;
mod paced;
mod priority;
mod readers;
mod repack;
mod snapshot;
mod tombstones;
mod writer;

use super::row::{Row, decode_row};
use super::{LoadPriority, RowWrite, Store, StoreError, StoreFuture, Tombstone, UserRows};
use crate::clock::unix_micros;
use crate::config::{
    DEFAULT_CACHE_MIB, DEFAULT_READER_THREADS, DEFAULT_REPACK_PER_CHANGE, StoreConfig,
};
use crate::ids::{ChannelId, UserId};
pub use compact::{Compaction, compact};
use error::redb_error;
use handle::{DbHandle, open_database};
use readers::Readers;
use repack::Repacker;
use snapshot::StatesTable;
use tombstones::TOMBSTONES;
use writer::{Work, WriteJob, spawn_writer, writer_stopped};

/// The read states, keyed by (user id, channel id).
const STATES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("read_states");
/// Small named values: the version floor, the deletion horizon (see
/// `tombstones`), and the mark that tombstones are indexed.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VERSION_FLOOR_KEY: &str = "version_floor";

/// The database file's name under `data_dir`.
pub const DATABASE_FILE: &str = "readstates.redb";

/// How the embedded store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    pub reader_threads: usize,
    pub cache_mib: usize,
    /// Rows repacked per row deleted or purged (see `repack`).
    pub repack_per_change: u32,
}

impl EmbeddedOptions {
    /// As `[store]` says.
    pub fn of(config: &StoreConfig) -> Self {
        Self {
            data_dir: config.data_dir.clone(),
            reader_threads: config.reader_threads,
            cache_mib: config.cache_mib,
            repack_per_change: config.repack_per_change,
        }
    }

    /// The defaults, under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            reader_threads: DEFAULT_READER_THREADS,
            cache_mib: DEFAULT_CACHE_MIB,
            repack_per_change: DEFAULT_REPACK_PER_CHANGE,
        }
    }
}

/// The embedded redb store.
#[derive(Clone)]
pub struct EmbeddedStore {
    handle: Arc<DbHandle>,
    writer: std::sync::mpsc::SyncSender<WriteJob>,
    readers: Arc<Readers>,
    /// The deletion horizon recorded in `meta`, kept here so that reading
    /// it costs a load of an atomic; raised by the writer thread's purges.
    horizon: Arc<AtomicU64>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database under `data_dir`, with the default
    /// settings.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(&EmbeddedOptions::new(data_dir))
    }

    /// Opens (or creates) the database as `options` say, importing a data
    /// directory of the earlier LSM store first if there is one.
    pub fn open_with(options: &EmbeddedOptions) -> Result<Self, StoreError> {
        let data_dir = &options.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|error| {
            StoreError::Unavailable(format!("cannot create {}: {error}", data_dir.display()))
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let db = open_database(&path, cache_bytes(options))?;
        Self::start(options, db, path)
    }

    /// Prepares `db`, opened at `path`, and starts the store's threads.
    fn start(options: &EmbeddedOptions, db: Database, path: PathBuf) -> Result<Self, StoreError> {
        let cache_bytes = cache_bytes(options);
        create_tables(&db)?;
        tombstones::index_if_missing(&db)?;
        legacy::import_if_present(&options.data_dir, &db)?;
        // After the import, whose version floor a new horizon starts from.
        let horizon = tombstones::horizon_on_open(&db)?;
        Ok(Self {
            handle: Arc::new(DbHandle::of(db, path, cache_bytes)),
            writer: spawn_writer(Repacker::new(options.repack_per_change))?,
            readers: Arc::new(Readers::start(options.reader_threads)?),
            horizon: Arc::new(AtomicU64::new(horizon)),
        })
    }

    /// Queues `work` for the writer thread. The queue is bounded and the
    /// writer drains it; a full queue waits on the blocking pool, never on
    /// an async worker.
    fn queue(&self, work: Work) -> StoreFuture<'static, ()> {
        let job = WriteJob {
            handle: Arc::clone(&self.handle),
            work,
        };
        let writer = self.writer.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || writer.send(job))
                .await
                .map_err(|error| StoreError::Worker(error.to_string()))?
                .map_err(|_| writer_stopped())
        })
    }

    /// Runs a blocking closure on the blocking pool.
    fn blocking<T, F>(&self, work: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let handle = Arc::clone(&self.handle);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || handle.with(work))
                .await
                .map_err(|error| StoreError::Worker(error.to_string()))?
        })
    }
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn load_user(&self, user_id: UserId, priority: LoadPriority) -> StoreFuture<'_, UserRows> {
        let handle = Arc::clone(&self.handle);
        let loaded = self.readers.run(priority, user_id, move || {
            handle.with_states(|states| load_user(states, user_id))
        });
        Box::pin(async move {
            let rows = loaded.await;
            if rows.is_err() && self.handle.is_suspect() {
                // No write may come soon (nothing dirty): have the writer
                // check the database now. A full queue has writes in it,
                // and each of them checks first.
                let probe = WriteJob {
                    handle: Arc::clone(&self.handle),
                    work: Work::Probe,
                };
                let _ = self.writer.try_send(probe);
            }
            rows
        })
    }

    fn expedite_load(&self, user_id: UserId) {
        self.readers.expedite(user_id);
    }

    fn write_batch(&self, rows: Arc<[RowWrite]>) -> StoreFuture<'_, ()> {
        let (done, result) = oneshot::channel();
        let queued = self.queue(Work::Batch { rows, done });
        Box::pin(async move {
            queued.await?;
            result.await.map_err(|_| writer_stopped())?
        })
    }

    fn load_version_floor(&self) -> StoreFuture<'_, u64> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(redb_error)?;
            let meta = txn.open_table(META).map_err(redb_error)?;
            let floor = meta.get(VERSION_FLOOR_KEY).map_err(redb_error)?;
            Ok(floor.map_or(0, |floor| floor.value()))
        })
    }

    fn record_version_floor(&self, floor: u64) -> StoreFuture<'_, ()> {
        // redb runs one write transaction at a time: this waits for the
        // writer thread's commit in progress, if any, on the blocking pool.
        self.blocking(move |db| raise_version_floor(db, floor))
    }

    fn sync(&self) -> StoreFuture<'_, ()> {
        // Every commit is durable (fsynced) before it is acknowledged, so
        // there is nothing buffered to sync.
        Box::pin(async { Ok(()) })
    }

    /// Removes at most `max` (and [`tombstones::MAX_PURGE`]) of the oldest
    /// tombstones below `below`, in one fsynced commit on the writer thread.
    ///
    /// `below` is also held to the wall clock. A reloaded user's version is
    /// the highest among its rows, so purging the newest row of a user
    /// lowers it; what keeps the user's next version above the purged one
    /// is that every version is at least the clock (`clock`). Right after a
    /// restart, versions run ahead of the clock (up to the version lease),
    /// and a tombstone written then is purged only once the clock has
    /// passed it.
    fn purge_tombstones(&self, below: u64, max: usize) -> StoreFuture<'_, usize> {
        let below = below.min(unix_micros());
        let (done, result) = oneshot::channel();
        let queued = self.queue(Work::Purge {
            below,
            max,
            horizon: Arc::clone(&self.horizon),
            done,
        });
        Box::pin(async move {
            queued.await?;
            result.await.map_err(|_| writer_stopped())?
        })
    }

    /// Returns the horizon of the last purge (or the one recorded when the
    /// file was opened): a purge removes only tombstones below its cutoff,
    /// so every one at or above the highest cutoff is still stored
    /// (ARCHITECTURE.md §1.3).
    fn deletion_horizon(&self) -> u64 {
        // Relaxed is enough: a purge raises it before its commit, and a load
        // that saw the commit synchronized with the writer through the
        // snapshot's lock (see `snapshot`).
        self.horizon.load(Ordering::Relaxed)
    }
}

/// redb's page cache, in bytes.
fn cache_bytes(options: &EmbeddedOptions) -> usize {
    options.cache_mib.saturating_mul(1 << 20)
}

/// Begins a write transaction whose commit is durable (fsynced before
/// `commit` returns) and saves redb's allocator state ("quick repair"), so
/// that opening the file after a crash loads that state instead of walking
/// the whole file to rebuild it: the walk grows with the store (12 s at 100
/// million states, ARCHITECTURE.md §2.5). Every write transaction of
/// the store begins here: a commit without the saved state would leave the
/// next open after a crash to the walk again.
fn begin_durable_write(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(redb_error)?;
    txn.set_durability(Durability::Immediate)
        .map_err(redb_error)?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// Records `floor` as the version floor unless a higher one is recorded
/// (and the deletion horizon if a file has none yet); commits with an
/// fsync.
fn raise_version_floor(db: &Database, floor: u64) -> Result<(), StoreError> {
    let txn = begin_durable_write(db)?;
    {
        let mut meta = txn.open_table(META).map_err(redb_error)?;
        let current = meta
            .get(VERSION_FLOOR_KEY)
            .map_err(redb_error)?
            .map_or(0, |current| current.value());
        tombstones::horizon_if_missing(&mut meta, current)?;
        if floor > current {
            meta.insert(VERSION_FLOOR_KEY, floor).map_err(redb_error)?;
        }
    }
    txn.commit().map_err(redb_error)
}

/// Creates the tables if the database is new, so that readers can open
/// them before the first write.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = begin_durable_write(db)?;
    txn.open_table(STATES).map_err(redb_error)?;
    txn.open_table(META).map_err(redb_error)?;
    txn.open_table(TOMBSTONES).map_err(redb_error)?;
    txn.commit().map_err(redb_error)
}

fn load_user(states: &StatesTable, user_id: UserId) -> Result<UserRows, StoreError> {
    let user = user_id.get();
    let mut rows = UserRows::default();
    for entry in states
        .range((user, 0)..=(user, u64::MAX))
        .map_err(redb_error)?
    {
        let (key, value) = entry.map_err(redb_error)?;
        let corrupt = |source| StoreError::Corrupt {
            user_id: user,
            source,
        };
        let channel_id =
            ChannelId::new(key.value().1).map_err(|_| corrupt(super::RowDecodeError::Id))?;
        let row = decode_row(channel_id, value.value()).map_err(corrupt)?;
        rows.version = rows.version.max(row.version());
        match row {
            Row::Live(state) => rows.states.push(state),
            Row::Tombstone { version } => rows.deleted.push(Tombstone {
                channel_id,
                version,
            }),
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod compact_tests;
#[cfg(test)]
mod paced_tests;
#[cfg(test)]
mod readers_tests;
#[cfg(test)]
mod repack_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tombstone_tests;
#[cfg(test)]
mod writer_tests;
