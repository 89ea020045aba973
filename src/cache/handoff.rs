//! Scale-out's side of the cache: which users this instance may serve, and
//! taking a slot's users out of the cache when it stops serving them.
//!
//! The [`ServingGate`] (the cluster's view of the slots held here) is asked
//! under the partition lock before any change is applied, any user is
//! placed by a load or taken back from eviction, and any mention is
//! deferred. A slot stops being served first (the gate refuses it), then
//! [`Cache::evict_users`] takes each partition's lock in turn and removes
//! its users: a call that passed the gate before finished its change
//! before the eviction saw the user, and one that comes after is refused.
//! So nothing is changed in the cache for a slot after its eviction, and
//! the rows the eviction leaves to write are the slot's last word. Loads
//! in flight at the eviction are marked stale: the rows they read may be
//! older than what the slot's next owner writes, so they place nothing.
//!
//! Evicted dirty users are *released*: kept outside the LRU, never served
//! from, until written. The handoff writes them itself
//! ([`Cache::take_released`]) or gives them to the write-behind
//! ([`Cache::requeue_released`]). Deferred mentions of an evicted slot's
//! users are merged into released users by their next load, which no
//! longer places them. A slot must not be served again while any of its
//! users is released or has deferred mentions ([`Cache::unwritten_users`]):
//! its loads would miss those changes.
//!
//! The cache knows nothing of slots: callers pass a predicate over users.
//! A pass holds one partition's lock while it walks that partition's users
//! (a rare event: a slot moving or lost, not a call).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Cache, CacheError, Partition, TxnCounts, UserEntry, UserTxn};
use crate::clock::unix_micros;
use crate::ids::UserId;
use crate::store::{RowWrite, UserRows};

/// Tells the cache whether this instance may serve a user now.
pub trait ServingGate: Send + Sync {
    /// Returns whether `user_id` may be read, changed or placed in the
    /// cache now. Called under a partition lock: must be quick, and must
    /// not take the cache's locks.
    fn serves(&self, user_id: UserId) -> bool;
}

/// What [`Cache::evict_users`] took out of the cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// Users removed: cached, or waiting for an eviction write.
    pub users: usize,
    /// Those of them with dirty states, now released.
    pub dirty_users: usize,
    /// Users with deferred mentions (not cached): a load of each
    /// ([`Cache::load_deferred`]) merges them into a released user.
    pub inbox_users: Vec<UserId>,
}

impl Cache {
    /// Makes `gate` decide which users this cache serves from now on.
    /// Returns false (and changes nothing) if a gate was set before.
    pub fn set_serving_gate(&self, gate: Arc<dyn ServingGate>) -> bool {
        self.gate.set(gate).is_ok()
    }

    /// Returns whether the gate (if any) lets `user_id` be served now.
    pub(super) fn serves(&self, user_id: UserId) -> bool {
        self.gate.get().is_none_or(|gate| gate.serves(user_id))
    }

    /// Refuses a user the gate does not let be served now.
    pub(super) fn check_served(&self, user_id: UserId) -> Result<(), CacheError> {
        if self.serves(user_id) {
            return Ok(());
        }
        Err(CacheError::NotServed {
            user_id: user_id.get(),
        })
    }

    /// Takes every user that `selects` selects out of the cache, once the
    /// gate refuses them: clean ones are dropped, dirty ones (cached, or
    /// waiting for an eviction write) released; loads in flight for them
    /// will place nothing. Their deferred mentions stay until a load.
    pub fn evict_users(&self, selects: &dyn Fn(UserId) -> bool) -> Evicted {
        let mut evicted = Evicted::default();
        for index in 0..self.partitions.len() {
            self.evict_partition_users(index, selects, &mut evicted);
        }
        evicted
    }

    /// [`Cache::evict_users`] for the partition at `index` only, adding to
    /// `evicted`: an async caller yields between partitions, since each
    /// walks every user of its partition.
    pub fn evict_partition_users(
        &self,
        index: usize,
        selects: &dyn Fn(UserId) -> bool,
        evicted: &mut Evicted,
    ) {
        if let Some(partition) = self.partitions.get(index) {
            let mut guard = partition.lock();
            let partition = &mut *guard;
            let cached: Vec<UserId> = partition
                .lru
                .iter()
                .map(|(user_id, _)| *user_id)
                .filter(|user_id| selects(*user_id))
                .collect();
            for user_id in cached {
                let Some(mut entry) = partition.lru.remove(&user_id) else {
                    continue;
                };
                partition.uncount_removed(user_id, &mut entry);
                evicted.users += 1;
                if entry.dirty_count() > 0 {
                    entry.writing = false;
                    partition.released.insert(user_id, entry);
                    evicted.dirty_users += 1;
                }
            }
            let evicting: Vec<UserId> = selected(&partition.evicting, selects).collect();
            for user_id in evicting {
                // An eviction write in flight keeps its mark: it clears the
                // released entry when it lands.
                if let Some(entry) = partition.evicting.remove(&user_id) {
                    partition.released.insert(user_id, entry);
                    evicted.users += 1;
                    evicted.dirty_users += 1;
                }
            }
            partition
                .stale_loads
                .extend(selected(&partition.loading, selects));
            evicted
                .inbox_users
                .extend(selected(&partition.inbox, selects));
        }
    }

    /// Appends the dirty rows of every released user that `selects`
    /// selects to `rows`, for the caller to write (and then pass to
    /// [`Cache::mark_written`]); returns how many users. The write-behind
    /// does not take them meanwhile, except at shutdown.
    pub fn take_released(
        &self,
        selects: &dyn Fn(UserId) -> bool,
        rows: &mut Vec<RowWrite>,
    ) -> usize {
        let mut users = 0;
        for partition in self.partitions.iter() {
            let mut partition = partition.lock();
            for (user_id, entry) in partition.released.iter_mut() {
                if selects(*user_id) {
                    entry.writing = true;
                    entry.dirty_rows(*user_id, rows);
                    users += 1;
                }
            }
        }
        users
    }

    /// Gives the released users that `selects` selects to the write-behind,
    /// which writes them at once (their versions lose to any newer owner's,
    /// as a crashed instance's would); returns how many users.
    pub fn requeue_released(&self, selects: &dyn Fn(UserId) -> bool) -> usize {
        let mut users = 0;
        for partition in self.partitions.iter() {
            let mut guard = partition.lock();
            let partition = &mut *guard;
            for (user_id, entry) in partition.released.iter_mut() {
                if selects(*user_id) {
                    entry.writing = false;
                    partition.evicted.push(*user_id);
                    users += 1;
                }
            }
        }
        if users > 0 {
            self.evicted.notify_one();
        }
        users
    }

    /// Appends to `out` the users with changes held outside the LRU: those
    /// released and not yet written, and those with deferred mentions.
    pub fn unwritten_users(&self, out: &mut Vec<UserId>) {
        for partition in self.partitions.iter() {
            let partition = partition.lock();
            out.extend(partition.released.keys().copied());
            out.extend(partition.inbox.keys().copied());
        }
    }

    /// Merges the deferred mentions of a user the gate no longer lets be
    /// served into its released entry (built from `rows`, just loaded,
    /// unless it has one), for the write-behind to write.
    pub(super) fn release_inbox(
        &self,
        partition: &mut Partition,
        user_id: UserId,
        rows: UserRows,
    ) -> Result<(), CacheError> {
        if !partition.inbox.contains_key(&user_id) {
            return Ok(());
        }
        // The merge hands out versions.
        self.clock.check_lease_at(unix_micros())?;
        let Some(inbox) = partition.inbox.remove(&user_id) else {
            return Ok(());
        };
        let mut entry = partition
            .released
            .remove(&user_id)
            .unwrap_or_else(|| UserEntry::loaded(rows));
        let mut txn = UserTxn::new(
            user_id,
            &mut entry,
            &self.clock,
            self.max_tracked_mentions,
            self.hook.get().map(|hook| hook.as_ref()),
        );
        let merged = inbox.apply_to(&mut txn);
        let TxnCounts {
            newly_dirty,
            changed_states,
            ..
        } = txn.finish();
        partition.stats.changed_states += changed_states as u64;
        partition.stats.newly_dirty += newly_dirty as u64;
        self.dirty.fetch_add(newly_dirty, Ordering::Relaxed);
        self.deferred.fetch_sub(merged, Ordering::Relaxed);
        if entry.dirty_count() > 0 {
            entry.writing = false;
            partition.released.insert(user_id, entry);
            partition.evicted.push(user_id);
            self.evicted.notify_one();
        }
        Ok(())
    }
}

/// The users keyed in `map` that `selects` selects.
fn selected<'a, V>(
    map: &'a HashMap<UserId, V>,
    selects: &'a dyn Fn(UserId) -> bool,
) -> impl Iterator<Item = UserId> + 'a {
    map.keys().copied().filter(|user_id| selects(*user_id))
}

#[cfg(test)]
#[path = "handoff_tests.rs"]
mod tests;
