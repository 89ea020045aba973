//! The write-behind's part in a slot's handoff (see `cluster::handoff`):
//! the users of the slots moving away are evicted, their deferred mentions
//! merged by a load, and their dirty states written and confirmed, after
//! the batches the write-behind took before the eviction. The handoff
//! waits for this before it releases the slots' leases.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use super::FlushBarrier;
use crate::cache::{Cache, CacheError, Evicted};
use crate::ids::UserId;
use crate::store::{RowWrite, Store, StoreError};

/// Why the users could not all be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteOutError {
    #[error("loading a user to merge its deferred mentions failed: {0}")]
    Load(#[from] CacheError),
    #[error("writing the users failed: {0}")]
    Write(#[from] StoreError),
    #[error("{0} of the users still have changes not written")]
    Unwritten(usize),
}

/// How a write-out writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteOutSettings {
    /// Rows per write (`flush.batch_size`).
    pub batch_rows: usize,
    /// Writes and loads in flight at once (`flush.concurrency`).
    pub concurrency: usize,
}

/// Evicts the selected users, merges their deferred mentions, writes them,
/// and waits for the write-behind's earlier batches; returns how many users
/// it wrote.
pub async fn write_out(
    cache: &Cache,
    store: &dyn Store,
    flushes: &FlushBarrier,
    settings: WriteOutSettings,
    selects: &(dyn Fn(UserId) -> bool + Sync),
) -> Result<usize, WriteOutError> {
    let concurrency = settings.concurrency.max(1);
    let evicted = evict(cache, selects).await;
    futures_util::stream::iter(evicted.inbox_users)
        .map(|user_id| cache.load_deferred(store, user_id))
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let mut rows = Vec::new();
    let users = cache.take_released(selects, &mut rows);
    // Batches the write-behind took before the eviction may hold older
    // rows of these users: none may land after the lease is released.
    flushes.wait().await;
    let batches: Vec<Arc<[RowWrite]>> = rows
        .chunks(settings.batch_rows.max(1))
        .map(Arc::from)
        .collect();
    futures_util::stream::iter(batches)
        .map(|batch| async move {
            store.write_batch(Arc::clone(&batch)).await?;
            cache.mark_written(&batch);
            Ok::<_, StoreError>(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let mut left = Vec::new();
    cache.unwritten_users(&mut left);
    let left = left.into_iter().filter(|user_id| selects(*user_id)).count();
    if left > 0 {
        return Err(WriteOutError::Unwritten(left));
    }
    Ok(users)
}

/// Evicts the selected users a partition at a time, yielding between
/// partitions: each walks its partition's users under its lock, and a
/// large cache must not hold a runtime worker away from calls.
pub async fn evict(cache: &Cache, selects: &(dyn Fn(UserId) -> bool + Sync)) -> Evicted {
    let mut evicted = Evicted::default();
    for index in 0..cache.partition_count() {
        cache.evict_partition_users(index, selects, &mut evicted);
        tokio::task::yield_now().await;
    }
    evicted
}
