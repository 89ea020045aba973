//! Tests of the tombstone index and the purge.

use redb::{ReadableDatabase, ReadableTable};

use super::tests::{load, state, write, write_lsm_data_dir};
use super::tombstones::{INDEXED_KEY, MAX_PURGE, TOMBSTONES};
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
async fn a_purge_removes_old_tombstones_and_keeps_newer_ones_and_live_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    put(
        &store,
        vec![
            write(1, state(1, 50, 10), false),
            tombstone(1, 2, 11),
            tombstone(1, 3, 20),
            tombstone(2, 1, 12),
            write(2, state(2, 60, 13), false),
        ],
    )
    .await;
    assert_eq!(
        index_entries(&store.handle.get().unwrap()),
        [(11, 1, 2), (12, 2, 1), (20, 1, 3)]
    );

    assert_eq!(store.purge_tombstones(15, 100).await.unwrap(), 2);

    assert_eq!(
        stored_rows(&store.handle.get().unwrap()),
        [(1, 1, 10, false), (1, 3, 20, true), (2, 2, 13, false)]
    );
    assert_eq!(index_entries(&store.handle.get().unwrap()), [(20, 1, 3)]);
    let user1 = load(&store, UserId::new(1).unwrap()).await;
    assert_eq!(user1.states, vec![state(1, 50, 10)]);
    assert_eq!(user1.version, 20, "the kept tombstone still counts");
    assert_eq!(store.purge_tombstones(15, 100).await.unwrap(), 0);
}

#[tokio::test]
async fn a_stale_write_older_than_a_kept_tombstone_still_loses() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    put(&store, vec![tombstone(1, 1, 10), tombstone(1, 2, 30)]).await;
    assert_eq!(store.purge_tombstones(20, 100).await.unwrap(), 1);

    put(
        &store,
        vec![
            write(1, state(2, 99, 25), false),
            write(1, state(1, 77, 5), false),
        ],
    )
    .await;
    let user = load(&store, UserId::new(1).unwrap()).await;
    // The kept tombstone (30) beats the stale write (25). The purged one
    // (10) no longer guards its state: that is why the caller purges only
    // below the oldest version that may still be written.
    assert_eq!(user.states, vec![state(1, 77, 5)]);
    assert_eq!(index_entries(&store.handle.get().unwrap()), [(30, 1, 2)]);
}

#[tokio::test]
async fn max_bounds_the_work_of_one_purge_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    put(
        &store,
        (1..=5)
            .map(|channel| tombstone(9, channel, 100 + channel))
            .collect(),
    )
    .await;
    assert_eq!(store.purge_tombstones(1_000, 2).await.unwrap(), 2);
    assert_eq!(
        index_entries(&store.handle.get().unwrap()),
        [(103, 9, 3), (104, 9, 4), (105, 9, 5)]
    );
    assert_eq!(store.purge_tombstones(1_000, 2).await.unwrap(), 2);
    assert_eq!(store.purge_tombstones(1_000, 2).await.unwrap(), 1);
    assert_eq!(store.purge_tombstones(1_000, 2).await.unwrap(), 0);
    assert!(stored_rows(&store.handle.get().unwrap()).is_empty());
    assert_eq!(store.purge_tombstones(1_000, 0).await.unwrap(), 0);
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
async fn an_overwritten_tombstone_leaves_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    put(&store, vec![tombstone(1, 1, 5), tombstone(1, 2, 6)]).await;
    put(
        &store,
        vec![write(1, state(1, 40, 7), false), tombstone(1, 2, 8)],
    )
    .await;
    // A stale tombstone loses like any stale write, and adds no entry.
    put(&store, vec![tombstone(1, 1, 6)]).await;
    assert_eq!(index_entries(&store.handle.get().unwrap()), [(8, 1, 2)]);

    assert_eq!(store.purge_tombstones(100, 100).await.unwrap(), 1);
    assert_eq!(
        stored_rows(&store.handle.get().unwrap()),
        [(1, 1, 7, false)]
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
    assert_eq!(load(&store, UserId::new(1).unwrap()).await.version, ahead);
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

/// Makes the database look like one written before the tombstone index:
/// no index table, no mark in `meta`.
fn drop_the_index(db: &Database) {
    let txn = db.begin_write().unwrap();
    txn.delete_table(TOMBSTONES).unwrap();
    txn.open_table(META).unwrap().remove(INDEXED_KEY).unwrap();
    txn.commit().unwrap();
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
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        index_entries(&store.handle.get().unwrap()),
        [(3, 1, 1), (9, 2, 7)]
    );
    assert_eq!(store.purge_tombstones(100, 100).await.unwrap(), 2);
    assert_eq!(
        stored_rows(&store.handle.get().unwrap()),
        [(1, 2, 4, false)]
    );
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
    let dir = tempfile::tempdir().unwrap();
    write_lsm_data_dir(
        dir.path(),
        &[
            write(9, state(1, 10, 3), false),
            tombstone(9, 2, 7),
            tombstone(10, 1, 8),
        ],
        1_000,
    );
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        index_entries(&store.handle.get().unwrap()),
        [(7, 9, 2), (8, 10, 1)]
    );
    assert_eq!(store.purge_tombstones(100, 100).await.unwrap(), 2);
    assert_eq!(
        stored_rows(&store.handle.get().unwrap()),
        [(9, 1, 3, false)]
    );
}
