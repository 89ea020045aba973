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

use ::scylla::serialize::SerializationError;
use ::scylla::serialize::row::{RowSerializationContext, SerializeRow};
use ::scylla::serialize::writers::RowWriter;

use crate::ids::{ChannelId, MessageId, UserId};
use crate::read_state::{Mentions, ReadState};
use crate::store::{RowDecodeError, RowWrite, UserRows, newest_per_key};

/// The columns a load reads, in `SELECT` order.
const LOAD_COLUMNS: &str = "channel_id, last_message_id, last_pin_timestamp_ms, updated_at_ms, \
                            version, untracked_mentions, untracked_until, pending_mentions, \
                            user_version";

/// The columns an upsert writes, in `INSERT` order.
const UPSERT_COLUMNS: &str = "user_id, channel_id, last_message_id, last_pin_timestamp_ms, \
                              updated_at_ms, version, untracked_mentions, untracked_until, \
                              pending_mentions";

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
    /// Deletes a row at its version.
    pub delete: String,
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
            upsert: format!(
                "INSERT INTO {states} ({UPSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ),
            delete: format!(
                "DELETE FROM {states} USING TIMESTAMP ? WHERE user_id = ? AND channel_id = ?"
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

/// Bind values of `upsert`: the nine columns, then the timestamp.
pub type UpsertValues = (i64, i64, i64, i64, i64, i64, i32, i64, Vec<i64>, i64);
/// Bind values of `delete`: timestamp, user, channel.
pub type DeleteValues = (i64, i64, i64);
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
            to_bigint(user_id.get()),
            to_bigint(state.channel_id.get()),
            to_bigint(state.last_message_id.get()),
            to_bigint(state.last_pin_timestamp_ms),
            to_bigint(state.updated_at_ms),
            write_timestamp(state.version),
            i32::from_ne_bytes(mentions.untracked().to_ne_bytes()),
            to_bigint(mentions.untracked_until()),
            mentions.pending().iter().copied().map(to_bigint).collect(),
            write_timestamp(state.version),
        ))
    }

    fn delete(user_id: UserId, state: &ReadState) -> Self {
        Self::Delete((
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
/// and every raise stands alone under its timestamp.
pub fn plan_batches(rows: &[RowWrite]) -> Vec<UserBatch> {
    plan_batches_bounded(rows, MAX_BATCH_STATEMENTS, MAX_BATCH_BYTES)
}

fn plan_batches_bounded(
    rows: &[RowWrite],
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
            WriteValues::delete(row.user_id, &row.state)
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
);

/// Adds one selected row to `rows`: its state, if it holds one, and its
/// versions to the user's version.
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
    ) = row;
    if let Some(user_version) = user_version {
        rows.version = rows.version.max(stored_version(user_version)?);
    }
    let Some(channel_id) = channel_id else {
        return Ok(()); // the static cell alone
    };
    let channel_id = ChannelId::new(from_bigint(channel_id)).map_err(|_| RowDecodeError::Id)?;
    // Every write sets every column, so a row without a version was not
    // written by this service.
    let version = stored_version(version.ok_or(RowDecodeError::Id)?)?;
    let last_message_id = MessageId::new(from_bigint(last_message_id.unwrap_or(0)))
        .map_err(|_| RowDecodeError::Id)?;
    let pending = pending
        .unwrap_or_default()
        .into_iter()
        .map(|id| MessageId::new(from_bigint(id)).map(MessageId::get))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| RowDecodeError::Id)?;
    let untracked = u32::from_ne_bytes(untracked.unwrap_or(0).to_ne_bytes());
    rows.version = rows.version.max(version);
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
mod tests {
    use ::scylla::deserialize::row::DeserializeRow;

    use super::*;
    use crate::store::scylla::bind_check::{markers, schema_types, serializes, specs};

    fn state(channel: u64, version: u64) -> ReadState {
        ReadState {
            last_message_id: MessageId::new(1_000 + channel).unwrap(),
            version,
            ..ReadState::empty(ChannelId::new(channel).unwrap())
        }
    }

    fn write(user: u64, state: ReadState, deleted: bool) -> RowWrite {
        RowWrite {
            user_id: UserId::new(user).unwrap(),
            state,
            deleted,
        }
    }

    /// What `load_user` would select for an upserted row.
    fn stored(values: &WriteValues, user_version: Option<i64>) -> StoredRow {
        let WriteValues::Upsert((
            _,
            channel,
            last,
            pin,
            updated,
            version,
            untracked,
            until,
            pending,
            _,
        )) = values.clone()
        else {
            panic!("not an upsert: {values:?}");
        };
        (
            Some(channel),
            Some(last),
            Some(pin),
            Some(updated),
            Some(version),
            Some(untracked),
            Some(until),
            Some(pending),
            user_version,
        )
    }

    #[test]
    fn statements_bind_what_the_values_carry() {
        let texts = StatementTexts::new("ks");
        let markers = |text: &str| text.matches('?').count();
        assert_eq!(
            texts.load_user,
            "SELECT channel_id, last_message_id, last_pin_timestamp_ms, updated_at_ms, version, \
             untracked_mentions, untracked_until, pending_mentions, user_version \
             FROM ks.read_states WHERE user_id = ?"
        );
        assert_eq!(
            texts.upsert,
            "INSERT INTO ks.read_states (user_id, channel_id, last_message_id, \
             last_pin_timestamp_ms, updated_at_ms, version, untracked_mentions, untracked_until, \
             pending_mentions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        );
        assert_eq!(markers(&texts.upsert), 10, "UpsertValues has 10 fields");
        assert_eq!(
            texts.delete,
            "DELETE FROM ks.read_states USING TIMESTAMP ? WHERE user_id = ? AND channel_id = ?"
        );
        assert_eq!(markers(&texts.delete), 3);
        assert_eq!(
            texts.raise_user_version,
            "UPDATE ks.read_states USING TIMESTAMP ? SET user_version = ? WHERE user_id = ?"
        );
        assert_eq!(markers(&texts.raise_user_version), 3);
        assert_eq!(
            texts.load_version_floor,
            "SELECT value FROM ks.meta WHERE name = ?"
        );
        assert_eq!(
            texts.record_version_floor,
            "INSERT INTO ks.meta (name, value) VALUES (?, ?) USING TIMESTAMP ?"
        );
        for text in [
            &texts.upsert,
            &texts.delete,
            &texts.raise_user_version,
            &texts.record_version_floor,
        ] {
            assert!(
                text.contains("USING TIMESTAMP ?"),
                "every write is versioned: {text}"
            );
        }
        assert_eq!(LOAD_COLUMNS.split(',').count(), 9, "StoredRow has 9 fields");
    }

    #[test]
    fn rows_round_trip_through_their_columns() {
        let mut full = ReadState {
            channel_id: ChannelId::new(crate::ids::MAX_ID).unwrap(),
            last_message_id: MessageId::new(crate::ids::MAX_ID).unwrap(),
            last_pin_timestamp_ms: u64::MAX,
            updated_at_ms: 1_700_000_000_123,
            version: 1_700_000_000_123_456,
            mentions: Mentions::from_parts(
                vec![5_000, 4_000, crate::ids::MAX_ID],
                u32::MAX,
                u64::MAX,
            ),
        };
        let user = UserId::new(77).unwrap();
        let values = WriteValues::upsert(user, &full);
        let WriteValues::Upsert(tuple) = &values else {
            panic!("not an upsert");
        };
        assert_eq!(tuple.0, 77);
        assert_eq!(tuple.1, i64::MAX);
        assert_eq!(tuple.5, 1_700_000_000_123_456, "the version column");
        assert_eq!(
            tuple.9, 1_700_000_000_123_456,
            "the write timestamp is the version"
        );
        assert_eq!(tuple.8, [4_000, 5_000, i64::MAX], "pending ids, ascending");

        let mut rows = UserRows::default();
        accumulate(&mut rows, stored(&values, Some(1_700_000_000_123_456))).unwrap();
        assert_eq!(rows.states, [full.clone()]);
        assert_eq!(rows.version, full.version);

        full.mentions = Mentions::default();
        full.last_pin_timestamp_ms = 0;
        let values = WriteValues::upsert(user, &full);
        let WriteValues::Upsert(tuple) = &values else {
            panic!("not an upsert");
        };
        assert!(
            tuple.8.is_empty(),
            "an empty list, never null (a tombstone)"
        );
        let mut rows = UserRows::default();
        accumulate(&mut rows, stored(&values, None)).unwrap();
        assert_eq!(rows.states, [full]);
    }

    #[test]
    fn a_users_version_counts_the_static_cell_of_deleted_rows() {
        let mut rows = UserRows::default();
        // Channel 1 live at version 10; channel 2 deleted at 30: only the
        // static user_version remembers 30.
        let live = WriteValues::upsert(UserId::new(1).unwrap(), &state(1, 10));
        accumulate(&mut rows, stored(&live, Some(30))).unwrap();
        assert_eq!(rows.version, 30);
        assert_eq!(rows.states.len(), 1);

        // Every row deleted: one row of nulls and the static cell.
        let mut rows = UserRows::default();
        let static_only = (None, None, None, None, None, None, None, None, Some(42));
        accumulate(&mut rows, static_only).unwrap();
        assert_eq!(
            rows,
            UserRows {
                states: vec![],
                version: 42
            }
        );
    }

    #[test]
    fn damaged_rows_are_errors() {
        let good = stored(
            &WriteValues::upsert(UserId::new(1).unwrap(), &state(1, 10)),
            None,
        );
        let mut negative_channel = good.clone();
        negative_channel.0 = Some(-5);
        let mut zero_channel = good.clone();
        zero_channel.0 = Some(0);
        let mut no_version = good.clone();
        no_version.4 = None;
        let mut negative_version = good.clone();
        negative_version.4 = Some(-1);
        let mut negative_mention = good.clone();
        negative_mention.7 = Some(vec![-3]);
        let mut negative_user_version = good;
        negative_user_version.8 = Some(-1);
        for row in [
            negative_channel,
            zero_channel,
            no_version,
            negative_version,
            negative_mention,
            negative_user_version,
        ] {
            assert_eq!(
                accumulate(&mut UserRows::default(), row.clone()),
                Err(RowDecodeError::Id),
                "{row:?}"
            );
        }
    }

    #[test]
    fn deletes_and_version_raises_carry_the_version_as_timestamp() {
        let user = UserId::new(9).unwrap();
        assert_eq!(
            WriteValues::delete(user, &state(4, 55)),
            WriteValues::Delete((55, 9, 4))
        );
        assert_eq!(
            WriteValues::raise_user_version(user, 60),
            WriteValues::RaiseUserVersion((60, 60, 9))
        );
        assert_eq!(write_timestamp(u64::MAX), i64::MAX);
        assert_eq!(version_floor(None), 0);
        assert_eq!(version_floor(Some(-1)), 0);
        assert_eq!(version_floor(Some(123)), 123);
    }

    #[test]
    fn batches_are_single_user_newest_write_wins_and_raise_the_users_version() {
        let rows = vec![
            write(2, state(1, 20), false),
            write(1, state(5, 7), false),
            write(2, state(1, 25), true),
            write(1, state(3, 9), false),
            write(2, state(1, 21), false),
        ];
        let batches = plan_batches(&rows);
        assert_eq!(batches.len(), 2, "{batches:?}");
        let user1 = &batches[0];
        assert_eq!(user1.user_id.get(), 1);
        assert_eq!(
            user1.writes,
            [
                WriteValues::upsert(UserId::new(1).unwrap(), &state(3, 9)),
                WriteValues::upsert(UserId::new(1).unwrap(), &state(5, 7)),
                WriteValues::RaiseUserVersion((9, 9, 1)),
            ]
        );
        let user2 = &batches[1];
        assert_eq!(user2.user_id.get(), 2);
        assert_eq!(
            user2.writes,
            [
                WriteValues::Delete((25, 2, 1)),
                WriteValues::RaiseUserVersion((25, 25, 2)),
            ],
            "only the newest write of a row, here its deletion"
        );
        assert!(plan_batches(&[]).is_empty());
    }

    #[test]
    fn a_large_user_is_split_into_bounded_batches() {
        let rows: Vec<RowWrite> = (1..=10)
            .map(|channel| write(3, state(channel, 100 + channel), false))
            .collect();
        let batches = plan_batches_bounded(&rows, 4, usize::MAX);
        let sizes: Vec<usize> = batches.iter().map(|batch| batch.writes.len()).collect();
        assert_eq!(
            sizes,
            [4, 4, 4, 2],
            "3 rows + the raise, at most 4 statements"
        );
        let raises: Vec<&WriteValues> = batches
            .iter()
            .filter_map(|batch| batch.writes.last())
            .collect();
        assert_eq!(
            raises,
            [
                &WriteValues::RaiseUserVersion((103, 103, 3)),
                &WriteValues::RaiseUserVersion((106, 106, 3)),
                &WriteValues::RaiseUserVersion((109, 109, 3)),
                &WriteValues::RaiseUserVersion((110, 110, 3)),
            ]
        );

        let mut heavy = state(1, 5);
        heavy.mentions = Mentions::from_parts((1_001..=2_000).collect(), 0, 0);
        let rows = vec![write(4, heavy.clone(), false), write(4, state(2, 6), false)];
        let batches = plan_batches_bounded(&rows, 100, 8_100);
        assert_eq!(batches.len(), 2, "the heavy row fills a batch by bytes");
        assert!(batches.iter().all(|batch| batch.user_id.get() == 4));
        // A single row larger than the byte bound still gets written.
        assert_eq!(plan_batches_bounded(&rows[..1], 100, 10).len(), 1);
    }

    #[test]
    fn bound_values_and_selected_rows_match_the_migrated_schema() {
        let types = schema_types();
        let texts = StatementTexts::new("ks");
        let user = UserId::new(5).unwrap();
        let mut full = state(7, 99);
        full.mentions = Mentions::from_parts(vec![2_000, 3_000], 1, 2_500);
        let cases = [
            (&texts.upsert, WriteValues::upsert(user, &full)),
            (&texts.delete, WriteValues::delete(user, &full)),
            (
                &texts.raise_user_version,
                WriteValues::raise_user_version(user, 99),
            ),
        ];
        for (text, values) in cases {
            let names = markers(text);
            let specs = specs(&types, "read_states", &names);
            assert_eq!(serializes(&values, &specs).unwrap(), names.len(), "{text}");
        }
        let names = markers(&texts.record_version_floor);
        assert_eq!(names, ["name", "value", "[timestamp]"]);
        let floor = (VERSION_FLOOR_KEY, 5_i64, 5_i64);
        serializes(&floor, &specs(&types, "meta", &names)).unwrap();
        let names = markers(&texts.load_version_floor);
        serializes(&(VERSION_FLOOR_KEY,), &specs(&types, "meta", &names)).unwrap();
        let names = markers(&texts.load_user);
        assert_eq!(names, ["user_id"]);
        serializes(&(5_i64,), &specs(&types, "read_states", &names)).unwrap();

        let selected: Vec<String> = LOAD_COLUMNS
            .split(',')
            .map(|c| c.trim().to_owned())
            .collect();
        let row_specs = specs(&types, "read_states", &selected);
        <StoredRow as DeserializeRow>::type_check(&row_specs).unwrap();
        let floor_specs = specs(&types, "meta", &["value".to_owned()]);
        <(Option<i64>,) as DeserializeRow>::type_check(&floor_specs).unwrap();

        // The check has teeth: values of the wrong type or count are refused.
        let mut wrong = specs(&types, "read_states", &markers(&texts.upsert));
        wrong.swap(6, 7);
        assert!(serializes(&WriteValues::upsert(user, &full), &wrong).is_err());
        assert!(<StoredRow as DeserializeRow>::type_check(&row_specs[..8]).is_err());
    }
}
