use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::*;
use crate::cache::Deferral;
use crate::cache::test_support::{
    TestStore, ack, channel, message, new_cache, take_rows, temp_store, user, write_rows,
};
use crate::store::Store;

/// A gate refusing the users it is told to.
#[derive(Default)]
struct TestGate {
    refused: Mutex<HashSet<UserId>>,
}

impl TestGate {
    fn refuse(&self, user_id: u64) {
        self.refused.lock().insert(user(user_id));
    }

    fn allow(&self, user_id: u64) {
        self.refused.lock().remove(&user(user_id));
    }
}

impl ServingGate for TestGate {
    fn serves(&self, user_id: UserId) -> bool {
        !self.refused.lock().contains(&user_id)
    }
}

fn gated_cache() -> (Arc<Cache>, Arc<TestGate>) {
    let cache = Arc::new(new_cache(100));
    let gate = Arc::new(TestGate::default());
    assert!(cache.set_serving_gate(Arc::clone(&gate) as Arc<dyn ServingGate>));
    (cache, gate)
}

fn only(user_id: u64) -> impl Fn(UserId) -> bool {
    move |candidate| candidate == user(user_id)
}

async fn last_read(cache: &Cache, store: &dyn Store, user_id: u64) -> Result<u64, CacheError> {
    cache
        .read(store, user(user_id), |txn| {
            txn.view(channel(1)).last_message_id.get()
        })
        .await
}

#[tokio::test]
async fn a_user_the_gate_refuses_is_neither_changed_read_nor_loaded() {
    let (_dir, store) = temp_store();
    let (cache, gate) = gated_cache();
    ack(&cache, &store, 1, 10).await;
    gate.refuse(1);
    gate.refuse(2);
    let refused = cache
        .write(&store, user(1), |txn| txn.ack(channel(1), message(11)))
        .await;
    assert!(
        matches!(refused, Err(CacheError::NotServed { user_id: 1 })),
        "{refused:?}"
    );
    assert!(matches!(
        last_read(&cache, &store, 1).await,
        Err(CacheError::NotServed { .. })
    ));
    assert!(matches!(
        cache.try_write(user(1), |txn| txn.view(channel(1))),
        Err(CacheError::NotServed { .. })
    ));
    assert!(matches!(
        cache.defer_mention(user(2), channel(1), message(5)),
        Err(CacheError::NotServed { .. })
    ));
    assert!(matches!(
        last_read(&cache, &store, 2).await,
        Err(CacheError::NotServed { .. })
    ));
    assert_eq!(cache.resident(), (1, 1), "user 2 was not loaded");
    gate.allow(1);
    assert_eq!(last_read(&cache, &store, 1).await.unwrap(), 10);
}

#[tokio::test]
async fn evicting_a_slot_releases_its_dirty_users_until_written_and_drops_the_rest() {
    let (_dir, store) = temp_store();
    let (cache, gate) = gated_cache();
    ack(&cache, &store, 1, 10).await; // dirty
    ack(&cache, &store, 2, 20).await;
    write_rows(&cache, &store, &take_rows(&cache, true)).await; // both clean now
    ack(&cache, &store, 1, 11).await; // 1 dirty again
    ack(&cache, &store, 3, 30).await; // another slot, dirty
    assert_eq!(cache.dirty_states(), 2);

    gate.refuse(1);
    gate.refuse(2);
    let slot = |user_id: UserId| user_id == user(1) || user_id == user(2);
    let evicted = cache.evict_users(&slot);
    assert_eq!(
        evicted,
        Evicted {
            users: 2,
            dirty_users: 1,
            inbox_users: Vec::new()
        }
    );
    assert_eq!(cache.resident(), (1, 1), "only user 3 is cached");
    assert_eq!(cache.dirty_states(), 2, "released states are still dirty");
    let mut unwritten = Vec::new();
    cache.unwritten_users(&mut unwritten);
    assert_eq!(unwritten, vec![user(1)]);

    // The write-behind leaves a released user to the handoff.
    let mut due = Vec::new();
    cache.take_flush_jobs(false, &mut due);
    assert!(due.is_empty());
    let mut rows = Vec::new();
    assert_eq!(cache.take_released(&slot, &mut rows), 1);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state.last_message_id.get(), 11);
    write_rows(&cache, &store, &rows).await;
    assert_eq!(cache.dirty_states(), 1, "user 3's state only");
    unwritten.clear();
    cache.unwritten_users(&mut unwritten);
    assert!(unwritten.is_empty());

    // Served again, the user is loaded afresh from the store.
    gate.allow(1);
    assert_eq!(last_read(&cache, &store, 1).await.unwrap(), 11);
}

#[tokio::test]
async fn released_users_given_back_are_written_by_the_write_behind() {
    let (_dir, store) = temp_store();
    let (cache, gate) = gated_cache();
    ack(&cache, &store, 1, 10).await;
    gate.refuse(1);
    cache.evict_users(&only(1));
    let mut rows = Vec::new();
    cache.take_released(&only(1), &mut rows); // a handoff that then fails
    assert_eq!(cache.requeue_released(&only(1)), 1);
    let rows = take_rows(&cache, false);
    assert_eq!(rows.len(), 1, "due at once, not after the flush delay");
    cache.mark_written(&rows);
    assert_eq!(cache.dirty_states(), 0);
}

#[tokio::test]
async fn deferred_mentions_of_an_evicted_slot_are_merged_into_a_released_user() {
    let (_dir, store) = temp_store();
    let (cache, gate) = gated_cache();
    assert_eq!(
        cache
            .defer_mention(user(1), channel(1), message(7))
            .unwrap(),
        Deferral::Deferred
    );
    gate.refuse(1);
    let evicted = cache.evict_users(&only(1));
    assert_eq!(evicted.inbox_users, vec![user(1)]);
    cache.load_deferred(&store, user(1)).await.unwrap();
    assert!(!cache.has_deferred(user(1)));
    assert_eq!(cache.deferred_mentions(), 0);
    assert_eq!(cache.resident(), (0, 0), "merged, not placed");
    let mut rows = Vec::new();
    assert_eq!(cache.take_released(&only(1), &mut rows), 1);
    assert_eq!(rows[0].state.mentions.count(), 1);
    write_rows(&cache, &store, &rows).await;
    assert_eq!(cache.dirty_states(), 0);
    gate.allow(1);
    let count = cache
        .read(&store, user(1), |txn| txn.view(channel(1)).mention_count)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_load_in_flight_when_its_slot_is_evicted_places_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Loads, once they have read, wait for a permit.
    let store = Arc::new(TestStore {
        load_permits: Some(Semaphore::new(0)),
        ..TestStore::open(dir.path())
    });
    let (cache, gate) = gated_cache();
    let read = tokio::spawn({
        let (cache, store) = (Arc::clone(&cache), Arc::clone(&store));
        async move { last_read(&cache, store.as_ref(), 1).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The slot moves away and back while the load waits; meanwhile its
    // next owner writes the user.
    gate.refuse(1);
    cache.evict_users(&only(1));
    gate.allow(1);
    let other = new_cache(100);
    ack(&other, &store.inner, 1, 42).await;
    let rows = take_rows(&other, true);
    store.inner.write_batch(Arc::from(rows)).await.unwrap();
    // The load read the user before that write: its stale rows are not
    // placed, and the read loads again.
    store.load_permits.as_ref().unwrap().add_permits(2);
    assert_eq!(read.await.unwrap().unwrap(), 42);
}
