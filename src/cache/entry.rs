//! One user's cached states, kept together behind one LRU entry, and the
//! transaction through which a request changes them.

use crate::clock::{VersionClock, unix_millis};
use crate::ids::{ChannelId, MessageId, UserId};
use crate::read_state::ReadState;
use crate::store::{RowWrite, UserRows};

/// A read state as a response carries it: small and `Copy`, so building a
/// response allocates nothing per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateView {
    pub channel_id: ChannelId,
    pub last_message_id: MessageId,
    pub mention_count: u32,
    pub last_pin_timestamp_ms: u64,
    pub updated_at_ms: u64,
    pub version: u64,
}

impl StateView {
    /// Returns the view of a pair with no state: all zeros.
    pub fn empty(channel_id: ChannelId) -> Self {
        Self::of(&ReadState::empty(channel_id))
    }

    fn of(state: &ReadState) -> Self {
        Self {
            channel_id: state.channel_id,
            last_message_id: state.last_message_id,
            mention_count: state.mention_count(),
            last_pin_timestamp_ms: state.last_pin_timestamp_ms,
            updated_at_ms: state.updated_at_ms,
            version: state.version,
        }
    }
}

/// A cached state and its write-behind marks.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub state: ReadState,
    /// Changed since it was last written to the store.
    pub dirty: bool,
    /// Deleted; kept until the deletion is written, then dropped.
    pub deleted: bool,
}

/// All cached states of one user.
#[derive(Debug, Default)]
pub(super) struct UserEntry {
    /// Sorted by channel id.
    pub slots: Vec<Slot>,
    /// The highest version handed out to (or loaded for) this user.
    pub version: u64,
    /// In a flush timer bucket.
    pub scheduled: bool,
    /// An eviction write of this entry is in flight.
    pub writing: bool,
}

impl UserEntry {
    /// Builds the entry of a user loaded from the store.
    pub fn loaded(rows: UserRows) -> Self {
        let UserRows {
            mut states,
            version,
        } = rows;
        states.sort_unstable_by_key(|state| state.channel_id);
        let version = states
            .iter()
            .map(|state| state.version)
            .fold(version, u64::max);
        let slots = states
            .into_iter()
            .map(|state| Slot {
                state,
                dirty: false,
                deleted: false,
            })
            .collect();
        Self {
            slots,
            version,
            scheduled: false,
            writing: false,
        }
    }

    /// Returns the cache capacity this user takes: its states, and one for
    /// a user with none.
    pub fn weight(&self) -> usize {
        self.slots.len().max(1)
    }

    /// Returns the number of dirty states.
    pub fn dirty_count(&self) -> usize {
        self.slots.iter().filter(|slot| slot.dirty).count()
    }

    /// Returns the rows a flush of this entry writes.
    pub fn dirty_rows(&self, user_id: UserId, rows: &mut Vec<RowWrite>) {
        rows.extend(
            self.slots
                .iter()
                .filter(|slot| slot.dirty)
                .map(|slot| RowWrite {
                    user_id,
                    state: slot.state.clone(),
                    deleted: slot.deleted,
                }),
        );
    }

    /// Clears the dirty mark of `channel_id` if it still holds `version`;
    /// drops the slot if that write was its deletion. Returns whether the
    /// mark was cleared.
    pub fn mark_written(&mut self, channel_id: ChannelId, version: u64) -> bool {
        let Ok(index) = self.find(channel_id) else {
            return false;
        };
        let slot = &mut self.slots[index];
        if !slot.dirty || slot.state.version != version {
            return false;
        }
        slot.dirty = false;
        if slot.deleted {
            self.slots.remove(index);
        }
        true
    }

    /// Returns the live state of `channel_id`, or zeros.
    pub fn view(&self, channel_id: ChannelId) -> StateView {
        match self.find(channel_id) {
            Ok(index) if !self.slots[index].deleted => StateView::of(&self.slots[index].state),
            _ => StateView::empty(channel_id),
        }
    }

    /// Appends the live states changed after `since_version` (all when 0).
    pub fn views_since(&self, since_version: u64, out: &mut Vec<StateView>) {
        out.extend(
            self.slots
                .iter()
                .filter(|slot| !slot.deleted && slot.state.version > since_version)
                .map(|slot| StateView::of(&slot.state)),
        );
    }

    fn find(&self, channel_id: ChannelId) -> Result<usize, usize> {
        self.slots
            .binary_search_by_key(&channel_id, |slot| slot.state.channel_id)
    }
}

/// The changes one request makes to one user's states. All changes of a
/// transaction share one version.
pub struct UserTxn<'a> {
    entry: &'a mut UserEntry,
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
        entry: &'a mut UserEntry,
        clock: &'a VersionClock,
        tracked_cap: usize,
    ) -> Self {
        Self {
            entry,
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
        if self.entry.slots[index].deleted {
            return StateView::empty(channel_id);
        }
        let (version, now_ms) = self.stamp();
        let slot = &mut self.entry.slots[index];
        slot.state = ReadState::empty(channel_id);
        slot.state.version = version;
        slot.state.updated_at_ms = now_ms;
        slot.deleted = true;
        self.changed_states += 1;
        if !slot.dirty {
            slot.dirty = true;
            self.newly_dirty += 1;
        }
        StateView {
            version,
            updated_at_ms: now_ms,
            ..StateView::empty(channel_id)
        }
    }

    /// Applies `change` to the state of `channel_id` (zeros when there is
    /// none); a change that changes nothing leaves no trace.
    fn update(
        &mut self,
        channel_id: ChannelId,
        change: impl FnOnce(&mut ReadState, usize) -> bool,
    ) -> StateView {
        let cap = self.tracked_cap;
        match self.entry.find(channel_id) {
            Ok(index) if !self.entry.slots[index].deleted => {
                if !change(&mut self.entry.slots[index].state, cap) {
                    return StateView::of(&self.entry.slots[index].state);
                }
                self.finish_change(index)
            }
            found => {
                let mut state = ReadState::empty(channel_id);
                if !change(&mut state, cap) {
                    return StateView::of(&state);
                }
                let index = match found {
                    Ok(index) => {
                        // Revives a deleted state whose deletion is not yet written.
                        self.entry.slots[index].state = state;
                        self.entry.slots[index].deleted = false;
                        index
                    }
                    Err(index) => {
                        let slot = Slot {
                            state,
                            dirty: false,
                            deleted: false,
                        };
                        self.entry.slots.insert(index, slot);
                        index
                    }
                };
                self.finish_change(index)
            }
        }
    }

    fn finish_change(&mut self, index: usize) -> StateView {
        let (version, now_ms) = self.stamp();
        let slot = &mut self.entry.slots[index];
        slot.state.version = version;
        slot.state.updated_at_ms = now_ms;
        self.changed_states += 1;
        if !slot.dirty {
            slot.dirty = true;
            self.newly_dirty += 1;
        }
        StateView::of(&slot.state)
    }

    /// Returns the transaction's version and time, assigning them on the
    /// first change.
    fn stamp(&mut self) -> (u64, u64) {
        if let Some(version) = self.version {
            return (version, self.now_ms);
        }
        let version = self.clock.next_version(self.entry.version);
        self.entry.version = version;
        self.version = Some(version);
        self.now_ms = unix_millis();
        (version, self.now_ms)
    }
}
