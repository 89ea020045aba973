//! The transaction through which a request changes one user's states: all
//! its changes share one version, and each applied change is told to the
//! change hook (see [`ChangeHook`]) while the user's partition is still
//! locked, so a listener sees a user's changes in their version order.

use super::entry::{StateView, UserEntry};
use crate::clock::{VersionClock, unix_micros};
use crate::ids::{ChannelId, MessageId, UserId};
use crate::read_state::ReadState;

/// One change just applied to a user's state.
#[derive(Debug, Clone, Copy)]
pub struct AppliedChange<'a> {
    pub user_id: UserId,
    /// The resulting state, with the change's version (zeros and the
    /// deletion's version for a deletion).
    pub view: &'a StateView,
    pub deleted: bool,
}

/// Hears every change the cache applies, deletions included, in each user's
/// version order. It is called under the user's partition lock: it must be
/// quick and never block or wait (hand the change to a bounded queue, say).
/// With no hook set, a change costs one branch more.
pub trait ChangeHook: Send + Sync {
    fn applied(&self, change: AppliedChange<'_>);
}

/// The changes one request makes to one user's states. All changes of a
/// transaction share one version.
pub struct UserTxn<'a> {
    user_id: UserId,
    entry: &'a mut UserEntry,
    /// Told of every change, in the user's version order (see [`ChangeHook`]).
    hook: Option<&'a dyn ChangeHook>,
    clock: &'a VersionClock,
    tracked_cap: usize,
    version: Option<u64>,
    now_ms: u64,
    /// States that became dirty (were clean before).
    pub(super) newly_dirty: usize,
    /// States changed (each state at most once per change).
    pub(super) changed_states: usize,
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
            hook,
            clock,
            tracked_cap,
            version: None,
            now_ms: 0,
            newly_dirty: 0,
            changed_states: 0,
        }
    }

    /// Returns whether any state changed.
    pub(super) fn changed(&self) -> bool {
        self.version.is_some()
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

    /// Tells the change hook, if one is set, of a change just applied.
    fn publish(&self, view: &StateView, deleted: bool) {
        if let Some(hook) = self.hook {
            hook.applied(AppliedChange {
                user_id: self.user_id,
                view,
                deleted,
            });
        }
    }

    /// Returns the transaction's version and time, assigning them on the
    /// first change.
    fn stamp(&mut self) -> (u64, u64) {
        if let Some(version) = self.version {
            return (version, self.now_ms);
        }
        let now_micros = unix_micros();
        let version = self.clock.next_version_at(self.entry.version, now_micros);
        self.entry.version = version;
        self.version = Some(version);
        self.now_ms = now_micros / 1_000;
        (version, self.now_ms)
    }
}
