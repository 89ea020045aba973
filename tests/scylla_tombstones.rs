//! A user's deletes on the ScyllaDB / Cassandra store against a real
//! cluster: a user who deleted more states than Cassandra's
//! `tombstone_failure_threshold` (100,000 by default) still loads. That
//! deletes keep last-write-wins by version (a stale write never brings a
//! deleted state back, a newer one does) is part of the store contract,
//! checked against the cluster in `tests/store_contract.rs`.
//!
//! Deletes are delete markers with a TTL of the table's `gc_grace_seconds`
//! (see `migrations/0004_delete_markers.cql`): the last test shortens
//! `gc_grace_seconds` to watch them expire, and reads a trace of the
//! partition to see that an expired marker is never counted as a
//! tombstone (Cassandra's trace says how many a read met; ScyllaDB's does
//! not, and that check is skipped there). Until they expire, loads return
//! the markers as deletions, and the store's deletion horizon trails the
//! clock by the markers' TTL less an hour.
//!
//! Enabled like `tests/scylla.rs`:
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test scylla_tombstones`;
//! without it each test prints why it was skipped and passes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, put, state, write};
use readstates::clock::unix_micros;
use readstates::config::ScyllaConfig;
use readstates::ids::UserId;
use readstates::store::{LoadPriority, RowWrite, ScyllaStore, Store, UserRows};
use scylla::statement::Statement;

/// More deletes than Cassandra's default `tombstone_failure_threshold`.
const DELETED: u64 = 101_000;

/// Rows per `write_batch` call: the store splits them into single-user
/// batches of its own size and writes those concurrently.
const ROWS_PER_CALL: u64 = 10_000;

async fn open(settings: &ScyllaConfig) -> Arc<ScyllaStore> {
    Arc::new(ScyllaStore::open(settings).await.unwrap())
}

async fn load(store: &dyn Store, user_id: u64) -> UserRows {
    let loaded = store
        .load_user(UserId::new(user_id).unwrap(), LoadPriority::Urgent)
        .await;
    loaded.unwrap_or_else(|error| {
        panic!(
            "loading user {user_id} failed ({} error): {error}",
            error.class().name()
        )
    })
}

/// Writes `rows(channel)` for channels `1..=count`, `ROWS_PER_CALL` a call.
async fn put_channels(store: &dyn Store, count: u64, rows: impl Fn(u64) -> RowWrite) {
    let mut first = 1;
    while first <= count {
        let last = (first + ROWS_PER_CALL - 1).min(count);
        put(store, (first..=last).map(&rows).collect()).await;
        first = last + 1;
    }
}

#[tokio::test]
async fn a_user_who_deleted_more_states_than_the_tombstone_threshold_still_loads() {
    let Some(cluster) = Cluster::from_env(
        "a_user_who_deleted_more_states_than_the_tombstone_threshold_still_loads",
    )
    .await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let store = open(&settings).await;
    let started = Instant::now();
    put_channels(store.as_ref(), DELETED, |channel| {
        write(5, state(channel, channel, 1_000 + channel), false)
    })
    .await;
    let written = started.elapsed();
    // For comparison, the same user with every state live.
    let started = Instant::now();
    let live = load(open(&settings).await.as_ref(), 5).await;
    let loaded_live = started.elapsed();
    assert_eq!(live.states.len(), DELETED as usize);
    let started = Instant::now();
    put_channels(store.as_ref(), DELETED, |channel| {
        write(5, state(channel, 0, 1_000_000 + channel), true)
    })
    .await;
    let deleted = started.elapsed();
    // A second user of the same table, untouched by the first one's deletes.
    put(store.as_ref(), vec![write(6, state(1, 9, 50), false)]).await;
    drop(store);

    // A restart: a fresh store reads the user from the cluster.
    let store = open(&settings).await;
    let started = Instant::now();
    let rows = load(store.as_ref(), 5).await;
    let loaded = started.elapsed();
    eprintln!(
        "{DELETED} states: written in {written:?}, loaded live in {loaded_live:?}, \
         deleted in {deleted:?}, loaded deleted in {loaded:?}"
    );
    assert!(rows.states.is_empty(), "every state stays deleted");
    assert_eq!(
        rows.deleted.len(),
        DELETED as usize,
        "each loads as a deletion"
    );
    assert_eq!(rows.version, 1_000_000 + DELETED, "the version counts them");
    assert_eq!(load(store.as_ref(), 6).await.states, [state(1, 9, 50)]);

    // The user keeps working: a write lands and loads back.
    put(
        store.as_ref(),
        vec![write(5, state(7, 70, 2_000_000), false)],
    )
    .await;
    let rows = load(open(&settings).await.as_ref(), 5).await;
    assert_eq!(rows.states, [state(7, 70, 2_000_000)]);
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test]
async fn a_migration_run_interrupted_after_adding_the_column_is_finished() {
    let Some(cluster) =
        Cluster::from_env("a_migration_run_interrupted_after_adding_the_column_is_finished").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    // The column was added, but the run stopped before recording it (and
    // so before the later migrations).
    cluster
        .query(format!(
            "DELETE FROM {}.schema_migrations WHERE version IN (4, 5)",
            settings.keyspace
        ))
        .await;
    let report = ScyllaStore::migrate(&settings).await.unwrap();
    assert_eq!(report.applied_now, [4, 5], "{report:?}");
    let store = open(&settings).await;
    put(store.as_ref(), vec![write(1, state(2, 3, 4), true)]).await;
    assert_eq!(load(store.as_ref(), 1).await.version, 4);
    cluster.drop_keyspace(&settings).await;
}

/// `gc_grace_seconds` of the table in the expiry test.
const SHORT_GC_GRACE_SECONDS: u64 = 4;

#[tokio::test]
async fn expired_delete_markers_vanish_without_a_tombstone_a_read_counts() {
    let Some(cluster) =
        Cluster::from_env("expired_delete_markers_vanish_without_a_tombstone_a_read_counts").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let keyspace = &settings.keyspace;
    cluster
        .query(format!(
            "ALTER TABLE {keyspace}.read_states WITH gc_grace_seconds = {SHORT_GC_GRACE_SECONDS}"
        ))
        .await;
    let store = open(&settings).await;
    // More than Cassandra's tombstone_warn_threshold (1,000).
    let count = 1_500;
    put_channels(store.as_ref(), count, |channel| {
        write(5, state(channel, channel, 100 + channel), false)
    })
    .await;
    put_channels(store.as_ref(), count, |channel| {
        write(5, state(channel, 0, 10_000 + channel), true)
    })
    .await;
    // A row written by an INSERT, as before delete markers, then deleted.
    cluster
        .query(format!(
            "INSERT INTO {keyspace}.read_states (user_id, channel_id, last_message_id, \
             last_pin_timestamp_ms, updated_at_ms, version, untracked_mentions, \
             untracked_until, pending_mentions) VALUES (6, 1, 5, 0, 0, 20, 0, 0, []) \
             USING TIMESTAMP 20"
        ))
        .await;
    put(store.as_ref(), vec![write(6, state(1, 0, 30), true)]).await;
    let deleted_at = Instant::now();
    let rows = load(store.as_ref(), 5).await;
    assert!(rows.states.is_empty());
    assert_eq!(rows.deleted.len(), count as usize);
    assert_eq!(rows.version, 10_000 + count);

    // The markers expire after gc_grace_seconds and are purgeable at once:
    // a read meets neither them nor a tombstone in their place.
    let expired = Duration::from_secs(SHORT_GC_GRACE_SECONDS + 2);
    tokio::time::sleep(expired.saturating_sub(deleted_at.elapsed())).await;
    let mut select = Statement::new(format!(
        "SELECT channel_id, deleted FROM {keyspace}.read_states WHERE user_id = 5"
    ));
    select.set_tracing(true);
    let result = cluster.admin.query_unpaged(select, &[]).await.unwrap();
    let tracing_id = result.tracing_id().unwrap();
    let rows: Vec<(Option<i64>, Option<bool>)> = result
        .into_rows_result()
        .unwrap()
        .rows()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [], "no row is left");
    let trace = cluster.admin.get_tracing_info(&tracing_id).await.unwrap();
    let counts: Vec<String> = trace
        .events
        .iter()
        .filter_map(|event| event.activity.clone())
        .filter(|activity| activity.contains("tombstone cells"))
        .collect();
    if counts.is_empty() {
        eprintln!("the trace counts no tombstones (not Cassandra): that check is skipped");
    } else {
        assert_eq!(
            counts,
            ["Read 0 live rows and 0 tombstone cells"],
            "no marker, no tombstone"
        );
    }
    let rows = load(store.as_ref(), 5).await;
    assert!(rows.deleted.is_empty(), "expired markers load as nothing");
    assert_eq!(rows.version, 10_000 + count, "the user's version stays");

    // The row first written by an INSERT keeps its row marker, and nothing
    // else: it loads as no state.
    let rows = load(store.as_ref(), 6).await;
    assert!(rows.states.is_empty(), "{rows:?}");
    assert_eq!(rows.version, 30);
    cluster.drop_keyspace(&settings).await;
}

/// Reads the `gc_grace_seconds` of `settings`' `read_states` table, as the
/// store does when it opens.
async fn gc_grace_seconds(cluster: &Cluster, settings: &ScyllaConfig) -> u64 {
    let cql = format!(
        "SELECT gc_grace_seconds FROM system_schema.tables \
         WHERE keyspace_name = '{}' AND table_name = 'read_states'",
        settings.keyspace
    );
    let (seconds,): (i32,) = cluster
        .admin
        .query_unpaged(cql, &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    u64::try_from(seconds).unwrap()
}

/// Checks that `store`'s deletion horizon is `now - gc_grace_seconds + 1 h`
/// within a few seconds, and returns it.
fn assert_horizon_trails_the_clock(store: &dyn Store, gc_grace_seconds: u64) -> u64 {
    const HOUR_MICROS: u64 = 3_600_000_000;
    const TOLERANCE_MICROS: u64 = 5_000_000;
    let before = unix_micros();
    let horizon = store.deletion_horizon();
    let after = unix_micros();
    let gc_grace = gc_grace_seconds * 1_000_000;
    let lowest = (before + HOUR_MICROS).saturating_sub(gc_grace + TOLERANCE_MICROS);
    let highest = (after + HOUR_MICROS + TOLERANCE_MICROS).saturating_sub(gc_grace);
    assert!(
        (lowest..=highest).contains(&horizon),
        "horizon {horizon}, expected now - {gc_grace_seconds} s + 1 h ({lowest}..={highest})"
    );
    horizon
}

#[tokio::test]
async fn the_deletion_horizon_trails_the_clock_by_gc_grace_seconds_less_an_hour() {
    let Some(cluster) =
        Cluster::from_env("the_deletion_horizon_trails_the_clock_by_gc_grace_seconds_less_an_hour")
            .await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let store = open(&settings).await;
    let gc_grace = gc_grace_seconds(&cluster, &settings).await;
    let first = assert_horizon_trails_the_clock(store.as_ref(), gc_grace);
    // A deletion made now is above it, and loads.
    let version = unix_micros();
    put(store.as_ref(), vec![write(3, state(1, 0, version), true)]).await;
    let rows = load(store.as_ref(), 3).await;
    assert_eq!(rows.deleted.len(), 1, "{rows:?}");
    assert_eq!(rows.deleted[0].version, version);
    assert!(version >= store.deletion_horizon());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.deletion_horizon() >= first, "it never goes down");

    // Markers shorter-lived than the margin: the horizon runs ahead of the
    // clock, so no deletion proves a catch-up complete.
    let short = 60;
    cluster
        .query(format!(
            "ALTER TABLE {}.read_states WITH gc_grace_seconds = {short}",
            settings.keyspace
        ))
        .await;
    assert_eq!(gc_grace_seconds(&cluster, &settings).await, short);
    let reopened = open(&settings).await;
    let horizon = assert_horizon_trails_the_clock(reopened.as_ref(), short);
    assert!(horizon > unix_micros());
    cluster.drop_keyspace(&settings).await;
}
