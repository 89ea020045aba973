//! `compact`: a churned file shrinks and keeps every row; a database that a
//! store holds open is refused.

use super::tests::{load, state, write};
use super::*;
use crate::read_state::ReadState;

const USERS: u64 = 200;
const CHANNELS: u64 = 100;
/// Users 1..=DELETED lose their states, which are then purged.
const DELETED: u64 = 180;

async fn churn(store: &EmbeddedStore) {
    for (version, deleted, users) in [(1, false, 1..=USERS), (2, true, 1..=DELETED)] {
        for user in users {
            let rows: Vec<RowWrite> = (1..=CHANNELS)
                .map(|channel| write(user, state(channel, 10, version), deleted))
                .collect();
            store.write_batch(Arc::from(rows)).await.unwrap();
        }
    }
    while store.purge_tombstones(u64::MAX, usize::MAX).await.unwrap() > 0 {}
}

#[tokio::test]
async fn a_churned_file_shrinks_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions::new(dir.path());
    {
        let store = EmbeddedStore::open_with(&options).unwrap();
        churn(&store).await;
    }
    let done = compact(&options).unwrap();
    assert!(
        done.length_after < done.length_before,
        "the file did not shrink: {done:?}"
    );

    let store = EmbeddedStore::open_with(&options).unwrap();
    for user in 1..=USERS {
        let loaded = load(&store, UserId::new(user).unwrap()).await;
        if user <= DELETED {
            assert!(loaded.states.is_empty(), "user {user} came back");
        } else {
            let expected: Vec<ReadState> = (1..=CHANNELS).map(|c| state(c, 10, 1)).collect();
            assert_eq!(loaded.states, expected, "user {user}");
        }
    }
}

#[tokio::test]
async fn a_database_a_store_holds_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions::new(dir.path());
    let store = EmbeddedStore::open_with(&options).unwrap();
    let refused = compact(&options).unwrap_err();
    assert!(
        refused.to_string().contains("already open"),
        "unexpected error: {refused}"
    );
    drop(store);
}
