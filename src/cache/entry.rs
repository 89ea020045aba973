//! One user's cached states, kept together behind one LRU entry (the
//! transaction through which a request changes them is in `txn`).
//!
//! Memory layout: a state is a 32-byte [`Slot`] (channel, last read message,
//! version, update time, with the write-behind flags in the time's unused top
//! bits), in one exactly-sized array per user. Pins and mentions, which most
//! states lack, live in a separate sorted list of [`Extra`]s, so the common
//! state pays nothing for them.

use crate::ids::{ChannelId, MessageId, UserId};
use crate::read_state::{Mentions, ReadState};
use crate::store::{RowWrite, Tombstone, UserRows};

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

    // Called from the transaction (`txn`), once per change: inlined
    // across the module boundary.
    #[inline]
    pub(super) fn of(state: &ReadState) -> Self {
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

/// Changed since it was last written to the store.
const DIRTY: u64 = 1 << 63;
/// Deleted: a tombstone, kept while the user is cached, so that a delta can
/// report the deletion (ARCHITECTURE.md §1.3); a later change revives it.
const DELETED: u64 = 1 << 62;
/// Has an [`Extra`] (a pin or mentions).
const HAS_EXTRA: u64 = 1 << 61;
/// The update time: Unix milliseconds fit 61 bits for the next 70 million years.
const TIME_MASK: u64 = HAS_EXTRA - 1;

/// A cached state in 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    channel_id: ChannelId,
    last_message_id: MessageId,
    version: u64,
    /// `updated_at_ms` in the low bits, the flags above [`TIME_MASK`].
    updated_and_flags: u64,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    fn has(&self, flag: u64) -> bool {
        self.updated_and_flags & flag != 0
    }

    fn set(&mut self, flag: u64, on: bool) {
        if on {
            self.updated_and_flags |= flag;
        } else {
            self.updated_and_flags &= !flag;
        }
    }

    fn updated_at_ms(&self) -> u64 {
        self.updated_and_flags & TIME_MASK
    }

    pub(super) fn is_dirty(&self) -> bool {
        self.has(DIRTY)
    }

    /// Returns the full state: this slot's fields with its extra's.
    fn with_extra(&self, last_pin_timestamp_ms: u64, mentions: Mentions) -> ReadState {
        ReadState {
            channel_id: self.channel_id,
            last_message_id: self.last_message_id,
            last_pin_timestamp_ms,
            updated_at_ms: self.updated_at_ms(),
            version: self.version,
            mentions,
        }
    }
}

/// The rarely present part of a state: its pin timestamp and mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Extra {
    channel_id: ChannelId,
    last_pin_timestamp_ms: u64,
    mentions: Mentions,
}

/// All cached states of one user.
#[derive(Debug, Default)]
pub(super) struct UserEntry {
    /// Sorted by channel id; capacity at most an eighth above the length.
    slots: Vec<Slot>,
    /// The extras of the slots flagged [`HAS_EXTRA`], sorted by channel id.
    extras: Vec<Extra>,
    /// The highest version handed out to (or loaded for) this user.
    pub version: u64,
    /// The user's version as the store had it when the entry was loaded:
    /// every change up to it was written, so a copy at or below it holds
    /// nothing a crash lost (see `UserTxn::delta`).
    pub loaded_version: u64,
    /// In a flush timer bucket.
    pub scheduled: bool,
    /// The bucket's tick, wrapped (while `scheduled`): an entry of the user
    /// in an earlier bucket is stale (see `write_behind`). Fits in the
    /// struct's padding.
    pub due_tick: u32,
    /// An eviction write of this entry is in flight.
    pub writing: bool,
}

impl UserEntry {
    /// Builds the entry of a user loaded from the store: its live states,
    /// and its deletion markers as tombstones.
    pub fn loaded(rows: UserRows) -> Self {
        let UserRows {
            mut states,
            mut deleted,
            version,
        } = rows;
        states.sort_unstable_by_key(|state| state.channel_id);
        states.dedup_by_key(|state| state.channel_id);
        deleted.sort_unstable_by_key(|tombstone| tombstone.channel_id);
        let mut entry = Self {
            slots: Vec::with_capacity(states.len() + deleted.len()),
            extras: Vec::new(),
            version,
            loaded_version: 0,
            scheduled: false,
            due_tick: 0,
            writing: false,
        };
        let mut tombstones = deleted.into_iter().peekable();
        for state in states {
            while let Some(tombstone) =
                tombstones.next_if(|tombstone| tombstone.channel_id < state.channel_id)
            {
                entry.push_tombstone(tombstone);
            }
            // A store holds one row per pair; should both come back, the
            // newer wins.
            if let Some(tombstone) =
                tombstones.next_if(|tombstone| tombstone.channel_id == state.channel_id)
                && tombstone.version > state.version
            {
                entry.push_tombstone(tombstone);
                continue;
            }
            entry.version = entry.version.max(state.version);
            let index = entry.slots.len();
            entry.slots.push(Slot {
                channel_id: state.channel_id,
                last_message_id: MessageId::NONE,
                version: 0,
                updated_and_flags: 0,
            });
            entry.put(index, state);
        }
        for tombstone in tombstones {
            entry.push_tombstone(tombstone);
        }
        entry.extras.shrink_to_fit();
        entry.loaded_version = entry.version;
        entry
    }

    /// Appends a clean tombstone; slots are built in channel order.
    fn push_tombstone(&mut self, tombstone: Tombstone) {
        self.version = self.version.max(tombstone.version);
        self.slots.push(Slot {
            channel_id: tombstone.channel_id,
            last_message_id: MessageId::NONE,
            version: tombstone.version,
            updated_and_flags: DELETED,
        });
    }

    /// Returns the cache capacity this user takes: its states, and one for
    /// a user with none.
    pub fn weight(&self) -> usize {
        self.slots.len().max(1)
    }

    /// Returns the number of slots and of extras, for memory accounting.
    pub fn sizes(&self) -> (usize, usize) {
        (self.slots.len(), self.extras.len())
    }

    /// Returns the number of dirty states.
    pub fn dirty_count(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_dirty()).count()
    }

    /// Returns the rows a flush of this entry writes.
    pub fn dirty_rows(&self, user_id: UserId, rows: &mut Vec<RowWrite>) {
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.is_dirty() {
                rows.push(RowWrite {
                    user_id,
                    state: self.state(index),
                    deleted: slot.has(DELETED),
                });
            }
        }
    }

    /// Clears the dirty mark of `channel_id` if it still holds `version`
    /// (a deletion stays as a clean tombstone). Returns whether the mark was
    /// cleared.
    pub fn mark_written(&mut self, channel_id: ChannelId, version: u64) -> bool {
        let Ok(index) = self.find(channel_id) else {
            return false;
        };
        let slot = &mut self.slots[index];
        if !slot.is_dirty() || slot.version != version {
            return false;
        }
        slot.set(DIRTY, false);
        true
    }

    /// Returns the live state of `channel_id`, or zeros.
    pub fn view(&self, channel_id: ChannelId) -> StateView {
        match self.find(channel_id) {
            Ok(index) if !self.slots[index].has(DELETED) => self.view_at(index),
            _ => StateView::empty(channel_id),
        }
    }

    /// Appends the live states changed after `since_version` (all when 0).
    pub fn views_since(&self, since_version: u64, out: &mut Vec<StateView>) {
        for (index, slot) in self.slots.iter().enumerate() {
            if !slot.has(DELETED) && slot.version > since_version {
                out.push(self.view_at(index));
            }
        }
    }

    /// Appends the tombstones of pairs deleted after `since_version`.
    pub fn deleted_since(&self, since_version: u64, out: &mut Vec<Tombstone>) {
        out.extend(
            self.slots
                .iter()
                .filter(|slot| slot.has(DELETED) && slot.version > since_version)
                .map(|slot| Tombstone {
                    channel_id: slot.channel_id,
                    version: slot.version,
                }),
        );
    }

    /// Returns the highest version of a state or tombstone at or below
    /// `limit` (0 if none).
    pub fn highest_version_up_to(&self, limit: u64) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.version)
            .filter(|&version| version <= limit)
            .max()
            .unwrap_or(0)
    }

    fn view_at(&self, index: usize) -> StateView {
        let slot = &self.slots[index];
        let (last_pin_timestamp_ms, mention_count) = match self.extra(slot) {
            Some(extra) => (extra.last_pin_timestamp_ms, extra.mentions.count()),
            None => (0, 0),
        };
        StateView {
            channel_id: slot.channel_id,
            last_message_id: slot.last_message_id,
            mention_count,
            last_pin_timestamp_ms,
            updated_at_ms: slot.updated_at_ms(),
            version: slot.version,
        }
    }

    /// Returns a copy of the state at `index`.
    fn state(&self, index: usize) -> ReadState {
        let slot = &self.slots[index];
        let (last_pin_timestamp_ms, mentions) = match self.extra(slot) {
            Some(extra) => (extra.last_pin_timestamp_ms, extra.mentions.clone()),
            None => (0, Mentions::default()),
        };
        slot.with_extra(last_pin_timestamp_ms, mentions)
    }

    /// Moves the state at `index` out (its mentions are taken, not copied);
    /// [`UserEntry::put`] must follow.
    #[inline]
    pub(super) fn take(&mut self, index: usize) -> ReadState {
        let slot = self.slots[index];
        let (last_pin_timestamp_ms, mentions) = match self.find_extra(slot.channel_id) {
            Ok(extra) if slot.has(HAS_EXTRA) => {
                let extra = &mut self.extras[extra];
                (
                    extra.last_pin_timestamp_ms,
                    std::mem::take(&mut extra.mentions),
                )
            }
            _ => (0, Mentions::default()),
        };
        slot.with_extra(last_pin_timestamp_ms, mentions)
    }

    /// Stores `state` at `index`, keeping the slot's dirty and deleted flags.
    #[inline]
    pub(super) fn put(&mut self, index: usize, state: ReadState) {
        let needs_extra = state.last_pin_timestamp_ms != 0 || state.mentions != Mentions::default();
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.channel_id, state.channel_id);
        slot.last_message_id = state.last_message_id;
        slot.version = state.version;
        let flags = slot.updated_and_flags & !TIME_MASK;
        slot.updated_and_flags = (state.updated_at_ms & TIME_MASK) | flags;
        slot.set(HAS_EXTRA, needs_extra);
        match (self.find_extra(state.channel_id), needs_extra) {
            (Ok(position), true) => {
                let extra = &mut self.extras[position];
                extra.last_pin_timestamp_ms = state.last_pin_timestamp_ms;
                extra.mentions = state.mentions;
            }
            (Err(position), true) => self.extras.insert(
                position,
                Extra {
                    channel_id: state.channel_id,
                    last_pin_timestamp_ms: state.last_pin_timestamp_ms,
                    mentions: state.mentions,
                },
            ),
            (Ok(position), false) => {
                self.extras.remove(position);
            }
            (Err(_), false) => {}
        }
    }

    fn extra(&self, slot: &Slot) -> Option<&Extra> {
        if !slot.has(HAS_EXTRA) {
            return None;
        }
        self.find_extra(slot.channel_id)
            .ok()
            .map(|position| &self.extras[position])
    }

    /// Returns whether the state at `index` is a tombstone.
    #[inline]
    pub(super) fn is_deleted(&self, index: usize) -> bool {
        self.slots[index].has(DELETED)
    }

    /// Marks the state at `index` deleted (or revives it).
    #[inline]
    pub(super) fn set_deleted(&mut self, index: usize, deleted: bool) {
        self.slots[index].set(DELETED, deleted);
    }

    /// Marks the state at `index` dirty; returns whether it was clean.
    #[inline]
    pub(super) fn mark_dirty(&mut self, index: usize) -> bool {
        let slot = &mut self.slots[index];
        let was_clean = !slot.is_dirty();
        slot.set(DIRTY, true);
        was_clean
    }

    #[inline]
    pub(super) fn find(&self, channel_id: ChannelId) -> Result<usize, usize> {
        self.slots
            .binary_search_by_key(&channel_id, |slot| slot.channel_id)
    }

    fn find_extra(&self, channel_id: ChannelId) -> Result<usize, usize> {
        self.extras
            .binary_search_by_key(&channel_id, |extra| extra.channel_id)
    }

    /// Inserts an empty slot for `channel_id` at `index`.
    #[inline]
    pub(super) fn insert_slot(&mut self, index: usize, channel_id: ChannelId) {
        // Grows by an eighth (at least one slot): a state stays near 32
        // bytes (at most 4 bytes of spare capacity per state, and a loaded
        // user is sized exactly), while a user gaining many channels in a
        // row copies its array once per eighth rather than on every insert.
        if self.slots.len() == self.slots.capacity() {
            self.slots.reserve_exact((self.slots.len() / 8).max(1));
        }
        self.slots.insert(
            index,
            Slot {
                channel_id,
                last_message_id: MessageId::NONE,
                version: 0,
                updated_and_flags: 0,
            },
        );
    }
}

#[cfg(test)]
#[path = "entry_tests.rs"]
mod tests;
