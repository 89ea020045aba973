//! Unit tests of the store's CQL: statements, row mapping and batching.

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
/// A selected row whose every column is null.
const NULL_ROW: StoredRow = (None, None, None, None, None, None, None, None, None, None);

fn stored(values: &WriteValues, user_version: Option<i64>) -> StoredRow {
    let WriteValues::Upsert((
        _,
        last,
        pin,
        updated,
        version,
        untracked,
        until,
        pending,
        _,
        channel,
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
        Some(false),
    )
}

#[test]
fn statements_bind_what_the_values_carry() {
    let texts = StatementTexts::new("ks");
    let markers = |text: &str| text.matches('?').count();
    assert_eq!(
        texts.load_user,
        "SELECT channel_id, last_message_id, last_pin_timestamp_ms, updated_at_ms, version, \
         untracked_mentions, untracked_until, pending_mentions, user_version, deleted \
         FROM ks.read_states WHERE user_id = ?"
    );
    assert_eq!(
        texts.upsert,
        "UPDATE ks.read_states USING TIMESTAMP ? SET last_message_id = ?, \
         last_pin_timestamp_ms = ?, updated_at_ms = ?, version = ?, untracked_mentions = ?, \
         untracked_until = ?, pending_mentions = ?, deleted = false \
         WHERE user_id = ? AND channel_id = ?"
    );
    assert_eq!(markers(&texts.upsert), 10, "UpsertValues has 10 fields");
    assert_eq!(
        texts.delete,
        "UPDATE ks.read_states USING TIMESTAMP ? AND TTL ? SET last_message_id = 0, \
         last_pin_timestamp_ms = 0, updated_at_ms = 0, version = ?, untracked_mentions = 0, \
         untracked_until = 0, pending_mentions = [], deleted = true \
         WHERE user_id = ? AND channel_id = ?"
    );
    assert_eq!(markers(&texts.delete), 5, "DeleteValues has 5 fields");
    assert_eq!(
        texts.gc_grace_seconds,
        "SELECT gc_grace_seconds FROM system_schema.tables \
         WHERE keyspace_name = 'ks' AND table_name = 'read_states'"
    );
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
    assert_eq!(
        LOAD_COLUMNS.split(',').count(),
        10,
        "StoredRow has 10 fields"
    );
    // A delete marker sets every column an upsert sets: no older cell
    // outlives it.
    let set_columns = |text: &str| -> Vec<String> {
        let set = text.split_once(" SET ").unwrap().1;
        let set = set.split_once(" WHERE ").unwrap().0;
        set.split(", ")
            .map(|assignment| assignment.split_once(" = ").unwrap().0.to_owned())
            .collect()
    };
    assert_eq!(set_columns(&texts.upsert), set_columns(&texts.delete));
    assert_eq!(set_columns(&texts.upsert).len(), 8);
}

#[test]
fn rows_round_trip_through_their_columns() {
    let mut full = ReadState {
        channel_id: ChannelId::new(crate::ids::MAX_ID).unwrap(),
        last_message_id: MessageId::new(crate::ids::MAX_ID).unwrap(),
        last_pin_timestamp_ms: u64::MAX,
        updated_at_ms: 1_700_000_000_123,
        version: 1_700_000_000_123_456,
        mentions: Mentions::from_parts(vec![5_000, 4_000, crate::ids::MAX_ID], u32::MAX, u64::MAX),
    };
    let user = UserId::new(77).unwrap();
    let values = WriteValues::upsert(user, &full);
    let WriteValues::Upsert(tuple) = &values else {
        panic!("not an upsert");
    };
    assert_eq!(tuple.8, 77);
    assert_eq!(tuple.9, i64::MAX);
    assert_eq!(tuple.4, 1_700_000_000_123_456, "the version column");
    assert_eq!(
        tuple.0, 1_700_000_000_123_456,
        "the write timestamp is the version"
    );
    assert_eq!(tuple.7, [4_000, 5_000, i64::MAX], "pending ids, ascending");

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
        tuple.7.is_empty(),
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
    let mut static_only = NULL_ROW;
    static_only.8 = Some(42);
    accumulate(&mut rows, static_only).unwrap();
    assert_eq!(
        rows,
        UserRows {
            states: vec![],
            deleted: vec![],
            version: 42
        }
    );
}

#[test]
fn delete_markers_load_as_deletions_and_rows_without_cells_are_skipped() {
    let user = UserId::new(1).unwrap();
    let mut rows = UserRows::default();
    accumulate(
        &mut rows,
        stored(&WriteValues::upsert(user, &state(1, 10)), None),
    )
    .unwrap();
    // What `load_user` selects for a delete marker at version 50.
    let marker = (
        Some(2),
        Some(0),
        Some(0),
        Some(0),
        Some(50),
        Some(0),
        Some(0),
        Some(vec![]),
        Some(50),
        Some(true),
    );
    accumulate(&mut rows, marker).unwrap();
    // A row first written by an INSERT whose marker expired: its row
    // marker alone is left, every column null.
    let mut without_cells = NULL_ROW;
    without_cells.0 = Some(3);
    accumulate(&mut rows, without_cells).unwrap();
    assert_eq!(rows.states, [state(1, 10)], "only the live row");
    assert_eq!(
        rows.deleted,
        [Tombstone {
            channel_id: ChannelId::new(2).unwrap(),
            version: 50
        }],
        "the marker, with its deletion's version"
    );
    assert_eq!(rows.version, 50, "the marker's version counts");

    // A row written before the column existed (deleted null) is live.
    let mut before_0004 = stored(&WriteValues::upsert(user, &state(4, 60)), None);
    before_0004.9 = None;
    accumulate(&mut rows, before_0004).unwrap();
    assert_eq!(rows.states, [state(1, 10), state(4, 60)]);
}

#[test]
fn delete_markers_live_at_least_gc_grace_seconds() {
    assert_eq!(marker_ttl(Some(864_000)), 864_000);
    assert_eq!(marker_ttl(Some(3_600)), 3_600);
    assert_eq!(marker_ttl(None), 864_000, "the default gc_grace_seconds");
    assert_eq!(marker_ttl(Some(0)), 1, "a TTL of 0 would be none");
    assert_eq!(marker_ttl(Some(-5)), 1);
    assert_eq!(marker_ttl(Some(i32::MAX)), MAX_TTL_SECONDS);
}

#[test]
fn the_deletion_horizon_trails_the_clock_by_the_marker_ttl_less_the_margin() {
    let now = 1_700_000_000_000_000;
    let hour = 3_600_000_000;
    assert_eq!(
        deletion_horizon(now, 864_000),
        now - 864_000_000_000 + hour,
        "ten days' markers, an hour's margin"
    );
    assert_eq!(
        deletion_horizon(now, 60),
        now - 60_000_000 + hour,
        "markers shorter than the margin: ahead of the clock"
    );
    assert_eq!(deletion_horizon(5, 864_000), 0, "saturates at 0");
    assert_eq!(deletion_horizon(u64::MAX, 1), u64::MAX - 1_000_000);
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
        WriteValues::delete(user, &state(4, 55), 600),
        WriteValues::Delete((55, 600, 55, 9, 4))
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
    let batches = plan_batches(&rows, 600);
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
            WriteValues::Delete((25, 600, 25, 2, 1)),
            WriteValues::RaiseUserVersion((25, 25, 2)),
        ],
        "only the newest write of a row, here its deletion"
    );
    assert!(plan_batches(&[], 600).is_empty());
}

#[test]
fn a_large_user_is_split_into_bounded_batches() {
    let rows: Vec<RowWrite> = (1..=10)
        .map(|channel| write(3, state(channel, 100 + channel), false))
        .collect();
    let batches = plan_batches_bounded(&rows, 600, 4, usize::MAX);
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
    let batches = plan_batches_bounded(&rows, 600, 100, 8_100);
    assert_eq!(batches.len(), 2, "the heavy row fills a batch by bytes");
    assert!(batches.iter().all(|batch| batch.user_id.get() == 4));
    // A single row larger than the byte bound still gets written.
    assert_eq!(plan_batches_bounded(&rows[..1], 600, 100, 10).len(), 1);
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
        (&texts.delete, WriteValues::delete(user, &full, 600)),
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
