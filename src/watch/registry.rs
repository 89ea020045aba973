//! Who watches which user: the engine's change hook, and the one place a
//! subscription starts, falls behind, is caught up and ends.
//!
//! Subscriptions are kept by user in sharded maps. The hook is asked, under
//! the user's partition lock, whether anyone listens to a transaction's
//! user, and then told its changes, which it queues on each subscriber's
//! [`Outbox`] (or, when an outbox is full, marks that subscription as
//! fallen behind). A subscription starts, and is caught up again after
//! falling behind, in [`Watchers::subscribe`], which a stream calls under
//! the same partition lock, right after reading the user's delta: so a
//! change is either in the delta or queued after it, never both, never
//! neither (ARCHITECTURE.md §1.3). Lock order: the partition, then a shard,
//! then an outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::metrics::WatchMetrics;
use super::outbox::{Changes, EndReason, Event, Outbox};
use crate::cache::{AppliedChange, ChangeHook, Delta};
use crate::ids::UserId;

/// Shards of the subscription maps (a power of two).
const SHARDS: usize = 64;

/// One stream's subscription to one user.
#[derive(Debug)]
struct Subscription {
    outbox: Arc<Outbox>,
    /// The version of the last catch-up or change queued.
    last_version: u64,
    /// Events were dropped since `last_version`: the stream catches up.
    behind: bool,
}

/// The subscriptions of some users, by user.
type Shard = Mutex<HashMap<UserId, Vec<Subscription>>>;

/// Every subscription of this instance.
pub struct Watchers {
    shards: Box<[Shard]>,
    /// Subscriptions in all shards: while 0, the hook listens to nobody
    /// without looking.
    subscriptions: AtomicUsize,
    metrics: WatchMetrics,
}

impl Watchers {
    /// Returns an empty registry that counts into `metrics`.
    pub fn new(metrics: WatchMetrics) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            subscriptions: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Returns the registry's metrics, which its streams share.
    pub fn metrics(&self) -> &WatchMetrics {
        &self.metrics
    }

    fn shard(&self, user_id: UserId) -> &Shard {
        // Fibonacci hashing: snowflake ids' low bits are a sequence number.
        let hash = user_id.get().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(hash >> (64 - SHARDS.trailing_zeros())) as usize]
    }

    /// Starts `outbox`'s subscription to the user with `delta`, or catches
    /// it up again, and queues the delta. Call it under the user's
    /// partition lock, with the delta read under that same lock.
    pub fn subscribe(&self, user_id: UserId, outbox: &Arc<Outbox>, delta: Delta) {
        let version = delta.version;
        if delta.reset {
            self.metrics.resets.increment(1);
        }
        let mut shard = self.shard(user_id).lock();
        let subscriptions = shard.entry(user_id).or_default();
        match subscriptions.iter_mut().find(|sub| sub.outbox.is(outbox)) {
            Some(subscription) => {
                subscription.last_version = version;
                subscription.behind = false;
            }
            None => {
                subscriptions.push(Subscription {
                    outbox: Arc::clone(outbox),
                    last_version: version,
                    behind: false,
                });
                self.subscriptions.fetch_add(1, Ordering::Relaxed);
                self.metrics.subscriptions.increment(1.0);
            }
        }
        outbox.push(Event::CatchUp { user_id, delta });
    }

    /// Ends `outbox`'s subscription to the user, if any; returns the last
    /// version it queued.
    pub fn unsubscribe(&self, user_id: UserId, outbox: &Outbox) -> Option<u64> {
        let mut shard = self.shard(user_id).lock();
        let subscriptions = shard.get_mut(&user_id)?;
        let index = subscriptions.iter().position(|sub| sub.outbox.is(outbox))?;
        let removed = subscriptions.swap_remove(index);
        if subscriptions.is_empty() {
            shard.remove(&user_id);
        }
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        self.metrics.subscriptions.decrement(1.0);
        Some(removed.last_version)
    }

    /// Ends `outbox`'s subscription to the user, if any, and queues its end
    /// with `reason` and the last version it queued.
    pub fn end(&self, user_id: UserId, outbox: &Outbox, reason: EndReason) {
        if let Some(resume_version) = self.unsubscribe(user_id, outbox) {
            self.metrics.ended(reason);
            outbox.push(Event::Ended {
                user_id,
                reason,
                resume_version,
            });
        }
    }

    /// Ends every subscription to the selected users (their slot moved to
    /// another instance), queuing each end after the user's last change.
    pub fn end_selected(&self, selects: &dyn Fn(UserId) -> bool, reason: EndReason) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|&user_id, subscriptions| {
                if !selects(user_id) {
                    return true;
                }
                for subscription in subscriptions.drain(..) {
                    self.subscriptions.fetch_sub(1, Ordering::Relaxed);
                    self.metrics.subscriptions.decrement(1.0);
                    self.metrics.ended(reason);
                    subscription.outbox.push(Event::Ended {
                        user_id,
                        reason,
                        resume_version: subscription.last_version,
                    });
                }
                false
            });
        }
    }

    /// Returns the version `outbox` last queued for the user, if it is
    /// subscribed.
    pub fn last_version(&self, user_id: UserId, outbox: &Outbox) -> Option<u64> {
        let shard = self.shard(user_id).lock();
        shard
            .get(&user_id)?
            .iter()
            .find(|sub| sub.outbox.is(outbox))
            .map(|sub| sub.last_version)
    }
}

impl ChangeHook for Watchers {
    #[inline]
    fn listens(&self, user_id: UserId) -> bool {
        self.subscriptions.load(Ordering::Relaxed) > 0
            && self.shard(user_id).lock().contains_key(&user_id)
    }

    fn applied(&self, user_id: UserId, changes: &[AppliedChange]) {
        let applied_at = Instant::now();
        let changes = match changes {
            [one] => Changes::One(*one),
            many => Changes::Many(many.into()),
        };
        let version = changes.version();
        let mut shard = self.shard(user_id).lock();
        let Some(subscriptions) = shard.get_mut(&user_id) else {
            return;
        };
        for subscription in subscriptions.iter_mut().filter(|sub| !sub.behind) {
            if subscription
                .outbox
                .try_push_changes(user_id, &changes, applied_at)
            {
                subscription.last_version = version;
            } else {
                subscription.behind = true;
                self.metrics.fell_behind.increment(1);
                subscription.outbox.push_lagging(user_id);
            }
        }
    }

    fn released(&self, selects: &dyn Fn(UserId) -> bool) {
        self.end_selected(selects, EndReason::Moved);
    }
}
