use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::cache::CacheSettings;
use crate::ids::{ChannelId, MessageId};
use crate::store::{EmbeddedStore, LoadPriority, Operation, StoreFuture, StoreLayer};

/// The embedded store, whose batch writes fail while `down` is set.
struct Switchable {
    inner: EmbeddedStore,
    down: AtomicBool,
}

impl StoreLayer for Switchable {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }
    fn backend_name(&self) -> &'static str {
        "switchable"
    }
    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if matches!(operation, Operation::WriteBatch { .. }) && self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Unavailable("down".to_owned())) });
        }
        call(&self.inner)
    }
}

fn cache() -> Cache {
    let cache = Cache::new(
        &CacheSettings {
            capacity: 1_000,
            partitions: 2,
            max_tracked_mentions: 1_000,
            max_dirty_states: 1_000,
            flush_delay: Duration::from_secs(30),
            flush_tick: Duration::from_secs(1),
        },
        0,
    );
    cache.clock().set_lease(u64::MAX);
    cache
}

fn id<T>(make: fn(u64) -> Result<T, crate::ids::IdError>, raw: u64) -> T {
    make(raw).unwrap()
}

/// Acks user 1 in channel 7 (a dirty row) and mentions user 2, never
/// loaded, in channel 9 (a deferred mention).
async fn changes_in_memory(cache: &Cache, store: &dyn Store) {
    cache
        .write(store, id(UserId::new, 1), |txn| {
            txn.ack(id(ChannelId::new, 7), id(MessageId::new, 500))
        })
        .await
        .unwrap();
    let deferral = cache
        .defer_mention(
            id(UserId::new, 2),
            id(ChannelId::new, 9),
            id(MessageId::new, 600),
        )
        .unwrap();
    assert_eq!(deferral, Deferral::Deferred);
}

#[tokio::test]
async fn a_spill_and_its_replay_keep_every_unwritten_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Switchable {
        inner: EmbeddedStore::open(&dir.path().join("db")).unwrap(),
        down: AtomicBool::new(true),
    };
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
    let acked = store
        .load_user(id(UserId::new, 1), LoadPriority::Urgent)
        .await
        .unwrap();
    assert_eq!(acked.states.len(), 1);
    assert_eq!(acked.states[0].last_message_id.get(), 500);
    let mentioned = store
        .load_user(id(UserId::new, 2), LoadPriority::Urgent)
        .await
        .unwrap();
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
    let store = Switchable {
        inner: EmbeddedStore::open(&dir.path().join("db")).unwrap(),
        down: AtomicBool::new(true),
    };
    // A file where the spill directory should be: no spill can be made.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    let spill = SpillDir::new(blocked);
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
    let store = Switchable {
        inner: EmbeddedStore::open(&dir.path().join("db")).unwrap(),
        down: AtomicBool::new(false),
    };
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    let cache = cache();
    cache
        .write(&store, id(UserId::new, 1), |txn| {
            txn.ack(id(ChannelId::new, 7), id(MessageId::new, 500))
        })
        .await
        .unwrap();
    let kept = keep_unwritten(
        &cache,
        &store,
        &SpillDir::new(blocked),
        100,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(kept, Kept::Written);
    assert_eq!(cache.dirty_states(), 0);
    let stored = store
        .load_user(id(UserId::new, 1), LoadPriority::Urgent)
        .await
        .unwrap();
    assert_eq!(stored.states[0].last_message_id.get(), 500);
}
