//! The transaction through which a request changes one user's states: all
//! the changes of one call share one version (a merge of deferred mentions
//! applies several calls, each with its own; see [`UserTxn::next_call`]),
//! and they are told together to the change hook (see [`ChangeHook`]) when
//! the transaction ends, while the user's partition is still locked, so a
//! listener sees a user's changes in their version order. A transaction
//! also answers deltas (see [`UserTxn::delta`]).

use super::entry::{StateView, UserEntry};
use crate::clock::{VersionClock, unix_micros};
use crate::ids::{ChannelId, MessageId, UserId};
use crate::read_state::ReadState;
use crate::store::Tombstone;

/// One change applied to a user's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedChange {
    /// The resulting state, with the change's version (zeros and the
    /// deletion's version for a deletion).
    pub view: StateView,
    pub deleted: bool,
}

/// Hears every change the cache applies, deletions included, in each user's
/// version order, one transaction at a time. Both methods are called under
/// the user's partition lock: they must be quick and never block or wait
/// (hand the changes to a bounded queue, say). A transaction of a user that
/// nobody listens to costs one call of [`ChangeHook::listens`].
pub trait ChangeHook: Send + Sync {
    /// Returns whether anyone listens to the user's changes: asked once per
    /// transaction, before it changes anything.
    fn listens(&self, user_id: UserId) -> bool;

    /// Tells the changes of one transaction, in their version order, once
    /// it ends (one call's changes share one version).
    fn applied(&self, user_id: UserId, changes: &[AppliedChange]);

    /// Tells that the selected users are no longer served here (their
    /// slot moved), after their last change; called by the engine once it
    /// has evicted them.
    fn released(&self, _selects: &dyn Fn(UserId) -> bool) {}
}

/// What decides whether a delta can be proved complete (ARCHITECTURE.md
/// §1.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaLimits {
    /// Deletion markers below this version may be gone (the store's
    /// deletion horizon).
    pub horizon: u64,
    /// Versions at or below this one may have been handed out by an earlier
    /// holder of the user (a previous run of this instance, or the previous
    /// owner of its slot), and lost in its crash.
    pub inherited_up_to: u64,
}

/// A user's states since a version: what `GetUserReadStates` answers and a
/// subscription catches up with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// The states changed after the version; every live state for a full
    /// answer or a reset.
    pub states: Vec<StateView>,
    /// The pairs deleted after the version (none for a full answer or a
    /// reset).
    pub deleted: Vec<Tombstone>,
    /// The user's current version.
    pub version: u64,
    /// The difference could not be proved complete: `states` is every
    /// state, and replaces the copy.
    pub reset: bool,
}

/// What a transaction did, for the cache's accounting.
#[derive(Debug, Clone, Copy)]
pub(super) struct TxnCounts {
    pub(super) changed: bool,
    /// States that became dirty (were clean before).
    pub(super) newly_dirty: usize,
    /// States changed (each state at most once per change).
    pub(super) changed_states: usize,
}

/// The changes one request makes to one user's states. All changes of one
/// call share one version.
pub struct UserTxn<'a> {
    user_id: UserId,
    entry: &'a mut UserEntry,
    /// Told of the transaction's changes when it ends, if it listens to
    /// this user (see [`ChangeHook`]).
    hook: Option<&'a dyn ChangeHook>,
    /// The changes the hook is to hear (empty without a hook).
    heard: Vec<AppliedChange>,
    clock: &'a VersionClock,
    tracked_cap: usize,
    /// The last version the transaction handed out.
    version: Option<u64>,
    /// `version` is the current call's (see [`UserTxn::next_call`]).
    stamped: bool,
    now_ms: u64,
    newly_dirty: usize,
    changed_states: usize,
}

impl<'a> UserTxn<'a> {
    pub(super) fn new(
        user_id: UserId,
        entry: &'a mut UserEntry,
        clock: &'a VersionClock,
        tracked_cap: usize,
        hook: Option<&'a dyn ChangeHook>,
    ) -> Self {
        Self {
            user_id,
            entry,
            hook: hook.filter(|hook| hook.listens(user_id)),
            heard: Vec::new(),
            clock,
            tracked_cap,
            version: None,
            stamped: false,
            now_ms: 0,
            newly_dirty: 0,
            changed_states: 0,
        }
    }

    /// Starts the changes of another call: the next change gets a version
    /// of its own, as it would in a transaction of its own.
    pub(super) fn next_call(&mut self) {
        self.stamped = false;
    }

    /// Returns whether any state changed.
    pub(super) fn changed(&self) -> bool {
        self.version.is_some()
    }

    /// Ends the transaction: tells the hook its changes, and returns its
    /// counts. Call it before the user's partition lock is released.
    pub(super) fn finish(self) -> TxnCounts {
        if let Some(hook) = self.hook
            && !self.heard.is_empty()
        {
            hook.applied(self.user_id, &self.heard);
        }
        TxnCounts {
            changed: self.changed(),
            newly_dirty: self.newly_dirty,
            changed_states: self.changed_states,
        }
    }

    /// Acknowledges `message_id` (see [`ReadState::ack`]).
    pub fn ack(&mut self, channel_id: ChannelId, message_id: MessageId) -> StateView {
        self.update(channel_id, |state, _| state.ack(message_id))
    }

    /// Marks as unread (see [`ReadState::manual_ack`]).
    pub fn manual_ack(
        &mut self,
        channel_id: ChannelId,
        message_id: MessageId,
        mention_count: u32,
    ) -> StateView {
        self.update(channel_id, |state, _| {
            state.manual_ack(message_id, mention_count)
        })
    }

    /// Counts a mention (see [`ReadState::add_mention`]).
    pub fn add_mention(&mut self, channel_id: ChannelId, message_id: MessageId) -> StateView {
        self.update(channel_id, |state, cap| state.add_mention(message_id, cap))
    }

    /// Un-counts a mention (see [`ReadState::remove_mention`]).
    pub fn remove_mention(&mut self, channel_id: ChannelId, message_id: MessageId) -> StateView {
        self.update(channel_id, |state, _| state.remove_mention(message_id))
    }

    /// Records seen pins (see [`ReadState::ack_pins`]).
    pub fn ack_pins(&mut self, channel_id: ChannelId, pin_timestamp_ms: u64) -> StateView {
        self.update(channel_id, |state, _| state.ack_pins(pin_timestamp_ms))
    }

    /// Returns the live state of `channel_id`, or zeros.
    pub fn view(&self, channel_id: ChannelId) -> StateView {
        self.entry.view(channel_id)
    }

    /// Appends the live states changed after `since_version`.
    pub fn views_since(&self, since_version: u64, out: &mut Vec<StateView>) {
        self.entry.views_since(since_version, out);
    }

    /// Returns the user's current version.
    pub fn user_version(&self) -> u64 {
        self.entry.version
    }

    /// Returns the user's states since `since_version` (ARCHITECTURE.md
    /// §1.3): with 0, every live state; otherwise the states changed and
    /// the pairs deleted after it, or a reset (every live state) when that
    /// difference cannot be proved complete: `since_version` is ahead of
    /// the user's version, older than the deletion horizon, or one that an
    /// earlier holder may have handed out and that this one cannot show it
    /// holds (a change a crash lost, which the copy has and the service
    /// never will).
    pub fn delta(&self, since_version: u64, limits: DeltaLimits) -> Delta {
        let version = self.entry.version;
        // Held: in the store when the user was loaded, issued by this
        // holder (above what an earlier one may have issued), or still a
        // version of one of the user's states or deletions.
        let held = since_version <= self.entry.loaded_version
            || since_version > limits.inherited_up_to
            || since_version <= self.entry.highest_version_up_to(limits.inherited_up_to);
        let complete = since_version == version
            || (since_version < version && since_version >= limits.horizon && held);
        let mut delta = Delta {
            version,
            reset: since_version != 0 && !complete,
            ..Delta::default()
        };
        let since = if since_version == 0 || delta.reset {
            0
        } else {
            since_version
        };
        self.entry.views_since(since, &mut delta.states);
        if since > 0 {
            self.entry.deleted_since(since, &mut delta.deleted);
        }
        delta
    }

    /// Deletes the state of `channel_id`; returns how the pair now reads
    /// (zeros, with the version of the deletion when there was a state).
    pub fn delete(&mut self, channel_id: ChannelId) -> StateView {
        let Ok(index) = self.entry.find(channel_id) else {
            return StateView::empty(channel_id);
        };
        if self.entry.is_deleted(index) {
            return StateView::empty(channel_id);
        }
        let (version, now_ms) = self.stamp();
        let mut state = ReadState::empty(channel_id);
        state.version = version;
        state.updated_at_ms = now_ms;
        self.entry.put(index, state);
        self.entry.set_deleted(index, true);
        self.mark_changed(index);
        let view = StateView {
            version,
            updated_at_ms: now_ms,
            ..StateView::empty(channel_id)
        };
        self.publish(&view, true);
        view
    }

    /// Applies `change` to the state of `channel_id` (zeros when there is
    /// none, or when it is deleted); a change that changes nothing leaves no
    /// trace.
    fn update(
        &mut self,
        channel_id: ChannelId,
        change: impl FnOnce(&mut ReadState, usize) -> bool,
    ) -> StateView {
        let cap = self.tracked_cap;
        let found = self.entry.find(channel_id);
        let live = matches!(found, Ok(index) if !self.entry.is_deleted(index));
        let mut state = match found {
            Ok(index) if live => self.entry.take(index),
            _ => ReadState::empty(channel_id),
        };
        let changed = change(&mut state, cap);
        if changed {
            let (version, now_ms) = self.stamp();
            state.version = version;
            state.updated_at_ms = now_ms;
        }
        let view = StateView::of(&state);
        let index = match found {
            Ok(index) if live => index,
            // A change that changes nothing leaves no slot behind.
            _ if !changed => return view,
            Ok(index) => {
                // Revives a deleted state whose deletion is not yet written.
                self.entry.set_deleted(index, false);
                index
            }
            Err(index) => {
                self.entry.insert_slot(index, channel_id);
                index
            }
        };
        self.entry.put(index, state);
        if changed {
            self.mark_changed(index);
            self.publish(&view, false);
        }
        view
    }

    fn mark_changed(&mut self, index: usize) {
        self.changed_states += 1;
        if self.entry.mark_dirty(index) {
            self.newly_dirty += 1;
        }
    }

    /// Keeps a change just applied for the hook, if it listens.
    #[inline]
    fn publish(&mut self, view: &StateView, deleted: bool) {
        if self.hook.is_some() {
            self.heard.push(AppliedChange {
                view: *view,
                deleted,
            });
        }
    }

    /// Returns the current call's version and time, assigning them on its
    /// first change.
    fn stamp(&mut self) -> (u64, u64) {
        if self.stamped
            && let Some(version) = self.version
        {
            return (version, self.now_ms);
        }
        let now_micros = unix_micros();
        let version = self.clock.next_version_at(self.entry.version, now_micros);
        self.entry.version = version;
        self.version = Some(version);
        self.stamped = true;
        self.now_ms = now_micros / 1_000;
        (version, self.now_ms)
    }
}
