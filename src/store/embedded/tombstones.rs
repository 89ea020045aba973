//! The tombstone index, and the purge it makes cheap.
//!
//! A deletion stays in `read_states` as a tombstone row carrying its
//! version, so that a stale write of the deleted state loses. Once the
//! caller knows no write older than some version can arrive, the
//! tombstones below that version only take space. To find them without
//! reading every row, each tombstone row also has an entry keyed by
//! `(version, user, channel)` in a second table: the oldest tombstones are
//! the first entries of that table, and a purge reads only what it removes.
//!
//! Every change to `read_states` goes through [`upsert`], which keeps the
//! index in step in the same transaction: a tombstone written adds its
//! entry, a tombstone overwritten (by a newer write or a newer tombstone)
//! removes its entry. A data file written before the index existed is
//! indexed once, when it is opened (see [`index_if_missing`]).
//!
//! The deletion horizon, in `meta`, says which tombstones are certainly
//! still here: every one at or above it (ARCHITECTURE.md §1.3). Loads
//! return the tombstones with the live states, and a copy of a user's
//! states can be brought up to date from them only if none it needs were
//! purged. Each purge raises the horizon to its cutoff in the same
//! transaction, whether or not it removed every tombstone below it: the
//! horizon promises what is kept, not what is gone. A data file without a
//! recorded horizon (new, or written before the horizon existed, whose
//! purges recorded none) starts from its version floor, above every
//! version it ever handed out, so it never claims tombstones it may have
//! purged (see [`horizon_on_open`]).

use std::ops::Bound;
use std::time::Instant;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};

use super::{META, STATES, VERSION_FLOOR_KEY, begin_durable_write, redb_error};
use crate::ids::ChannelId;
use crate::store::StoreError;
use crate::store::row::{Row, decode_row};

/// One entry per tombstone row of `read_states`: (version, user, channel).
pub const TOMBSTONES: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("tombstones");

/// Set in `meta` once every tombstone of `read_states` has its entry.
pub const INDEXED_KEY: &str = "tombstones_indexed";

/// The deletion horizon in `meta`: no tombstone at or above it was purged.
pub const HORIZON_KEY: &str = "deletion_horizon";

/// Rows read per transaction while indexing an older data file: memory and
/// the size of one commit stay bounded however large the table is.
const INDEX_CHUNK: usize = 100_000;

/// Tombstones one purge removes at most, whatever the caller asks: a purge
/// runs on the writer thread, and the batches queued behind it wait for
/// it. A removal costs about twice a row written (in a debug build on a
/// busy 2-core machine, 10,000 removals took 0.5 to 0.75 s, a batch of
/// 10,000 rows 0.23 to 0.37 s), so this many cost about a 4,000-row batch.
pub const MAX_PURGE: usize = 2_000;

/// The read-state rows, as a write transaction opens them.
pub type StatesTable<'txn> = Table<'txn, (u64, u64), &'static [u8]>;
/// The tombstone index, as a write transaction opens it.
pub type IndexTable<'txn> = Table<'txn, (u64, u64, u64), ()>;
/// The named values, as a write transaction opens them.
pub type MetaTable<'txn> = Table<'txn, &'static str, u64>;

/// The row to write under one key: its encoding and what it holds.
pub struct RowBytes<'a> {
    pub version: u64,
    pub deleted: bool,
    pub bytes: &'a [u8],
}

/// What an upsert did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// Nothing: the stored row is as new or newer.
    Stale,
    /// Nothing stored under the key: the caller inserts the row (new rows
    /// go in together, in key order, see `repack::Inserts`); its index
    /// entry, if it is a tombstone, is written.
    New,
    /// A stored row replaced.
    Written,
    /// A live row turned into a tombstone, a seventh of its size: its
    /// leaf empties (see `repack`).
    Emptied,
}

impl Upserted {
    pub fn wrote(self) -> bool {
        self != Self::Stale
    }
}

/// Writes `row` under `(user, channel_id)` unless the stored row is as new
/// or newer (or leaves it to the caller if nothing is stored there), and
/// keeps the tombstone index in step; says what it did. A damaged stored
/// row counts as version 0, so any write replaces it (its index entry, if
/// it had one, is dropped by a later purge).
pub fn upsert(
    states: &mut StatesTable<'_>,
    index: &mut IndexTable<'_>,
    user: u64,
    channel_id: ChannelId,
    row: &RowBytes<'_>,
) -> Result<Upserted, StoreError> {
    let channel = channel_id.get();
    let stored = states
        .get((user, channel))
        .map_err(redb_error)?
        .map(|stored| decode_row(channel_id, stored.value()));
    let stored_version = match &stored {
        Some(Ok(stored)) => stored.version(),
        Some(Err(_)) | None => 0,
    };
    if stored.is_some() && stored_version >= row.version {
        return Ok(Upserted::Stale);
    }
    let was_live = matches!(stored, Some(Ok(Row::Live(_))));
    if let Some(Ok(Row::Tombstone { version })) = stored {
        index.remove((version, user, channel)).map_err(redb_error)?;
    }
    if row.deleted {
        index
            .insert((row.version, user, channel), ())
            .map_err(redb_error)?;
    }
    if stored.is_none() {
        return Ok(Upserted::New);
    }
    states
        .insert((user, channel), row.bytes)
        .map_err(redb_error)?;
    Ok(if was_live && row.deleted {
        Upserted::Emptied
    } else {
        Upserted::Written
    })
}

/// Removes the oldest tombstones whose version is below `below`, at most
/// `max` (and [`MAX_PURGE`]) index entries looked at; returns how many rows
/// it removed. An entry whose row is no longer that tombstone (it can only
/// be left by a damaged row) is dropped without touching the row.
pub fn purge(
    states: &mut StatesTable<'_>,
    index: &mut IndexTable<'_>,
    below: u64,
    max: usize,
) -> Result<usize, StoreError> {
    let max = max.min(MAX_PURGE);
    let mut due = Vec::with_capacity(max);
    for entry in index.range(..(below, 0, 0)).map_err(redb_error)?.take(max) {
        let (key, _) = entry.map_err(redb_error)?;
        due.push(key.value());
    }
    let mut purged = 0;
    for (version, user, channel) in due {
        index.remove((version, user, channel)).map_err(redb_error)?;
        let Ok(channel_id) = ChannelId::new(channel) else {
            continue;
        };
        let stored = states
            .get((user, channel))
            .map_err(redb_error)?
            .map(|stored| decode_row(channel_id, stored.value()));
        if let Some(Ok(Row::Tombstone { version: stored })) = stored
            && stored == version
        {
            states.remove((user, channel)).map_err(redb_error)?;
            purged += 1;
        }
    }
    Ok(purged)
}

/// Raises the recorded deletion horizon to `below` (a purge's cutoff)
/// unless it is higher already; returns the horizon now recorded. A purge
/// calls it in its own transaction, so that its removals and the promise
/// commit together.
pub fn raise_horizon(meta: &mut MetaTable<'_>, below: u64) -> Result<u64, StoreError> {
    let recorded = meta
        .get(HORIZON_KEY)
        .map_err(redb_error)?
        .map_or(0, |recorded| recorded.value());
    if below <= recorded {
        return Ok(recorded);
    }
    meta.insert(HORIZON_KEY, below).map_err(redb_error)?;
    Ok(below)
}

/// Raises the recorded deletion horizon to `at_least`, in a transaction of
/// its own: for rows imported from a store that may have purged below it.
pub fn raise_horizon_in(db: &Database, at_least: u64) -> Result<(), StoreError> {
    let txn = begin_durable_write(db)?;
    raise_horizon(&mut txn.open_table(META).map_err(redb_error)?, at_least)?;
    txn.commit().map_err(redb_error)
}

/// Returns the recorded deletion horizon. A data file without one gets its
/// version floor (0 on a new file): a file written before the horizon
/// existed may have purged tombstones without saying up to where, but never
/// any at or above the floor, which is above every version handed out
/// before it was recorded. The next version floor recorded writes it down
/// (see [`horizon_if_missing`]); reading it here adds no commit to an open.
pub fn horizon_on_open(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(redb_error)?;
    let meta = txn.open_table(META).map_err(redb_error)?;
    if let Some(recorded) = meta.get(HORIZON_KEY).map_err(redb_error)? {
        return Ok(recorded.value());
    }
    let floor = meta
        .get(VERSION_FLOOR_KEY)
        .map_err(redb_error)?
        .map_or(0, |floor| floor.value());
    if floor > 0 {
        tracing::info!(
            horizon = floor,
            "a data file written before the deletion horizon: its version floor is the horizon"
        );
    }
    Ok(floor)
}

/// Records `floor`, the version floor before a new one is recorded, as the
/// deletion horizon if none is recorded yet (see [`horizon_on_open`]); part
/// of the transaction that records the new floor.
pub fn horizon_if_missing(meta: &mut MetaTable<'_>, floor: u64) -> Result<(), StoreError> {
    if meta.get(HORIZON_KEY).map_err(redb_error)?.is_none() {
        meta.insert(HORIZON_KEY, floor).map_err(redb_error)?;
    }
    Ok(())
}

/// Indexes the tombstones of a data file written before the index existed,
/// once: in chunked transactions, logged, and marked done in `meta`. An
/// interrupted run starts over on the next open (adding an entry twice is
/// harmless). Runs before the writer thread starts, so nothing else writes.
pub fn index_if_missing(db: &Database) -> Result<(), StoreError> {
    index_in_chunks(db, INDEX_CHUNK)
}

/// [`index_if_missing`], reading `chunk_rows` rows per transaction.
pub fn index_in_chunks(db: &Database, chunk_rows: usize) -> Result<(), StoreError> {
    let rows = {
        let txn = db.begin_read().map_err(redb_error)?;
        let meta = txn.open_table(META).map_err(redb_error)?;
        if meta.get(INDEXED_KEY).map_err(redb_error)?.is_some() {
            return Ok(());
        }
        txn.open_table(STATES)
            .map_err(redb_error)?
            .len()
            .map_err(redb_error)?
    };
    let started = Instant::now();
    if rows > 0 {
        tracing::info!(
            rows,
            "indexing the tombstones of a data file written before the tombstone index"
        );
    }
    let mut after: Option<(u64, u64)> = None;
    let mut seen: u64 = 0;
    let mut indexed: u64 = 0;
    loop {
        let txn = begin_durable_write(db)?;
        let chunk = {
            let states = txn.open_table(STATES).map_err(redb_error)?;
            let mut index = txn.open_table(TOMBSTONES).map_err(redb_error)?;
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut chunk = 0;
            for entry in states
                .range::<(u64, u64)>((lower, Bound::Unbounded))
                .map_err(redb_error)?
                .take(chunk_rows)
            {
                let (key, value) = entry.map_err(redb_error)?;
                let (user, channel) = key.value();
                after = Some((user, channel));
                chunk += 1;
                let Ok(channel_id) = ChannelId::new(channel) else {
                    continue;
                };
                if let Ok(Row::Tombstone { version }) = decode_row(channel_id, value.value()) {
                    index
                        .insert((version, user, channel), ())
                        .map_err(redb_error)?;
                    indexed += 1;
                }
            }
            chunk
        };
        seen += chunk as u64;
        let done = chunk < chunk_rows;
        if done {
            let mut meta = txn.open_table(META).map_err(redb_error)?;
            meta.insert(INDEXED_KEY, 1).map_err(redb_error)?;
        }
        txn.commit().map_err(redb_error)?;
        if done {
            break;
        }
        tracing::info!(
            progress_pct = (seen as f64 * 100.0 / rows.max(1) as f64).round(),
            "indexing tombstones"
        );
    }
    if rows > 0 {
        tracing::info!(
            rows = seen,
            tombstones = indexed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "indexed the tombstones"
        );
    }
    Ok(())
}
