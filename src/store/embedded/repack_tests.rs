//! `repack`: a sweep keeps every row as it was, wraps at the end of the
//! table, waits for a run's worth of churn, and a churned table takes
//! fewer leaves with it than without.

use redb::ReadableTable;

use super::paced::Pace;
use super::repack::{Inserts, MAX_RUN, MIN_RUN, Repacker};
use super::tests::{load, state, write};
use super::*;

const USERS: u64 = 300;
const CYCLES: u64 = 6;

/// The table's rows, in key order.
fn rows(db: &Database) -> Vec<((u64, u64), Vec<u8>)> {
    let txn = db.begin_read().unwrap();
    let states = txn.open_table(STATES).unwrap();
    states
        .iter()
        .unwrap()
        .map(|entry| {
            let (key, value) = entry.unwrap();
            (key.value(), value.value().to_vec())
        })
        .collect()
}

/// The leaf pages of every table.
fn leaf_pages(store: &EmbeddedStore) -> u64 {
    store
        .handle
        .with(|db| {
            let txn = db.begin_write().map_err(redb_error)?;
            let pages = txn.stats().map_err(redb_error)?.leaf_pages();
            txn.abort().map_err(redb_error)?;
            Ok(pages)
        })
        .unwrap()
}

/// How many channels a user has in the churn: 1 to 99.
fn channels_of(user: u64) -> u64 {
    1 + user.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 99
}

/// A batch of `rows` at the next version.
fn batch(version: &mut u64, rows: Vec<(u64, u64)>, deleted: bool) -> Arc<[RowWrite]> {
    *version += 1;
    let at = *version;
    rows.into_iter()
        .map(|(user, channel)| write(user, state(channel, 10 + at, at), deleted))
        .collect()
}

fn states_of(users: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    users
        .flat_map(|user| (1..=channels_of(user)).map(move |channel| (user, channel)))
        .collect()
}

/// Cycles of: every state rewritten, every other user's states deleted and
/// purged, then created again (the other half next cycle), in batches; the
/// last cycle ends with the purge, where the leaves were emptied.
async fn churn(store: &EmbeddedStore, cycles: u64) {
    let mut version = 0;
    let write_all = |rows: Vec<(u64, u64)>, deleted: bool, version: &mut u64| {
        let batches: Vec<_> = rows
            .chunks(512)
            .map(|chunk| batch(version, chunk.to_vec(), deleted))
            .collect();
        async move {
            for rows in batches {
                store.write_batch(rows).await.unwrap();
            }
        }
    };
    write_all(states_of(1..=USERS), false, &mut version).await;
    for cycle in 0..cycles {
        let half = || (1..=USERS).filter(move |user| (user + cycle).is_multiple_of(2));
        write_all(states_of(1..=USERS), false, &mut version).await;
        write_all(states_of(half()), true, &mut version).await;
        while store.purge_tombstones(u64::MAX, usize::MAX).await.unwrap() > 0 {}
        if cycle + 1 < cycles {
            write_all(states_of(half()), false, &mut version).await;
        }
    }
}

/// Every user joins one more channel each cycle: a row inserted into
/// each leaf.
async fn grow(store: &EmbeddedStore, cycles: u64) {
    let mut version = 0;
    store
        .write_batch(batch(&mut version, states_of(1..=USERS), false))
        .await
        .unwrap();
    for cycle in 1..=cycles {
        let joined = (1..=USERS).map(|user| (user, 1_000 + cycle)).collect();
        store
            .write_batch(batch(&mut version, joined, false))
            .await
            .unwrap();
    }
}

/// Two stores, without and with repacking.
fn stores() -> [(tempfile::TempDir, EmbeddedStore); 2] {
    [0, DEFAULT_REPACK_PER_CHANGE].map(|per_change| {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(&EmbeddedOptions {
            repack_per_change: per_change,
            ..EmbeddedOptions::new(dir.path())
        })
        .unwrap();
        (dir, store)
    })
}

#[test]
fn a_sweep_keeps_every_row_and_wraps_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join(DATABASE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut states = txn.open_table(STATES).unwrap();
        for user in 1..=400u64 {
            for channel in (1..=24u64).rev() {
                let value = vec![user as u8; 10 + (channel as usize * 7) % 50];
                states.insert((user, channel), value.as_slice()).unwrap();
            }
        }
    }
    txn.commit().unwrap();
    let before = rows(&db);

    // Runs of MIN_RUN + 7 rows: they begin and end inside users, and the
    // last run of a sweep is short.
    let mut repacker = Repacker::new(1);
    let mut moved = 0;
    let mut runs = 0;
    while moved < 2 * before.len() + MIN_RUN {
        repacker.earn(MIN_RUN + 7);
        let txn = db.begin_write().unwrap();
        let run = repacker.step(&txn, &Pace::new()).unwrap();
        txn.commit().unwrap();
        assert!(run > 0 && run <= MIN_RUN + 7, "a run moved {run} rows");
        moved += run;
        runs += 1;
        assert_eq!(rows(&db), before, "after run {runs}");
    }
    assert!(
        runs > 2 * before.len() / (MIN_RUN + 7),
        "the sweep did not start over"
    );

    // Less than a run earned: nothing moved until it adds up to one, and a
    // run is never longer than MAX_RUN.
    repacker.earn(MIN_RUN - 1);
    let txn = db.begin_write().unwrap();
    assert_eq!(repacker.step(&txn, &Pace::new()).unwrap(), 0);
    txn.abort().unwrap();
    repacker.earn(MAX_RUN * 3);
    let txn = db.begin_write().unwrap();
    assert_eq!(repacker.step(&txn, &Pace::new()).unwrap(), MAX_RUN);
    txn.commit().unwrap();
    assert_eq!(rows(&db), before);
}

#[tokio::test]
async fn a_churned_table_takes_fewer_leaves_and_keeps_every_state() {
    let [(_plain_dir, plain), (_repacked_dir, repacked)] = stores();
    churn(&plain, CYCLES).await;
    churn(&repacked, CYCLES).await;

    for user in 1..=USERS {
        let user = UserId::new(user).unwrap();
        let (a, b) = (load(&plain, user).await, load(&repacked, user).await);
        assert_eq!(a.states, b.states, "{user:?}");
        assert_eq!(a.deleted, b.deleted, "{user:?}");
        // The users the last cycle deleted, as `churn` picks them.
        let deleted = (user.get() + CYCLES - 1).is_multiple_of(2);
        let expected = if deleted { 0 } else { channels_of(user.get()) };
        assert_eq!(a.states.len() as u64, expected, "{user:?}");
    }
    let (plain_leaves, repacked_leaves) = (leaf_pages(&plain), leaf_pages(&repacked));
    assert!(
        repacked_leaves * 10 <= plain_leaves * 8,
        "{repacked_leaves} leaves repacked against {plain_leaves} without"
    );
}

#[test]
fn new_rows_inserted_together_take_fewer_leaves_than_one_by_one() {
    let leaves_after = |together: bool| {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join(DATABASE_FILE)).unwrap();
        let value = [7u8; 55];
        let every_other = |parity: u64| {
            (1..=600u64)
                .filter(move |user| user % 2 == parity)
                .flat_map(|user| (1..=50u64).map(move |channel| (user, channel)))
        };
        let txn = db.begin_write().unwrap();
        {
            let mut states = txn.open_table(STATES).unwrap();
            for key in every_other(0) {
                states.insert(key, value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut states = txn.open_table(STATES).unwrap();
            let mut inserts = Inserts::default();
            for key in every_other(1) {
                if together {
                    inserts.push(key, &value);
                } else {
                    states.insert(key, value.as_slice()).unwrap();
                }
            }
            inserts.insert_into(&mut states, &Pace::new()).unwrap();
        }
        let pages = txn.stats().unwrap().leaf_pages();
        txn.commit().unwrap();
        let stored = rows(&db);
        assert_eq!(stored.len(), 600 * 50);
        assert!(stored.iter().all(|(_, stored)| stored == &value));
        pages
    };
    let (one_by_one, together) = (leaves_after(false), leaves_after(true));
    assert!(
        together * 10 <= one_by_one * 8,
        "{together} leaves inserted together against {one_by_one} one by one"
    );
}

#[tokio::test]
async fn a_table_that_only_grows_is_left_alone() {
    let [(_plain_dir, plain), (_repacked_dir, repacked)] = stores();
    grow(&plain, 4).await;
    grow(&repacked, 4).await;
    assert_eq!(leaf_pages(&repacked), leaf_pages(&plain));
}
