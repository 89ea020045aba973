//! One stream's queue of events: bounded for the write path, which never
//! waits on it, and drained by the stream's task.
//!
//! A transaction's changes are pushed only if the queue has room
//! ([`Outbox::try_push_changes`]); when it has none, the subscription falls
//! behind: the write path drops its events from then on and names the user
//! in the lagging list, and the stream's task catches the user up again
//! from the last version it queued (see `registry`). Catch-ups and the end
//! of a subscription are always queued: the stream's task makes them
//! itself, one subscription at a time, and starts catch-ups only while the
//! queue has room.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cache::{AppliedChange, Delta};
use crate::ids::UserId;
use crate::metrics::label_values;

/// The changes of one transaction, shared by the subscribers of its user.
#[derive(Debug, Clone)]
pub enum Changes {
    One(AppliedChange),
    Many(Arc<[AppliedChange]>),
}

impl Changes {
    /// Returns the changes, in order.
    pub fn as_slice(&self) -> &[AppliedChange] {
        match self {
            Changes::One(change) => std::slice::from_ref(change),
            Changes::Many(changes) => changes,
        }
    }

    /// Returns the transaction's last (highest) version.
    pub fn version(&self) -> u64 {
        self.as_slice()
            .last()
            .map_or(0, |change| change.view.version)
    }
}

label_values! {
    /// Why a subscription ended: the `reason` label of its metric (its
    /// counter's index).
    pub enum EndReason {
        /// The user's slot moved to another instance.
        Moved => "moved",
        /// This instance does not serve the user's slot.
        NotServed => "not_served",
        /// This instance is shutting down.
        ShuttingDown => "shutting_down",
        /// The user could not be loaded.
        Unavailable => "unavailable",
    }
}

/// One queued event of one user.
#[derive(Debug, Clone)]
pub enum Event {
    /// The user's state since the subscription's version (or the last one
    /// queued, after the subscription fell behind).
    CatchUp { user_id: UserId, delta: Delta },
    /// A transaction's changes, applied at `applied_at`.
    Changes {
        user_id: UserId,
        changes: Changes,
        applied_at: Instant,
    },
    /// No more events of this user on this stream.
    Ended {
        user_id: UserId,
        reason: EndReason,
        resume_version: u64,
    },
}

/// What the stream's task takes from its outbox at once.
#[derive(Debug, Default)]
pub struct Taken {
    pub events: Vec<Event>,
    /// Users whose events were dropped since the last take: to be caught
    /// up again.
    pub lagging: Vec<UserId>,
}

/// One stream's queue (its identity is its address: see
/// [`Outbox::is`]).
#[derive(Debug)]
pub struct Outbox {
    /// Changes queued past this many make a subscription fall behind.
    capacity: usize,
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Changes queued (a catch-up or an end counts as one).
    weight: usize,
    lagging: Vec<UserId>,
}

impl Outbox {
    /// Returns an empty outbox that holds at most `capacity` changes
    /// before its subscriptions fall behind.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        })
    }

    /// Returns whether `other` is this outbox.
    pub fn is(&self, other: &Outbox) -> bool {
        std::ptr::eq(self, other)
    }

    /// Queues a transaction's changes if there is room; returns whether it
    /// did. Called on the write path, under the user's partition lock.
    pub fn try_push_changes(
        &self,
        user_id: UserId,
        changes: &Changes,
        applied_at: Instant,
    ) -> bool {
        let count = changes.as_slice().len();
        {
            let mut queue = self.queue.lock();
            if queue.weight + count > self.capacity {
                return false;
            }
            queue.weight += count;
            queue.events.push_back(Event::Changes {
                user_id,
                changes: changes.clone(),
                applied_at,
            });
        }
        self.ready.notify_one();
        true
    }

    /// Names `user_id` as fallen behind: its task catches it up.
    pub fn push_lagging(&self, user_id: UserId) {
        self.queue.lock().lagging.push(user_id);
        self.ready.notify_one();
    }

    /// Queues a catch-up or an end, whatever the room.
    pub fn push(&self, event: Event) {
        {
            let mut queue = self.queue.lock();
            queue.weight += 1;
            queue.events.push_back(event);
        }
        self.ready.notify_one();
    }

    /// Returns whether there is room for more catch-ups (the queue is
    /// below half its capacity).
    pub fn has_room(&self) -> bool {
        self.queue.lock().weight < self.capacity.div_ceil(2)
    }

    /// Takes up to `max_events` queued events, and the lagging users.
    pub fn take(&self, max_events: usize, into: &mut Taken) {
        let mut queue = self.queue.lock();
        let count = queue.events.len().min(max_events);
        let mut weight = 0;
        into.events
            .extend(queue.events.drain(..count).inspect(|event| {
                weight += match event {
                    Event::Changes { changes, .. } => changes.as_slice().len(),
                    _ => 1,
                };
            }));
        queue.weight -= weight;
        into.lagging.append(&mut queue.lagging);
    }

    /// Returns whether events or lagging users wait.
    pub fn is_pending(&self) -> bool {
        let queue = self.queue.lock();
        !queue.events.is_empty() || !queue.lagging.is_empty()
    }

    /// Waits until something is pushed (returns at once if something was
    /// pushed since the last wait).
    pub async fn pushed(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::StateView;
    use crate::ids::ChannelId;

    fn change(version: u64) -> Changes {
        let mut view = StateView::empty(ChannelId::new(1).unwrap());
        view.version = version;
        Changes::One(AppliedChange {
            view,
            deleted: false,
        })
    }

    #[test]
    fn changes_past_the_capacity_are_refused_and_catch_ups_never() {
        let user = UserId::new(1).unwrap();
        let outbox = Outbox::new(2);
        assert!(outbox.try_push_changes(user, &change(1), Instant::now()));
        assert!(outbox.try_push_changes(user, &change(2), Instant::now()));
        assert!(!outbox.try_push_changes(user, &change(3), Instant::now()));
        assert!(!outbox.has_room());
        outbox.push(Event::Ended {
            user_id: user,
            reason: EndReason::Moved,
            resume_version: 2,
        });
        outbox.push_lagging(user);
        let mut taken = Taken::default();
        outbox.take(2, &mut taken);
        assert_eq!(taken.events.len(), 2);
        assert_eq!(taken.lagging, vec![user]);
        assert!(outbox.is_pending(), "the end is still queued");
        assert!(outbox.try_push_changes(user, &change(4), Instant::now()));
        let mut rest = Taken::default();
        outbox.take(10, &mut rest);
        assert_eq!(rest.events.len(), 2);
        assert!(!outbox.is_pending());
        assert!(outbox.has_room());
    }
}
