//! Single-flight loads: a user not in memory is loaded from the store once,
//! however many requests wait for it, without holding the partition lock
//! across the load; the load that places the user applies its request's
//! work in the same lock hold, so every request makes progress.

use std::collections::HashMap;

use tokio::sync::watch;

use super::{Cache, CacheError, Use, UserEntry, UserTxn};
use crate::clock::unix_micros;
use crate::ids::UserId;
use crate::store::{LoadPriority, Store};

impl Cache {
    /// Runs `work` on the user's states, loading them first if the user is
    /// neither cached nor evicting (leading the single flight, or waiting
    /// for the request that leads it); refused while the user is not served.
    pub(super) async fn access<R, F>(
        &self,
        store: &dyn Store,
        user_id: UserId,
        priority: LoadPriority,
        work: F,
    ) -> Result<R, CacheError>
    where
        F: FnOnce(&mut UserTxn<'_>) -> R,
    {
        let mut work = work;
        let mut the_use = Use::Request;
        loop {
            // The guard lives in this block only: nothing awaits under it.
            let next = {
                let mut partition = self.partition(user_id).lock();
                // Under the lock: a slot's eviction (`handoff`) takes every
                // partition's lock after the slot stopped being served, so
                // nothing passes this check and is applied after it.
                self.check_served(user_id)?;
                work = match self.try_apply(&mut partition, user_id, work, the_use) {
                    Ok(result) => return Ok(result),
                    Err(work) => work,
                };
                if the_use == Use::Request {
                    partition.stats.misses += 1;
                }
                Miss::join_or_lead(&mut partition.loading, user_id, priority)
            };
            match next {
                Miss::Expedite(mut receiver) => {
                    // A request now waits for a background load: the store
                    // runs it as urgent (no lock held here).
                    store.expedite_load(user_id);
                    let _ = receiver.changed().await;
                    the_use = Use::Uncounted;
                }
                Miss::Load(sender) => {
                    work = match self.load(store, user_id, priority, sender, work).await? {
                        Ok(result) => return Ok(result),
                        Err(work) => work,
                    };
                    the_use = Use::AfterLoad;
                }
                // Err means the loader finished (or gave up): look again.
                // The user may have been evicted again meanwhile, under
                // heavy churn; then this request leads the next load.
                Miss::Wait(mut receiver) => {
                    let _ = receiver.changed().await;
                    the_use = Use::Uncounted;
                }
            }
        }
    }

    /// Loads a user from the store into the LRU and applies `work` in the
    /// same lock hold, so that the request always makes progress: under
    /// heavy churn the user may be evicted again right after, but never
    /// before the work that loaded it. The guard ends the single flight
    /// however this future ends, cancellation included.
    /// (`work` comes back only if the user could not be placed, which the
    /// single flight rules out; the caller then simply looks again.)
    pub(super) async fn load<R, F>(
        &self,
        store: &dyn Store,
        user_id: UserId,
        priority: LoadPriority,
        sender: watch::Sender<()>,
        work: F,
    ) -> Result<Result<R, F>, CacheError>
    where
        F: FnOnce(&mut UserTxn<'_>) -> R,
    {
        let guard = LoadGuard {
            cache: self,
            user_id,
            _sender: sender,
        };
        let rows = store.load_user(user_id, priority).await?;
        let result = {
            let mut partition = self.partition(user_id).lock();
            if !self.serves(user_id) || partition.stale_loads.contains(&user_id) {
                // Not placed: the caller looks again, and learns whether
                // the user is served. Deferred mentions of a user no longer
                // served are merged and written, never served from here.
                if !self.serves(user_id) {
                    self.release_inbox(&mut partition, user_id, rows)?;
                }
                return Ok(Err(work));
            }
            // A miss means the user was neither cached nor evicting, and
            // only this single flight can bring it back; were it in memory
            // now, that copy would be newer than the rows just read.
            if !partition.lru.contains(&user_id) && !partition.evicting.contains_key(&user_id) {
                // Deferred mentions are merged first, and need versions.
                if partition.inbox.contains_key(&user_id) {
                    self.clock.check_lease_at(unix_micros())?;
                }
                let entry = UserEntry::loaded(rows);
                partition.weight += entry.weight();
                partition.extras += entry.sizes().1;
                partition.lru.put(user_id, entry);
                self.merge_inbox(&mut partition, user_id);
            }
            let result = self.try_apply(&mut partition, user_id, work, Use::AfterLoad);
            self.evict_over_capacity(&mut partition, Some(user_id));
            result
        };
        // The partition lock is released: the guard takes it to end the
        // single flight.
        drop(guard);
        Ok(result)
    }
}

/// A load in flight: what its waiters wake on, and how soon the store is
/// to run it.
pub(super) struct Flight {
    done: watch::Receiver<()>,
    priority: LoadPriority,
}

/// What a request does about a user that is not cached.
pub(super) enum Miss {
    /// Load it: this request leads the single flight.
    Load(watch::Sender<()>),
    /// Wait for the request that is loading it.
    Wait(watch::Receiver<()>),
    /// Wait for a background load, which this urgent request has just
    /// raised to urgent: ask the store to expedite it, then wait.
    Expedite(watch::Receiver<()>),
}

impl Miss {
    /// Joins the load of `user_id` in flight in `loading`, or marks one
    /// started at `priority` with this request leading it. An urgent
    /// request that joins a background load raises it (once).
    pub(super) fn join_or_lead(
        loading: &mut HashMap<UserId, Flight>,
        user_id: UserId,
        priority: LoadPriority,
    ) -> Self {
        match loading.get_mut(&user_id) {
            Some(flight) => {
                let receiver = flight.done.clone();
                if priority == LoadPriority::Urgent && flight.priority == LoadPriority::Background {
                    flight.priority = LoadPriority::Urgent;
                    Miss::Expedite(receiver)
                } else {
                    Miss::Wait(receiver)
                }
            }
            None => {
                let (sender, done) = watch::channel(());
                loading.insert(user_id, Flight { done, priority });
                Miss::Load(sender)
            }
        }
    }
}

/// Ends a single-flight load: removes the loading mark, then (by dropping
/// the sender) wakes the waiters.
struct LoadGuard<'a> {
    cache: &'a Cache,
    user_id: UserId,
    _sender: watch::Sender<()>,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        let mut partition = self.cache.partition(self.user_id).lock();
        partition.loading.remove(&self.user_id);
        partition.stale_loads.remove(&self.user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::new(5).unwrap()
    }

    #[test]
    fn an_urgent_request_raises_a_background_load_once() {
        let mut loading = HashMap::new();
        let leader = Miss::join_or_lead(&mut loading, user(), LoadPriority::Background);
        assert!(matches!(leader, Miss::Load(_)));
        // Another background load only waits.
        let background = Miss::join_or_lead(&mut loading, user(), LoadPriority::Background);
        assert!(matches!(background, Miss::Wait(_)));
        // The first request raises it; the next only waits.
        let first = Miss::join_or_lead(&mut loading, user(), LoadPriority::Urgent);
        assert!(matches!(first, Miss::Expedite(_)));
        let second = Miss::join_or_lead(&mut loading, user(), LoadPriority::Urgent);
        assert!(matches!(second, Miss::Wait(_)));
    }

    #[test]
    fn a_request_joining_an_urgent_load_only_waits() {
        let mut loading = HashMap::new();
        let leader = Miss::join_or_lead(&mut loading, user(), LoadPriority::Urgent);
        assert!(matches!(leader, Miss::Load(_)));
        let joined = Miss::join_or_lead(&mut loading, user(), LoadPriority::Urgent);
        assert!(matches!(joined, Miss::Wait(_)));
        let background = Miss::join_or_lead(&mut loading, user(), LoadPriority::Background);
        assert!(matches!(background, Miss::Wait(_)));
    }
}
