use std::sync::Arc;
use std::time::Duration;

use super::super::tests::{channel, settings, user};
use super::*;
use crate::cache::CacheSettings;
use crate::store::{EmbeddedStore, RowWrite, Store};

fn message(id: u64) -> MessageId {
    MessageId::new(id).unwrap()
}

/// Writes everything dirty in `cache` to `store`.
async fn flush_all(cache: &Cache, store: &dyn Store) {
    let mut jobs = Vec::new();
    cache.take_flush_jobs(true, &mut jobs);
    let rows: Vec<RowWrite> = jobs.into_iter().flat_map(|job| job.rows).collect();
    store.write_batch(Arc::from(rows.clone())).await.unwrap();
    cache.mark_written(&rows);
}

async fn view(
    cache: &Cache,
    store: &dyn Store,
    user_id: u64,
    channel_id: u64,
) -> super::super::StateView {
    cache
        .read(store, user(user_id), |txn| txn.view(channel(channel_id)))
        .await
        .unwrap()
}

#[tokio::test]
async fn deferred_mentions_follow_the_counting_rule_when_merged() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // User 1 has read channel 1 up to 100, in the store only.
    let writer = Cache::new(&settings(100), 0);
    writer
        .write(&store, user(1), |txn| txn.ack(channel(1), message(100)))
        .await
        .unwrap();
    flush_all(&writer, &store).await;
    let cache = Cache::new(&settings(100), 0);

    let defer = |channel_id, message_id| {
        cache.defer_mention(user(1), channel(channel_id), message(message_id))
    };
    assert_eq!(
        defer(1, 50).unwrap(),
        Deferral::Deferred,
        "read already: not counted"
    );
    assert_eq!(defer(1, 150).unwrap(), Deferral::Deferred);
    assert_eq!(
        defer(1, 150).unwrap(),
        Deferral::Deferred,
        "a retry counts once"
    );
    assert_eq!(defer(1, 120).unwrap(), Deferral::Deferred, "any order");
    assert_eq!(cache.deferred_mentions(), 3, "the retry is not held twice");
    assert!(cache.has_deferred(user(1)));

    let merged = view(&cache, &store, 1, 1).await;
    assert_eq!(merged.last_message_id.get(), 100);
    assert_eq!(merged.mention_count, 2);
    assert_eq!(cache.deferred_mentions(), 0);
    assert!(!cache.has_deferred(user(1)));

    // Cached now: applied at once, still idempotent.
    assert_eq!(defer(1, 150).unwrap(), Deferral::Applied);
    assert_eq!(view(&cache, &store, 1, 1).await.mention_count, 2);
    // The next ack clears them.
    cache
        .write(&store, user(1), |txn| txn.ack(channel(1), message(150)))
        .await
        .unwrap();
    assert_eq!(view(&cache, &store, 1, 1).await.mention_count, 0);
}

#[tokio::test]
async fn deferred_mentions_apply_before_the_change_of_the_load_that_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let cache = Cache::new(&settings(100), 0);
    cache
        .defer_mention(user(1), channel(1), message(30))
        .unwrap();
    // "Mark as unread" at 10 with 5 mentions, after the mention of 30: the
    // given count stands, whatever was counted before it. Applied the
    // other way round, the mention would count on top (6).
    let view = cache
        .write(&store, user(1), |txn| {
            txn.manual_ack(channel(1), message(10), 5)
        })
        .await
        .unwrap();
    assert_eq!((view.last_message_id.get(), view.mention_count), (10, 5));
    // A later mention counts on top of it.
    cache
        .defer_mention(user(1), channel(1), message(40))
        .unwrap();
    let view = cache
        .write(&store, user(1), |txn| txn.view(channel(1)))
        .await
        .unwrap();
    assert_eq!(view.mention_count, 6);
}

#[tokio::test]
async fn a_mention_deferred_during_a_load_is_merged_by_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let slow = crate::store::DelayedStore::new(
        inner,
        Duration::from_millis(200),
        Duration::from_millis(200),
    );
    let cache = Cache::new(&settings(100), 0);
    let read = cache.read(&slow, user(1), |txn| txn.view(channel(1)));
    let defer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cache.defer_mention(user(1), channel(1), message(7))
    };
    let (view, deferral) = tokio::join!(read, defer);
    assert_eq!(
        deferral.unwrap(),
        Deferral::Deferred,
        "the user was loading"
    );
    assert_eq!(view.unwrap().mention_count, 1, "merged before the read");
    assert_eq!(cache.deferred_mentions(), 0);
}

#[tokio::test]
async fn a_full_inbox_asks_for_a_load_and_the_backlog_counts_deferred_mentions() {
    let cache = Cache::new(
        &CacheSettings {
            max_dirty_states: MAX_PER_USER + 2,
            ..settings(100)
        },
        0,
    );
    for id in 1..=MAX_PER_USER as u64 {
        assert_eq!(
            cache
                .defer_mention(user(1), channel(1), message(id))
                .unwrap(),
            Deferral::Deferred
        );
    }
    let full = cache.defer_mention(user(1), channel(1), message(1_000));
    assert_eq!(full.unwrap(), Deferral::Full);
    cache
        .defer_mention(user(2), channel(1), message(1))
        .unwrap();
    cache
        .defer_mention(user(3), channel(1), message(1))
        .unwrap();
    let refused = cache.defer_mention(user(4), channel(1), message(1));
    assert!(
        matches!(refused, Err(CacheError::Backlog { dirty }) if dirty == MAX_PER_USER + 2),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_merged_mention_is_due_one_flush_delay_after_it_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let cache = Cache::new(&settings(100), 0);
    cache
        .defer_mention(user(1), channel(1), message(7))
        .unwrap();
    let mut ready = Vec::new();
    cache.take_deferred_users(&mut ready);
    assert_eq!(ready, [user(1)], "the loader is told");
    // Another user dirty now, due 30 s from now.
    tokio::time::advance(Duration::from_secs(20)).await;
    cache
        .write(&store, user(2), |txn| txn.ack(channel(1), message(1)))
        .await
        .unwrap();
    cache.load_deferred(&store, user(1)).await.unwrap();
    assert_eq!(cache.deferred_mentions(), 0);

    tokio::time::advance(Duration::from_secs(11)).await;
    let mut jobs = Vec::new();
    cache.take_flush_jobs(false, &mut jobs);
    let due: Vec<u64> = jobs
        .iter()
        .flat_map(|job| job.rows.iter().map(|row| row.user_id.get()))
        .collect();
    assert_eq!(due, [1], "due 30 s after the mention, not after its merge");
    tokio::time::advance(Duration::from_secs(20)).await;
    jobs.clear();
    cache.take_flush_jobs(false, &mut jobs);
    assert_eq!(jobs.len(), 1, "the other user in its own time");
}

#[tokio::test]
async fn the_lease_guards_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let cache = Cache::new(&settings(100), 0);
    cache
        .defer_mention(user(1), channel(1), message(7))
        .unwrap();
    cache.clock().set_lease(unix_micros());
    let refused = cache.load_deferred(&store, user(1)).await;
    assert!(
        matches!(refused, Err(CacheError::LeaseExpired(_))),
        "{refused:?}"
    );
    assert!(cache.has_deferred(user(1)), "kept for the next load");
    cache.clock().set_lease(unix_micros() + 60_000_000);
    assert_eq!(view(&cache, &store, 1, 1).await.mention_count, 1);
}
