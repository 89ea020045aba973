use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cache::test_support::{
    ack, cache_with_backlog, channel, message, new_cache, take_rows, temp_store, user, write_rows,
};
use crate::store::Store;

/// Defers a mention of `message_id` in channel 1 for user 1.
fn mention(cache: &Cache, message_id: u64) -> Result<Deferral, CacheError> {
    cache.defer_mention(user(1), channel(1), message(message_id))
}

/// Writes everything dirty in `cache` to `store`.
async fn flush_all(cache: &Cache, store: &dyn Store) {
    write_rows(cache, store, &take_rows(cache, true)).await;
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
    let (_dir, store) = temp_store();
    // User 1 has read channel 1 up to 100, in the store only.
    let writer = new_cache(100);
    ack(&writer, &store, 1, 100).await;
    flush_all(&writer, &store).await;
    let cache = new_cache(100);

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
    ack(&cache, &store, 1, 150).await;
    assert_eq!(view(&cache, &store, 1, 1).await.mention_count, 0);
}

#[tokio::test]
async fn deferred_mentions_apply_before_the_change_of_the_load_that_merges_them() {
    let (_dir, store) = temp_store();
    let cache = new_cache(100);
    mention(&cache, 30).unwrap();
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
    mention(&cache, 40).unwrap();
    let view = cache
        .write(&store, user(1), |txn| txn.view(channel(1)))
        .await
        .unwrap();
    assert_eq!(view.mention_count, 6);
}

#[tokio::test]
async fn a_mention_deferred_during_a_load_is_merged_by_that_load() {
    let (_dir, store) = temp_store();
    let inner: Arc<dyn Store> = Arc::new(store);
    let slow = crate::store::DelayedStore::new(
        inner,
        Duration::from_millis(200),
        Duration::from_millis(200),
    );
    let cache = new_cache(100);
    let read = cache.read(&slow, user(1), |txn| txn.view(channel(1)));
    let defer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        mention(&cache, 7)
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
    let cache = cache_with_backlog(MAX_PER_USER + 2);
    for id in 1..=MAX_PER_USER as u64 {
        assert_eq!(mention(&cache, id).unwrap(), Deferral::Deferred);
    }
    let full = mention(&cache, 1_000);
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
    let (_dir, store) = temp_store();
    let cache = new_cache(100);
    mention(&cache, 7).unwrap();
    let mut ready = Vec::new();
    cache.take_deferred_users(&mut ready);
    assert_eq!(ready, [user(1)], "the loader is told");
    // Another user dirty now, due 30 s from now.
    tokio::time::advance(Duration::from_secs(20)).await;
    ack(&cache, &store, 2, 1).await;
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
    let (_dir, store) = temp_store();
    let cache = new_cache(100);
    mention(&cache, 7).unwrap();
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

#[tokio::test]
async fn each_merged_mention_gets_a_version_of_its_own() {
    let (_dir, store) = temp_store();
    let cache = new_cache(100);
    // Three calls, two channels: as three calls applied to a loaded user,
    // each change has its own version, in the order they were accepted.
    for (channel_id, message_id) in [(1, 10), (2, 20), (1, 30)] {
        let deferral = cache
            .defer_mention(user(1), channel(channel_id), message(message_id))
            .unwrap();
        assert_eq!(deferral, Deferral::Deferred);
    }
    let (first, second, version) = cache
        .read(&store, user(1), |txn| {
            (
                txn.view(channel(1)),
                txn.view(channel(2)),
                txn.user_version(),
            )
        })
        .await
        .unwrap();
    assert_eq!((first.mention_count, second.mention_count), (2, 1));
    assert!(
        second.version < first.version,
        "channel 2's mention came before channel 1's second: {second:?} {first:?}"
    );
    assert_eq!(version, first.version, "the user's version is the last");
}
