//! A slot's handoff (DESIGN.md section 6): when placement moves a slot away,
//! this instance stops serving it, lets the calls that already passed the
//! cache's gate finish, writes and evicts the slot's users, and only then
//! releases the lease, so the next owner loads everything acknowledged here.
//!
//! The calls in flight need no counter: the cache checks the gate (this
//! instance's [`Ownership`](super::Ownership)) under the partition lock, and
//! the eviction takes every partition's lock after the slot was revoked;
//! see `cache::handoff`. The handoff then writes the slot's released users
//! (their dirty states, and their deferred mentions merged by a load), and
//! waits for the write-behind's batches taken before the eviction, which
//! may hold older rows of the same users. All within
//! `cluster.handoff_timeout_ms`: past it, or on a store error, the lease is
//! not released (it runs out by itself, and the slot's next owner waits for
//! that), and the users left are given to the write-behind, whose writes
//! then lose to the next owner's newer versions, as a crashed instance's
//! would.
//!
//! A slot lost without a handoff (its lease lapsed unrenewed, or was found
//! taken) has its users evicted too, their dirty states given to the
//! write-behind at once. In both cases a slot is not served here again
//! while any of its users still has changes outside the cache, so its next
//! load here reads everything this instance wrote.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::slots::{Slot, slot_of};
use crate::cache::{Cache, CacheError, Evicted};
use crate::flush::FlushBarrier;
use crate::ids::UserId;
use crate::metrics::HandoffMetrics;
use crate::store::{RowWrite, Store, StoreError};

/// What a handoff needs: the cache and store it writes through, and the
/// write-behind it waits for.
pub struct Handoff {
    pub cache: Arc<Cache>,
    /// The store the write-behind writes to.
    pub store: Arc<dyn Store>,
    pub flushes: FlushBarrier,
    /// `cluster.handoff_timeout_ms`.
    pub timeout: Duration,
    /// Rows per write (`flush.batch_size`).
    pub batch_rows: usize,
    /// Writes and loads in flight at once (`flush.concurrency`).
    pub concurrency: usize,
}

/// Why a handoff did not complete.
#[derive(Debug, thiserror::Error)]
enum HandoffError {
    #[error("loading a user to merge its deferred mentions failed: {0}")]
    Load(#[from] CacheError),
    #[error("writing the slots' users failed: {0}")]
    Write(#[from] StoreError),
    #[error("{0} users of the slots still have changes not written")]
    Unwritten(usize),
}

impl Handoff {
    /// Hands off `slots` (flagged by slot number), which this instance has
    /// stopped serving: writes and evicts their users. Returns whether
    /// everything was written, so their leases may be released.
    pub(super) async fn hand_off(&self, slots: &[bool], metrics: &HandoffMetrics) -> bool {
        let started = Instant::now();
        let count = slots.len() as u32;
        let selects = |user_id: UserId| slots[slot_of(user_id, count) as usize];
        let outcome = tokio::time::timeout(self.timeout, self.write_out(&selects)).await;
        let elapsed = started.elapsed();
        metrics.duration.record_duration(elapsed);
        let moving = slots.iter().filter(|flag| **flag).count();
        let error = match outcome {
            Ok(Ok(users)) => {
                metrics.completed.increment(1);
                metrics.users_written.increment(users as u64);
                tracing::info!(
                    slots = moving,
                    users_written = users,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "slots handed off"
                );
                return true;
            }
            Ok(Err(error)) => {
                metrics.failed.increment(1);
                error.to_string()
            }
            Err(_) => {
                metrics.timed_out.increment(1);
                format!("past cluster.handoff_timeout_ms ({:?})", self.timeout)
            }
        };
        let left = self.cache.requeue_released(&selects);
        tracing::warn!(
            slots = moving,
            users_left_to_write_behind = left,
            %error,
            "slot handoff did not complete; keeping the leases until they run out"
        );
        false
    }

    /// Evicts the users of `slots` (flagged by slot number), lost without a
    /// handoff: their dirty states go to the write-behind at once.
    pub(super) async fn drop_lost(&self, slots: &[bool]) {
        let count = slots.len() as u32;
        let selects = |user_id: UserId| slots[slot_of(user_id, count) as usize];
        let evicted = self.evict(&selects).await;
        let released = self.cache.requeue_released(&selects);
        tracing::warn!(
            slots = slots.iter().filter(|flag| **flag).count(),
            users_evicted = evicted.users,
            users_left_to_write_behind = released,
            "slots lost without a handoff; their users evicted"
        );
    }

    /// Returns, per slot of `slots`, whether any of its users has changes
    /// outside the cache (released, or deferred mentions): such a slot must
    /// not be served yet.
    pub(super) fn unwritten_slots(&self, slots: u32) -> Vec<bool> {
        let mut users = Vec::new();
        self.cache.unwritten_users(&mut users);
        let mut flags = vec![false; slots as usize];
        for user_id in users {
            flags[slot_of(user_id, slots) as usize] = true;
        }
        flags
    }

    /// Evicts the selected users, merges their deferred mentions, writes
    /// them, and waits for the write-behind's earlier batches; returns how
    /// many users it wrote.
    async fn write_out(
        &self,
        selects: &(dyn Fn(UserId) -> bool + Sync),
    ) -> Result<usize, HandoffError> {
        let evicted = self.evict(selects).await;
        let cache = self.cache.as_ref();
        let store = self.store.as_ref();
        futures_util::stream::iter(evicted.inbox_users)
            .map(|user_id| cache.load_deferred(store, user_id))
            .buffer_unordered(self.concurrency.max(1))
            .try_collect::<()>()
            .await?;
        let mut rows = Vec::new();
        let users = self.cache.take_released(selects, &mut rows);
        // Batches the write-behind took before the eviction may hold older
        // rows of these users: none may land after the lease is released.
        self.flushes.wait().await;
        let batches: Vec<Arc<[RowWrite]>> =
            rows.chunks(self.batch_rows.max(1)).map(Arc::from).collect();
        futures_util::stream::iter(batches)
            .map(|batch| async move {
                store.write_batch(Arc::clone(&batch)).await?;
                cache.mark_written(&batch);
                Ok::<_, StoreError>(())
            })
            .buffer_unordered(self.concurrency.max(1))
            .try_collect::<()>()
            .await?;
        let mut left = Vec::new();
        self.cache.unwritten_users(&mut left);
        let left = left.into_iter().filter(|user_id| selects(*user_id)).count();
        if left > 0 {
            return Err(HandoffError::Unwritten(left));
        }
        Ok(users)
    }
}

impl Handoff {
    /// Evicts the selected users a partition at a time, yielding between
    /// partitions: each walks its partition's users under its lock, and a
    /// large cache must not hold a runtime worker away from calls.
    async fn evict(&self, selects: &(dyn Fn(UserId) -> bool + Sync)) -> Evicted {
        let mut evicted = Evicted::default();
        for index in 0..self.cache.partition_count() {
            self.cache
                .evict_partition_users(index, selects, &mut evicted);
            tokio::task::yield_now().await;
        }
        evicted
    }
}

/// Returns the slots flagged in `flags`.
pub(super) fn flagged(flags: &[bool]) -> impl Iterator<Item = Slot> + '_ {
    flags
        .iter()
        .enumerate()
        .filter(|(_, flag)| **flag)
        .map(|(slot, _)| slot as Slot)
}
