//! Mentions of users who are not cached, held until their next load.
//!
//! A message that mentions many users is sent on the chat's hot path, and
//! most of the users it mentions are cold. Loading each of them before the
//! fan-out can answer makes the sender wait on the store's slowest read.
//! When the caller does not need the resulting states back
//! (`AddMentionsRequest.omit_read_states`), a mention of a user who is
//! neither cached nor evicting goes into that user's inbox in memory
//! instead, and the call returns at once.
//!
//! The inbox is merged into the user's states by the load that next brings
//! the user in, in the same lock hold that places the user in the LRU and
//! before any other change is applied to it; so the mentions apply in the
//! order they were accepted, ahead of every later call, exactly as if the
//! user had been loaded for them (ARCHITECTURE.md §1.2, the counting rule
//! included). A request for the user makes that load; otherwise the
//! flusher's deferred loader (`flush::deferred`) makes it in the background
//! soon after the mention arrives, and a merged state is due for its write
//! one flush delay after its first mention was accepted, as if it had been
//! applied then.
//!
//! Invariant: a user has an inbox only while it is neither in the LRU nor
//! in the eviction map. Deferred mentions count against the dirty backlog,
//! and one user's inbox holds at most [`MAX_PER_USER`] of them; past that,
//! the mention is applied the ordinary way, with a load.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{Cache, CacheError, Miss, Partition, Use, UserTxn};
use crate::clock::unix_micros;
use crate::ids::{ChannelId, MessageId, UserId};
use crate::store::{LoadPriority, Store};

/// Deferred mentions one user may hold before mentions of it load it.
pub const MAX_PER_USER: usize = 64;

/// The deferred mentions of one user.
#[derive(Debug)]
pub(super) struct Inbox {
    /// (channel, message), in the order they were accepted, without
    /// duplicates.
    mentions: Vec<(ChannelId, MessageId)>,
    /// When the first of them was accepted: the merged state is due for
    /// its write one flush delay after this.
    since: Instant,
}

impl Inbox {
    /// Applies the mentions, in the order they were accepted, each with a
    /// version of its own as the call that sent it would have had; returns
    /// how many there were.
    pub(super) fn apply_to(self, txn: &mut UserTxn<'_>) -> usize {
        let merged = self.mentions.len();
        for (channel_id, message_id) in self.mentions {
            txn.next_call();
            txn.add_mention(channel_id, message_id);
        }
        merged
    }
}

/// What became of a mention offered to [`Cache::defer_mention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The user was in memory: the mention was applied at once.
    Applied,
    /// The mention waits in the user's inbox (or was already there).
    Deferred,
    /// The user's inbox is full: apply the mention with a load.
    Full,
}

impl Cache {
    /// Counts a mention of `user_id` without waiting for a load: applied at
    /// once if the user is in memory, otherwise kept in the user's inbox
    /// until its next load. Refused while the dirty backlog is full or the
    /// version lease has run out.
    pub fn defer_mention(
        &self,
        user_id: UserId,
        channel_id: ChannelId,
        message_id: MessageId,
    ) -> Result<Deferral, CacheError> {
        self.check_backlog()?;
        let mut guard = self.partition(user_id).lock();
        let partition = &mut *guard;
        self.check_served(user_id)?;
        self.clock.check_lease_at(unix_micros())?;
        let apply = |txn: &mut UserTxn<'_>| {
            txn.add_mention(channel_id, message_id);
        };
        if self
            .try_apply(partition, user_id, apply, Use::Uncounted)
            .is_ok()
        {
            return Ok(Deferral::Applied);
        }
        let inbox = partition.inbox.entry(user_id).or_insert_with(|| Inbox {
            mentions: Vec::new(),
            since: Instant::now(),
        });
        if inbox.mentions.is_empty() {
            partition.inbox_ready.push(user_id);
        }
        let mention = (channel_id, message_id);
        if inbox.mentions.contains(&mention) {
            return Ok(Deferral::Deferred);
        }
        if inbox.mentions.len() >= MAX_PER_USER {
            return Ok(Deferral::Full);
        }
        inbox.mentions.push(mention);
        partition.stats.deferred_mentions += 1;
        self.deferred.fetch_add(1, Ordering::Relaxed);
        self.inbox_ready.notify_one();
        Ok(Deferral::Deferred)
    }

    /// Applies the user's deferred mentions to its states, which the caller
    /// has just placed in the LRU. Runs in the lock hold that placed it.
    pub(super) fn merge_inbox(&self, partition: &mut Partition, user_id: UserId) {
        let Some(inbox) = partition.inbox.remove(&user_id) else {
            return;
        };
        let merged = inbox.mentions.len();
        let since = inbox.since;
        let apply = move |txn: &mut UserTxn<'_>| {
            inbox.apply_to(txn);
        };
        // The user is in the LRU (the caller placed it), so this applies.
        let applied = self.try_apply_since(partition, user_id, apply, Use::AfterLoad, Some(since));
        debug_assert!(
            applied.is_ok(),
            "the inbox's user was placed before its merge"
        );
        self.deferred.fetch_sub(merged, Ordering::Relaxed);
    }

    /// Loads the user if it has deferred mentions, merging them (at
    /// background priority; a request's load of the user merges them as
    /// well, and this one then only waits for it).
    pub async fn load_deferred(
        &self,
        store: &dyn Store,
        user_id: UserId,
    ) -> Result<(), CacheError> {
        loop {
            let next = {
                let mut partition = self.partition(user_id).lock();
                if !partition.inbox.contains_key(&user_id) {
                    return Ok(());
                }
                Miss::join_or_lead(&mut partition.loading, user_id, LoadPriority::Background)
            };
            match next {
                Miss::Load(sender) => {
                    let nothing = |_: &mut UserTxn<'_>| {};
                    let _ = self
                        .load(store, user_id, LoadPriority::Background, sender, nothing)
                        .await?;
                    return Ok(());
                }
                // A background load never raises another.
                Miss::Wait(mut receiver) | Miss::Expedite(mut receiver) => {
                    let _ = receiver.changed().await;
                }
            }
        }
    }

    /// Returns whether the user has deferred mentions waiting.
    pub fn has_deferred(&self, user_id: UserId) -> bool {
        self.partition(user_id).lock().inbox.contains_key(&user_id)
    }

    /// Returns the number of deferred mentions waiting, all users together.
    pub fn deferred_mentions(&self) -> usize {
        self.deferred.load(Ordering::Relaxed)
    }

    /// Takes the users whose inbox appeared since the last call (or was put
    /// back by [`Cache::requeue_deferred`]): the ones that need a load.
    pub fn take_deferred_users(&self, users: &mut Vec<UserId>) {
        for partition in self.partitions.iter() {
            let mut partition = partition.lock();
            let partition = &mut *partition;
            users.extend(
                partition
                    .inbox_ready
                    .drain(..)
                    .filter(|user_id| partition.inbox.contains_key(user_id)),
            );
        }
    }

    /// Puts a user whose load failed back among those that need one.
    pub fn requeue_deferred(&self, user_id: UserId) {
        let mut partition = self.partition(user_id).lock();
        if partition.inbox.contains_key(&user_id) {
            partition.inbox_ready.push(user_id);
        }
    }

    /// Appends every deferred mention, user by user in the order each was
    /// accepted, to `out` (a shutdown that cannot merge them spills them).
    pub fn deferred_snapshot(&self, out: &mut Vec<(UserId, ChannelId, MessageId)>) {
        for partition in self.partitions.iter() {
            let partition = partition.lock();
            for (user_id, inbox) in partition.inbox.iter() {
                out.extend(
                    inbox
                        .mentions
                        .iter()
                        .map(|(channel_id, message_id)| (*user_id, *channel_id, *message_id)),
                );
            }
        }
    }

    /// Waits until a mention was deferred (a wake-up may be spurious).
    pub async fn deferred_ready(&self) {
        self.inbox_ready.notified().await;
    }
}

#[cfg(test)]
#[path = "inbox_tests.rs"]
mod tests;
