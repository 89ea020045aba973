//! Tests of the tombstone index and of what the embedded store's purge
//! does beyond the contract (a cap per purge, tombstones ahead of the
//! clock, purges queued with batches, the deletion horizon on disk). What
//! every purge keeps (versions, cutoffs, `max`, a horizon that never goes
//! down) is checked in `tests/store_contract.rs`.

use redb::{ReadableDatabase, ReadableTable};

use super::tests::{load, lsm_data_dir, state, write};
use super::tombstones::{HORIZON_KEY, INDEXED_KEY, MAX_PURGE, TOMBSTONES};
use super::*;

/// Writes one batch.
async fn put(store: &EmbeddedStore, rows: Vec<RowWrite>) {
    store.write_batch(Arc::from(rows)).await.unwrap();
}

/// A tombstone of (user, channel) at `version`.
fn tombstone(user: u64, channel: u64, version: u64) -> RowWrite {
    write(user, state(channel, 0, version), true)
}

/// The stored rows, as (user, channel, version, is a tombstone).
fn stored_rows(db: &Database) -> Vec<(u64, u64, u64, bool)> {
    let txn = db.begin_read().unwrap();
    let states = txn.open_table(STATES).unwrap();
    let mut rows = Vec::new();
    for entry in states.iter().unwrap() {
        let (key, value) = entry.unwrap();
        let (user, channel) = key.value();
        let row = decode_row(ChannelId::new(channel).unwrap(), value.value()).unwrap();
        rows.push((
            user,
            channel,
            row.version(),
            matches!(row, Row::Tombstone { .. }),
        ));
    }
    rows
}

/// The tombstone index's entries, (version, user, channel), in order.
fn index_entries(db: &Database) -> Vec<(u64, u64, u64)> {
    let txn = db.begin_read().unwrap();
    let index = txn.open_table(TOMBSTONES).unwrap();
    index
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().0.value())
        .collect()
}

#[tokio::test]
async fn one_purge_removes_no_more_than_the_store_allows() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let over = MAX_PURGE + 5;
    let rows: Vec<_> = (1..=over as u64)
        .map(|channel| tombstone(3, channel, channel))
        .collect();
    put(&store, rows).await;
    assert_eq!(
        store.purge_tombstones(u64::MAX, usize::MAX).await.unwrap(),
        MAX_PURGE
    );
    assert_eq!(
        store.purge_tombstones(u64::MAX, usize::MAX).await.unwrap(),
        5
    );
}

#[tokio::test]
async fn a_tombstone_ahead_of_the_clock_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // Right after a restart, versions run ahead of the clock by up to the
    // version lease (two minutes by default).
    let ahead = unix_micros() + 120_000_000;
    put(&store, vec![tombstone(1, 1, 10), tombstone(1, 2, ahead)]).await;
    assert_eq!(store.purge_tombstones(u64::MAX, 100).await.unwrap(), 1);
    assert_eq!(index_entries(&store.handle.get().unwrap()), [(ahead, 1, 2)]);
    let rows = load(&store, UserId::new(1).unwrap()).await;
    assert_eq!(rows.version, ahead);
    assert_eq!(rows.deleted, [deletion(2, ahead)]);
    let horizon = store.deletion_horizon();
    assert!(
        (10..ahead).contains(&horizon),
        "the horizon is the cutoff held to the clock: {horizon}"
    );
}

#[tokio::test]
async fn purges_and_batches_queued_together_all_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let jobs = (1..=30u64).map(|user| {
        let store = store.clone();
        tokio::spawn(async move {
            let rows = vec![
                tombstone(user, 1, user),
                write(user, state(2, 1, user), false),
            ];
            store.write_batch(Arc::from(rows)).await.unwrap();
            store.purge_tombstones(1_000, 10).await.unwrap()
        })
    });
    let mut purged = 0;
    for job in jobs.collect::<Vec<_>>() {
        purged += job.await.unwrap();
    }
    purged += store.purge_tombstones(1_000, 100).await.unwrap();
    assert_eq!(purged, 30, "each tombstone purged exactly once");
    assert!(index_entries(&store.handle.get().unwrap()).is_empty());
    assert_eq!(
        stored_rows(&store.handle.get().unwrap()).len(),
        30,
        "the live rows stay"
    );
}

/// A tombstone of `channel` at `version`, as a load returns it.
fn deletion(channel: u64, version: u64) -> Tombstone {
    Tombstone {
        channel_id: ChannelId::new(channel).unwrap(),
        version,
    }
}

/// The deletion horizon recorded in `meta`, if any.
fn recorded_horizon(db: &Database) -> Option<u64> {
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(HORIZON_KEY).unwrap().map(|value| value.value())
}

#[tokio::test]
async fn the_deletion_horizon_is_recorded_by_each_purge_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let user = UserId::new(1).unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.deletion_horizon(), 0, "a new file purged nothing");
        assert_eq!(
            recorded_horizon(&store.handle.get().unwrap()),
            None,
            "written down with the first version floor, not by the open"
        );
        put(
            &store,
            vec![
                tombstone(1, 1, 10),
                tombstone(1, 2, 20),
                tombstone(1, 3, 30),
            ],
        )
        .await;
        // One of the two below the cutoff goes: the horizon is the cutoff
        // all the same, a promise about what is kept.
        assert_eq!(store.purge_tombstones(25, 1).await.unwrap(), 1);
        assert_eq!(store.deletion_horizon(), 25);
        assert_eq!(recorded_horizon(&store.handle.get().unwrap()), Some(25));
        assert_eq!(
            load(&store, user).await.deleted,
            [deletion(2, 20), deletion(3, 30)]
        );
        assert_eq!(store.purge_tombstones(15, 100).await.unwrap(), 0);
        assert_eq!(
            store.deletion_horizon(),
            25,
            "a lower cutoff lowers nothing"
        );
        assert_eq!(recorded_horizon(&store.handle.get().unwrap()), Some(25));
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.deletion_horizon(), 25);
    assert_eq!(
        load(&store, user).await.deleted,
        [deletion(2, 20), deletion(3, 30)]
    );
}

/// Makes the database look like one written before the deletion horizon:
/// no horizon in `meta`.
fn forget_the_horizon(db: &Database) {
    rewrite(db, |txn| {
        txn.open_table(META).unwrap().remove(HORIZON_KEY).unwrap();
    });
}

/// Runs `edit` in one write transaction of `db`, and commits it.
fn rewrite(db: &Database, edit: impl FnOnce(&redb::WriteTransaction)) {
    let txn = db.begin_write().unwrap();
    edit(&txn);
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_data_file_without_a_horizon_opens_with_its_version_floor() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.record_version_floor(1_000).await.unwrap();
        put(&store, vec![tombstone(1, 1, 10), tombstone(1, 2, 900)]).await;
        // Purged by a build that recorded no horizon.
        assert_eq!(store.purge_tombstones(100, 100).await.unwrap(), 1);
        forget_the_horizon(&store.handle.get().unwrap());
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.deletion_horizon(), 1_000);
    // Written down with the next version floor, as a start records one.
    store.record_version_floor(2_000).await.unwrap();
    assert_eq!(
        recorded_horizon(&store.handle.get().unwrap()),
        Some(1_000),
        "recorded with the next floor"
    );
    assert_eq!(store.purge_tombstones(500, 100).await.unwrap(), 0);
    assert_eq!(store.deletion_horizon(), 1_000);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.deletion_horizon(), 1_000);
}

#[tokio::test]
async fn an_imported_lsm_store_opens_with_its_version_floor_as_horizon() {
    let dir = lsm_data_dir(
        &[write(9, state(1, 10, 3), false), tombstone(9, 2, 7)],
        1_000,
    );
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.deletion_horizon(), 1_000);
    assert_eq!(
        load(&store, UserId::new(9).unwrap()).await.deleted,
        [deletion(2, 7)]
    );
}

/// Makes the database look like one written before the tombstone index:
/// no index table, no mark in `meta`.
fn drop_the_index(db: &Database) {
    rewrite(db, |txn| {
        txn.delete_table(TOMBSTONES).unwrap();
        txn.open_table(META).unwrap().remove(INDEXED_KEY).unwrap();
    });
}

#[tokio::test]
async fn a_data_file_from_before_the_index_is_indexed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        put(
            &store,
            vec![
                tombstone(1, 1, 3),
                write(1, state(2, 5, 4), false),
                tombstone(2, 7, 9),
            ],
        )
        .await;
        drop_the_index(&store.handle.get().unwrap());
        assert_eq!(store.purge_tombstones(100, 100).await.unwrap(), 0);
    }
    reopen_purge_and_check(dir.path(), &[(3, 1, 1), (9, 2, 7)], &[(1, 2, 4, false)]).await;
}

#[tokio::test]
async fn indexing_in_chunks_misses_no_tombstone_at_a_chunk_edge() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let rows: Vec<_> = (1..=10u64)
        .map(|channel| {
            let deleted = channel % 3 != 1;
            write(4, state(channel, 0, 20 + channel), deleted)
        })
        .collect();
    put(&store, rows).await;
    let expected = index_entries(&store.handle.get().unwrap());
    assert_eq!(expected.len(), 6);
    for chunk_rows in [1, 3, 5, 10, 11] {
        drop_the_index(&store.handle.get().unwrap());
        tombstones::index_in_chunks(&store.handle.get().unwrap(), chunk_rows).unwrap();
        assert_eq!(
            index_entries(&store.handle.get().unwrap()),
            expected,
            "chunks of {chunk_rows}"
        );
    }
}

#[tokio::test]
async fn imported_lsm_tombstones_are_indexed() {
    let dir = lsm_data_dir(
        &[
            write(9, state(1, 10, 3), false),
            tombstone(9, 2, 7),
            tombstone(10, 1, 8),
        ],
        1_000,
    );
    reopen_purge_and_check(dir.path(), &[(7, 9, 2), (8, 10, 1)], &[(9, 1, 3, false)]).await;
}

/// Opens the store in `dir` and checks that its tombstone index holds
/// `indexed`, that one purge removes them all, and that `left` rows remain.
async fn reopen_purge_and_check(
    dir: &std::path::Path,
    indexed: &[(u64, u64, u64)],
    left: &[(u64, u64, u64, bool)],
) {
    let store = EmbeddedStore::open(dir).unwrap();
    assert_eq!(index_entries(&store.handle.get().unwrap()), indexed);
    assert_eq!(
        store.purge_tombstones(100, 100).await.unwrap(),
        indexed.len()
    );
    assert_eq!(stored_rows(&store.handle.get().unwrap()), left);
}
