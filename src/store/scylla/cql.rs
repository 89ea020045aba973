//! The store's CQL: statement text, the mapping between a read state and a
//! `read_states` row, and the grouping of a flush into single-user batches.
//! Everything here is pure, so it is unit-tested without a cluster.
//!
//! Column types. Ids are CQL `bigint`: ids are at most 2^63-1 (checked at
//! the API edge), so they are stored as they are and never negative. The
//! other unsigned fields (`last_pin_timestamp_ms` is whatever the caller
//! sent) are stored as the same 64 bits reinterpreted as signed, which
//! round-trips every value exactly. Versions become write timestamps and
//! saturate at `i64::MAX` (they are Unix microseconds, far below it).
//!
//! Pending mention ids are a `frozen<list<bigint>>` rather than a blob in
//! the embedded store's row encoding: a frozen list is one cell replaced
//! whole (no per-element cells, no collection tombstones on overwrite, the
//! same cost as a blob), and it stays readable in `cqlsh` and to any other
//! tool, with no private byte format to keep compatible. An empty list is
//! written as an empty list, not null, because binding null writes a
//! tombstone.
//!
//! Deletes write no tombstone. A row tombstone stays in the user's
//! partition for `gc_grace_seconds` (10 days by default) and every load
//! reads it, so a user who deleted over 100,000 states within that time
//! could not be loaded at all on Cassandra (`tombstone_failure_threshold`).
//! A deletion is instead a delete marker: an ordinary write of every
//! column of the row (zeros, an empty list) with `deleted = true`, at the
//! deletion's version and with a TTL of the table's `gc_grace_seconds`
//! (see `migrations/0004_delete_markers.cql`). Last write wins by version
//! as before, cell by cell: an older write loses to every cell of the
//! marker, a newer one (which sets every column, `deleted = false`, no TTL)
//! replaces all of them. A marker is a live row until it expires, which a
//! load returns as a deletion, not a state. Its cells expire no sooner
//! than `gc_grace_seconds` after they were written, so the expired marker
//! is purgeable at once and reads never count it as a tombstone; like a
//! tombstone, it stops guarding against stale writes after
//! `gc_grace_seconds`. Writes are `UPDATE`s, which add no row marker
//! (primary key liveness): a row then exists only through its cells, and
//! vanishes with them when its delete marker expires.

use ::scylla::serialize::SerializationError;
use ::scylla::serialize::row::{RowSerializationContext, SerializeRow};
use ::scylla::serialize::writers::RowWriter;

use crate::ids::{ChannelId, MessageId, UserId};
use crate::read_state::{Mentions, ReadState};
use crate::store::{RowDecodeError, RowWrite, Tombstone, UserRows, newest_per_key};

/// The columns a load reads, in `SELECT` order.
const LOAD_COLUMNS: &str = "channel_id, last_message_id, last_pin_timestamp_ms, updated_at_ms, \
                            version, untracked_mentions, untracked_until, pending_mentions, \
                            user_version, deleted";

/// What an upsert sets, after its `USING TIMESTAMP ?`.
const UPSERT_SET: &str = "SET last_message_id = ?, last_pin_timestamp_ms = ?, updated_at_ms = ?, \
                          version = ?, untracked_mentions = ?, untracked_until = ?, \
                          pending_mentions = ?, deleted = false";

/// What a delete marker sets: every column of the row, so that no older
/// cell outlives the marker.
const MARKER_SET: &str = "SET last_message_id = 0, last_pin_timestamp_ms = 0, updated_at_ms = 0, \
                          version = ?, untracked_mentions = 0, untracked_until = 0, \
                          pending_mentions = [], deleted = true";

/// The row a statement writes.
const ROW_KEY: &str = "WHERE user_id = ? AND channel_id = ?";

/// The longest TTL Cassandra accepts (20 years).
const MAX_TTL_SECONDS: i32 = 20 * 365 * 24 * 60 * 60;

/// The `meta` row holding the version floor.
pub const VERSION_FLOOR_KEY: &str = "version_floor";

/// One CQL batch carries at most this many statements...
const MAX_BATCH_STATEMENTS: usize = 1_024;
/// ...and about this many bytes of values, far below the mutation size
/// limits (half a commitlog segment: 16 MiB by default in both databases),
/// even when states track many thousands of mentions.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The text of every statement, for one keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementTexts {
    /// Every row of one user, and the user's version (one partition).
    pub load_user: String,
    /// Writes a whole row at its version.
    pub upsert: String,
    /// Writes a row's delete marker at its version, with a TTL.
    pub delete: String,
    /// The table's `gc_grace_seconds`: the TTL of delete markers.
    pub gc_grace_seconds: String,
    /// Raises the user's version cell (see `migrations/0002_read_states.cql`).
    pub raise_user_version: String,
    pub load_version_floor: String,
    pub record_version_floor: String,
}

impl StatementTexts {
    /// Builds the statements of `keyspace`, which config validation has
    /// restricted to a plain identifier.
    pub fn new(keyspace: &str) -> Self {
        debug_assert!(crate::config::is_cql_identifier(keyspace));
        let states = format!("{keyspace}.read_states");
        Self {
            load_user: format!("SELECT {LOAD_COLUMNS} FROM {states} WHERE user_id = ?"),
            upsert: format!("UPDATE {states} USING TIMESTAMP ? {UPSERT_SET} {ROW_KEY}"),
            delete: format!("UPDATE {states} USING TIMESTAMP ? AND TTL ? {MARKER_SET} {ROW_KEY}"),
            gc_grace_seconds: format!(
                "SELECT gc_grace_seconds FROM system_schema.tables \
                 WHERE keyspace_name = '{keyspace}' AND table_name = 'read_states'"
            ),
            raise_user_version: format!(
                "UPDATE {states} USING TIMESTAMP ? SET user_version = ? WHERE user_id = ?"
            ),
            load_version_floor: format!("SELECT value FROM {keyspace}.meta WHERE name = ?"),
            record_version_floor: format!(
                "INSERT INTO {keyspace}.meta (name, value) VALUES (?, ?) USING TIMESTAMP ?"
            ),
        }
    }
}

/// Returns the TTL of delete markers for a table's `gc_grace_seconds`: at
/// least that long, so that an expired marker is purgeable at once (an
/// expired cell counts as a tombstone written when the cell was, until
/// `gc_grace_seconds` after that), and at least a second (a TTL of 0 would
/// mean none).
pub fn marker_ttl(gc_grace_seconds: Option<i32>) -> i32 {
    gc_grace_seconds
        .unwrap_or(DEFAULT_GC_GRACE_SECONDS)
        .clamp(1, MAX_TTL_SECONDS)
}

/// Cassandra's and ScyllaDB's default `gc_grace_seconds` (10 days).
const DEFAULT_GC_GRACE_SECONDS: i32 = 10 * 24 * 60 * 60;

/// How far the deletion horizon stays above `now - marker TTL`: an hour.
///
/// A marker lives its TTL from when it was written, and the horizon
/// promises that every marker at or above it still lives. A marker of
/// version v is written no earlier than v minus how far versions run ahead
/// of the wall clock: up to the version lease (a floor taken from another
/// instance's lease, two minutes by default), plus the clocks' skew between
/// instances and database nodes. So at time `now` every marker of a version
/// at or above `now - TTL + margin` still lives while the margin exceeds
/// that lead. A marker written late (a flush delay, a retried batch) only
/// lives longer. An hour is far above any sane lease or skew, and costs a
/// catch-up only what a gap of an hour out of `gc_grace_seconds` (10 days
/// by default) costs.
pub const HORIZON_MARGIN_MICROS: u64 = 60 * 60 * 1_000_000;

/// Returns the version below which delete markers living `marker_ttl`
/// seconds may have expired at `now_micros`: `now - TTL + margin`
/// ([`HORIZON_MARGIN_MICROS`]), 0 if that is below zero.
pub fn deletion_horizon(now_micros: u64, marker_ttl: i32) -> u64 {
    let ttl_micros = u64::try_from(marker_ttl)
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    now_micros
        .saturating_add(HORIZON_MARGIN_MICROS)
        .saturating_sub(ttl_micros)
}

/// Returns the write timestamp of a version.
pub fn write_timestamp(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// Stores an unsigned value in a `bigint`, bit for bit.
fn to_bigint(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// Reads back a value stored by [`to_bigint`].
fn from_bigint(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// Bind values of `upsert`: the timestamp, the seven columns set, user,
/// channel.
pub type UpsertValues = (i64, i64, i64, i64, i64, i32, i64, Vec<i64>, i64, i64);
/// Bind values of `delete`: timestamp, TTL, version, user, channel.
pub type DeleteValues = (i64, i32, i64, i64, i64);
/// Bind values of `raise_user_version`: timestamp, version, user.
pub type UserVersionValues = (i64, i64, i64);

/// One statement of a batch with its values; the variant names the
/// statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteValues {
    Upsert(UpsertValues),
    Delete(DeleteValues),
    RaiseUserVersion(UserVersionValues),
}

impl WriteValues {
    fn upsert(user_id: UserId, state: &ReadState) -> Self {
        let mentions = &state.mentions;
        Self::Upsert((
            write_timestamp(state.version),
            to_bigint(state.last_message_id.get()),
            to_bigint(state.last_pin_timestamp_ms),
            to_bigint(state.updated_at_ms),
            write_timestamp(state.version),
            i32::from_ne_bytes(mentions.untracked().to_ne_bytes()),
            to_bigint(mentions.untracked_until()),
            mentions.pending().iter().copied().map(to_bigint).collect(),
            to_bigint(user_id.get()),
            to_bigint(state.channel_id.get()),
        ))
    }

    fn delete(user_id: UserId, state: &ReadState, marker_ttl: i32) -> Self {
        Self::Delete((
            write_timestamp(state.version),
            marker_ttl,
            write_timestamp(state.version),
            to_bigint(user_id.get()),
            to_bigint(state.channel_id.get()),
        ))
    }

    fn raise_user_version(user_id: UserId, version: u64) -> Self {
        Self::RaiseUserVersion((
            write_timestamp(version),
            write_timestamp(version),
            to_bigint(user_id.get()),
        ))
    }
}

impl SerializeRow for WriteValues {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            Self::Upsert(values) => values.serialize(ctx, writer),
            Self::Delete(values) => values.serialize(ctx, writer),
            Self::RaiseUserVersion(values) => values.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// The statements of one single-partition batch: one user's rows, then the
/// raise of the user's version to the highest version among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBatch {
    pub user_id: UserId,
    pub writes: Vec<WriteValues>,
}

/// Groups rows into single-user batches. Only the newest write of each
/// (user, channel) is kept (an older one would lose to it anyway); a user
/// whose rows exceed one batch's bounds gets several batches, each raising
/// the user's version to its own highest, which is safe because every row
/// and every raise stands alone under its timestamp. Deletions become delete
/// markers living `marker_ttl` seconds.
pub fn plan_batches(rows: &[RowWrite], marker_ttl: i32) -> Vec<UserBatch> {
    plan_batches_bounded(rows, marker_ttl, MAX_BATCH_STATEMENTS, MAX_BATCH_BYTES)
}

fn plan_batches_bounded(
    rows: &[RowWrite],
    marker_ttl: i32,
    max_statements: usize,
    max_bytes: usize,
) -> Vec<UserBatch> {
    let max_rows = max_statements.saturating_sub(1).max(1);
    let rows = newest_per_key(rows);

    let mut batches = Vec::new();
    let mut current: Option<(UserBatch, u64, usize)> = None;
    for row in rows {
        let bytes = estimated_bytes(row);
        let fits = current.as_ref().is_some_and(|(batch, _, used)| {
            batch.user_id == row.user_id
                && batch.writes.len() < max_rows
                && used.saturating_add(bytes) <= max_bytes
        });
        if !fits && let Some((batch, version, _)) = current.take() {
            batches.push(finish(batch, version));
        }
        let (batch, version, used) = current.get_or_insert_with(|| {
            (
                UserBatch {
                    user_id: row.user_id,
                    writes: Vec::new(),
                },
                0,
                0,
            )
        });
        batch.writes.push(if row.deleted {
            WriteValues::delete(row.user_id, &row.state, marker_ttl)
        } else {
            WriteValues::upsert(row.user_id, &row.state)
        });
        *version = (*version).max(row.state.version);
        *used = used.saturating_add(bytes);
    }
    if let Some((batch, version, _)) = current {
        batches.push(finish(batch, version));
    }
    batches
}

fn finish(mut batch: UserBatch, version: u64) -> UserBatch {
    batch
        .writes
        .push(WriteValues::raise_user_version(batch.user_id, version));
    batch
}

/// Roughly the bytes a row's values take in a batch.
fn estimated_bytes(row: &RowWrite) -> usize {
    96 + 8 * row.state.mentions.pending().len()
}

/// One row as `load_user` selects it. Every column may be null: a
/// partition whose rows were all deleted still returns its static
/// `user_version`, with the row columns null.
pub type StoredRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    Option<i64>,
    Option<Vec<i64>>,
    Option<i64>,
    Option<bool>,
);

/// Adds one selected row to `rows`: its state or its delete marker, if it
/// holds one, and its versions to the user's version.
pub fn accumulate(rows: &mut UserRows, row: StoredRow) -> Result<(), RowDecodeError> {
    let (
        channel_id,
        last_message_id,
        last_pin_timestamp_ms,
        updated_at_ms,
        version,
        untracked,
        untracked_until,
        pending,
        user_version,
        deleted,
    ) = row;
    if let Some(user_version) = user_version {
        rows.version = rows.version.max(stored_version(user_version)?);
    }
    let Some(channel_id) = channel_id else {
        return Ok(()); // the static cell alone
    };
    let channel_id = ChannelId::new(from_bigint(channel_id)).map_err(|_| RowDecodeError::Id)?;
    let Some(version) = version else {
        // Every write sets every column. A row without cells is a row first
        // written by an `INSERT` (before delete markers), whose marker has
        // expired: only the `INSERT`'s row marker is left.
        return if deleted.is_none() && last_message_id.is_none() && pending.is_none() {
            Ok(())
        } else {
            Err(RowDecodeError::Id)
        };
    };
    let version = stored_version(version)?;
    rows.version = rows.version.max(version);
    if deleted == Some(true) {
        rows.deleted.push(Tombstone {
            channel_id,
            version,
        });
        return Ok(());
    }
    let last_message_id = MessageId::new(from_bigint(last_message_id.unwrap_or(0)))
        .map_err(|_| RowDecodeError::Id)?;
    let pending = pending
        .unwrap_or_default()
        .into_iter()
        .map(|id| MessageId::new(from_bigint(id)).map(MessageId::get))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| RowDecodeError::Id)?;
    let untracked = u32::from_ne_bytes(untracked.unwrap_or(0).to_ne_bytes());
    rows.states.push(ReadState {
        channel_id,
        last_message_id,
        last_pin_timestamp_ms: from_bigint(last_pin_timestamp_ms.unwrap_or(0)),
        updated_at_ms: from_bigint(updated_at_ms.unwrap_or(0)),
        version,
        mentions: Mentions::from_parts(
            pending,
            untracked,
            from_bigint(untracked_until.unwrap_or(0)),
        ),
    });
    Ok(())
}

/// Reads a version written by [`write_timestamp`]: never negative.
fn stored_version(version: i64) -> Result<u64, RowDecodeError> {
    u64::try_from(version).map_err(|_| RowDecodeError::Id)
}

/// Reads the stored version floor (0 when absent or damaged).
pub fn version_floor(stored: Option<i64>) -> u64 {
    stored
        .and_then(|floor| u64::try_from(floor).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
