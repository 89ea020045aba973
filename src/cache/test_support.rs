//! What the cache's and the flusher's unit tests share: small caches, ids,
//! a store in a temporary directory, and the store the tests switch.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::Semaphore;

use super::{Cache, CacheSettings};
use crate::ids::{ChannelId, MessageId, UserId};
use crate::store::{
    EmbeddedStore, Operation, RowWrite, Store, StoreError, StoreFuture, StoreLayer,
};

/// One partition of `capacity` states, a 30 s flush delay on 1 s ticks.
pub(crate) fn settings(capacity: usize) -> CacheSettings {
    CacheSettings {
        capacity,
        partitions: 1,
        max_tracked_mentions: 1_000,
        max_dirty_states: 1_000,
        flush_delay: Duration::from_secs(30),
        flush_tick: Duration::from_secs(1),
    }
}

/// An empty cache of [`settings`].
pub(crate) fn new_cache(capacity: usize) -> Cache {
    Cache::new(&settings(capacity), 0)
}

/// An empty cache of `partitions` partitions, with room for 10,000 states
/// and as many dirty ones.
pub(crate) fn partitioned_cache(partitions: usize) -> Cache {
    Cache::new(
        &CacheSettings {
            partitions,
            max_dirty_states: 10_000,
            ..settings(10_000)
        },
        0,
    )
}

/// An empty cache of room for 100 states that refuses changes once
/// `max_dirty_states` states and deferred mentions wait for the store.
pub(crate) fn cache_with_backlog(max_dirty_states: usize) -> Cache {
    Cache::new(
        &CacheSettings {
            max_dirty_states,
            ..settings(100)
        },
        0,
    )
}

pub(crate) fn user(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

pub(crate) fn channel(id: u64) -> ChannelId {
    ChannelId::new(id).unwrap()
}

pub(crate) fn message(id: u64) -> MessageId {
    MessageId::new(id).unwrap()
}

/// An embedded store in a new temporary directory, which lives as long as
/// the directory returned with it.
pub(crate) fn temp_store() -> (TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    (dir, store)
}

/// Acks `message_id` in channel 1 for the user.
pub(crate) async fn ack(cache: &Cache, store: &dyn Store, user_id: u64, message_id: u64) {
    cache
        .write(store, user(user_id), |txn| {
            txn.ack(channel(1), message(message_id))
        })
        .await
        .unwrap();
}

/// Takes the rows of the flush jobs due now (all of them at `shutdown`).
pub(crate) fn take_rows(cache: &Cache, shutdown: bool) -> Vec<RowWrite> {
    let mut jobs = Vec::new();
    cache.take_flush_jobs(shutdown, &mut jobs);
    jobs.into_iter().flat_map(|job| job.rows).collect()
}

/// Writes `rows` to `store` and tells `cache` they landed.
pub(crate) async fn write_rows(cache: &Cache, store: &dyn Store, rows: &[RowWrite]) {
    store.write_batch(Arc::from(rows)).await.unwrap();
    cache.mark_written(rows);
}

/// The embedded store with the tests' two switches: its batch writes fail
/// while `down` is set, and with `load_permits`, a load, once it has read,
/// waits for a permit.
pub(crate) struct TestStore {
    pub(crate) inner: EmbeddedStore,
    pub(crate) down: AtomicBool,
    pub(crate) load_permits: Option<Semaphore>,
}

impl TestStore {
    /// Opens the embedded store at `path`, up, its loads not held.
    pub(crate) fn open(path: &Path) -> Self {
        Self {
            inner: EmbeddedStore::open(path).unwrap(),
            down: AtomicBool::new(false),
            load_permits: None,
        }
    }
}

impl StoreLayer for TestStore {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }

    fn backend_name(&self) -> &'static str {
        "test"
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if matches!(operation, Operation::WriteBatch { .. }) && self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Unavailable("down".to_owned())) });
        }
        if let (Operation::LoadUser { .. }, Some(permits)) = (operation, &self.load_permits) {
            return Box::pin(async move {
                let rows = call(&self.inner).await;
                let _permit = permits.acquire().await;
                rows
            });
        }
        call(&self.inner)
    }
}
