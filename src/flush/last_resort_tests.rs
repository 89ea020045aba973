use std::path::Path;
use std::sync::atomic::Ordering;

use super::*;
use crate::cache::CacheSettings;
use crate::cache::test_support::{TestStore, channel, message, settings, user};
use crate::store::{LoadPriority, UserRows};

/// The test store in `dir`, its batch writes failing while it is `down`.
fn store_in(dir: &Path, down: bool) -> TestStore {
    let store = TestStore::open(&dir.join("db"));
    store.down.store(down, Ordering::SeqCst);
    store
}

/// A spill directory where a file stands: no spill can be made in it.
fn blocked_spill(dir: &Path) -> SpillDir {
    let blocked = dir.join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    SpillDir::new(blocked)
}

/// The user's rows in `store`.
async fn stored(store: &dyn Store, user_id: u64) -> UserRows {
    store
        .load_user(user(user_id), LoadPriority::Urgent)
        .await
        .unwrap()
}

fn cache() -> Cache {
    let cache = Cache::new(
        &CacheSettings {
            partitions: 2,
            ..settings(1_000)
        },
        0,
    );
    cache.clock().set_lease(u64::MAX);
    cache
}

/// Acks user 1 in channel 7: a dirty row.
async fn ack(cache: &Cache, store: &dyn Store) {
    cache
        .write(store, user(1), |txn| txn.ack(channel(7), message(500)))
        .await
        .unwrap();
}

/// [`ack`], and mentions user 2, never loaded, in channel 9 (a deferred
/// mention).
async fn changes_in_memory(cache: &Cache, store: &dyn Store) {
    ack(cache, store).await;
    let deferral = cache
        .defer_mention(user(2), channel(9), message(600))
        .unwrap();
    assert_eq!(deferral, Deferral::Deferred);
}

#[tokio::test]
async fn a_spill_and_its_replay_keep_every_unwritten_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), true);
    let spill = SpillDir::new(dir.path().join("spill"));
    let before = cache();
    changes_in_memory(&before, &store).await;
    let kept = keep_unwritten(&before, &store, &spill, 100, &CancellationToken::new()).await;
    let Ok(Kept::Spilled { rows, mentions, .. }) = kept else {
        panic!("expected a spill, got {kept:?}");
    };
    assert_eq!((rows, mentions), (1, 1));

    store.down.store(false, Ordering::SeqCst);
    let after = cache();
    let replayed = replay_spills(&spill, &after, &store, 100).await.unwrap();
    assert_eq!(replayed, (1, 1));
    assert!(spill.read_all().unwrap().is_empty(), "removed once durable");
    assert_eq!(after.dirty_states(), 0);
    let acked = stored(&store, 1).await;
    assert_eq!(acked.states.len(), 1);
    assert_eq!(acked.states[0].last_message_id.get(), 500);
    let mentioned = stored(&store, 2).await;
    assert_eq!(mentioned.states.len(), 1);
    assert_eq!(mentioned.states[0].mentions.count(), 1);

    // A second start finds nothing to replay.
    assert_eq!(
        replay_spills(&spill, &cache(), &store, 100).await.unwrap(),
        (0, 0)
    );
}

#[tokio::test]
async fn a_shutdown_that_can_keep_nothing_waits_for_the_second_signal() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), true);
    let spill = blocked_spill(dir.path());
    let cache = cache();
    changes_in_memory(&cache, &store).await;
    let force = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let signal = {
        let force = force.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            force.cancel();
        })
    };
    let kept = keep_unwritten(&cache, &store, &spill, 100, &force).await;
    signal.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the signal"
    );
    let given_up = kept.unwrap_err();
    assert_eq!((given_up.rows, given_up.mentions), (1, 1));
    assert!(
        given_up.to_string().contains("1 dirty read states"),
        "{given_up}"
    );
}

#[tokio::test]
async fn a_store_that_takes_the_rows_needs_no_spill() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), false);
    let cache = cache();
    ack(&cache, &store).await;
    let kept = keep_unwritten(
        &cache,
        &store,
        &blocked_spill(dir.path()),
        100,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(kept, Kept::Written);
    assert_eq!(cache.dirty_states(), 0);
    let stored = stored(&store, 1).await;
    assert_eq!(stored.states[0].last_message_id.get(), 500);
}

#[tokio::test]
async fn a_spill_larger_than_the_dirty_backlog_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), false);
    let spill = SpillDir::new(dir.path().join("spill"));
    // 40 users mentioned, never loaded: more than the backlog of the start
    // that replays them.
    let mentions = (1..=40)
        .map(|id| DeferredMention {
            user_id: user(id),
            channel_id: channel(9),
            message_id: message(600),
        })
        .collect();
    spill
        .write(&Unwritten {
            rows: Vec::new(),
            mentions,
        })
        .unwrap();
    let small = Cache::new(
        &CacheSettings {
            max_dirty_states: 10,
            ..settings(1_000)
        },
        0,
    );
    small.clock().set_lease(u64::MAX);
    let replayed = replay_spills(&spill, &small, &store, 4).await.unwrap();
    assert_eq!(replayed, (0, 40));
    for id in 1..=40 {
        let rows = stored(&store, id).await;
        assert_eq!(rows.states.len(), 1, "user {id}");
        assert_eq!(rows.states[0].mentions.count(), 1, "user {id}");
    }
}
