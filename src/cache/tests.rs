use super::test_support::{cache_with_backlog, channel, message, new_cache, temp_store, user};
use super::*;

#[tokio::test(start_paused = true)]
async fn writes_are_refused_when_the_backlog_is_full() {
    let (_dir, store) = temp_store();
    let cache = cache_with_backlog(2);
    for id in 1..=2 {
        cache
            .write(&store, user(1), |txn| txn.ack(channel(id), message(1)))
            .await
            .unwrap();
    }
    let refused = cache
        .write(&store, user(1), |txn| txn.ack(channel(3), message(1)))
        .await;
    assert!(matches!(refused, Err(CacheError::Backlog { dirty: 2 })));
    let read = cache
        .read(&store, user(1), |txn| txn.view(channel(1)))
        .await;
    assert_eq!(read.unwrap().last_message_id.get(), 1, "reads still work");
}

#[tokio::test]
async fn writes_are_refused_once_the_version_lease_has_run_out() {
    let (_dir, store) = temp_store();
    let cache = new_cache(100);
    let ack = |txn: &mut UserTxn<'_>| txn.ack(channel(1), message(5));
    cache.write(&store, user(1), ack).await.unwrap();

    cache.clock().set_lease(unix_micros());
    let refused = cache.write(&store, user(1), ack).await;
    assert!(
        matches!(refused, Err(CacheError::LeaseExpired(_))),
        "{refused:?}"
    );
    let refused = cache.write(&store, user(2), ack).await;
    assert!(
        matches!(refused, Err(CacheError::LeaseExpired(_))),
        "checked after the load too: {refused:?}"
    );
    assert!(matches!(
        cache.try_write(user(1), ack),
        Err(CacheError::LeaseExpired(_))
    ));
    let read = cache
        .read(&store, user(1), |txn| txn.view(channel(1)))
        .await;
    assert_eq!(read.unwrap().last_message_id.get(), 5, "reads still work");

    cache.clock().set_lease(unix_micros() + 60_000_000);
    cache.write(&store, user(1), ack).await.unwrap();
}

#[tokio::test]
async fn a_fan_out_to_cold_users_keeps_the_hot_users_cached() {
    let (_dir, store) = temp_store();
    let cache = cache_with_backlog(1_000_000);
    let ack = |txn: &mut UserTxn<'_>| txn.ack(channel(1), message(5));
    // 40 hot users, each used twice (an ack, then a read).
    for id in 1..=40 {
        cache.write(&store, user(id), ack).await.unwrap();
        cache
            .read(&store, user(id), |txn| txn.view(channel(1)))
            .await
            .unwrap();
    }
    // A fan-out to 1,000 cold users, each loaded and changed once.
    for id in 1_000..2_000 {
        cache
            .write_with_priority(&store, user(id), LoadPriority::Background, |txn| {
                txn.add_mention(channel(1), message(9))
            })
            .await
            .unwrap();
    }
    let misses_before = cache.stats().misses;
    for id in 1..=40 {
        cache
            .read(&store, user(id), |txn| txn.view(channel(1)))
            .await
            .unwrap();
    }
    assert_eq!(
        cache.stats().misses,
        misses_before,
        "every hot user was still cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_into_a_full_cache_all_make_progress() {
    let (_dir, store) = temp_store();
    // Room for two users: every load evicts another freshly loaded one.
    let cache = new_cache(2);
    let writes = (1..=300).map(|id| {
        cache.write_with_priority(&store, user(id), LoadPriority::Background, |txn| {
            txn.add_mention(channel(1), message(9))
        })
    });
    let views = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(writes),
    )
    .await
    .expect("every load applied its request (no load-evict loop)");
    for view in views {
        assert_eq!(view.unwrap().mention_count, 1);
    }
}

/// Records what the change hook hears.
#[derive(Default)]
struct Recorder(parking_lot::Mutex<Vec<(u64, u64, u64, bool)>>);

impl ChangeHook for Recorder {
    fn listens(&self, _user_id: UserId) -> bool {
        true
    }

    fn applied(&self, user_id: UserId, changes: &[AppliedChange]) {
        let mut heard = self.0.lock();
        for change in changes {
            heard.push((
                user_id.get(),
                change.view.channel_id.get(),
                change.view.version,
                change.deleted,
            ));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_change_hook_hears_every_applied_change_in_version_order() {
    let (_dir, store) = temp_store();
    let cache = new_cache(100);
    cache.clock().set_lease(u64::MAX);
    let recorder = Arc::new(Recorder::default());
    assert!(cache.set_change_hook(recorder.clone()));
    assert!(!cache.set_change_hook(recorder.clone()), "set once");
    cache
        .write(&store, user(1), |txn| {
            txn.ack(channel(7), message(10));
            txn.add_mention(channel(8), message(20))
        })
        .await
        .unwrap();
    // A stale ack changes nothing, and nothing is heard of it.
    cache
        .write(&store, user(1), |txn| txn.ack(channel(7), message(5)))
        .await
        .unwrap();
    cache
        .write(&store, user(1), |txn| txn.delete(channel(7)))
        .await
        .unwrap();
    let heard = recorder.0.lock().clone();
    assert_eq!(heard.len(), 3, "{heard:?}");
    assert_eq!((heard[0].0, heard[0].1, heard[0].3), (1, 7, false));
    assert_eq!((heard[1].1, heard[1].3), (8, false));
    assert_eq!(heard[0].2, heard[1].2, "one transaction, one version");
    assert_eq!((heard[2].1, heard[2].3), (7, true));
    assert!(heard[2].2 > heard[1].2, "versions only grow");
}
