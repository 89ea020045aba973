//! One (user, channel) read state and its semantics: acks, manual acks,
//! exact and retry-safe mention counting, pins.
//!
//! Mentions are counted exactly by remembering the ids of the pending
//! (unread) mentioned messages: a retried AddMentions finds its id already
//! there, a RemoveMentions removes exactly the id it names, and an ack drops
//! exactly the ids at or below it. Two kinds of count have no ids: the count a
//! manual ack sets ("mark as unread", whose messages the service never saw),
//! and mentions past the per-state cap of tracked ids. Both are held in
//! `untracked`, cleared by the first forward ack that reaches every message
//! they may stand for, so a count never decreases wrongly.

use crate::ids::{ChannelId, MessageId};

/// The state of one channel for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub channel_id: ChannelId,
    pub last_message_id: MessageId,
    pub last_pin_timestamp_ms: u64,
    pub updated_at_ms: u64,
    pub version: u64,
    pub mentions: Mentions,
}

/// The mentions newer than the state's last acknowledged message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mentions {
    /// Ids of counted mentioned messages, ascending, all above the last
    /// acknowledged message.
    pending: Vec<u64>,
    /// Counted mentions whose ids are not tracked.
    untracked: u32,
    /// A forward ack at or past this id clears `untracked` (0: any forward
    /// ack does).
    untracked_until: u64,
}

impl Mentions {
    /// Rebuilds mentions from their stored parts; `pending` is sorted and
    /// de-duplicated here so a damaged row cannot break the invariants.
    pub fn from_parts(mut pending: Vec<u64>, untracked: u32, untracked_until: u64) -> Self {
        pending.sort_unstable();
        pending.dedup();
        Self {
            pending,
            untracked,
            untracked_until,
        }
    }

    /// Returns the tracked mention ids, ascending.
    pub fn pending(&self) -> &[u64] {
        &self.pending
    }

    /// Returns how many counted mentions have no tracked id.
    pub fn untracked(&self) -> u32 {
        self.untracked
    }

    /// Returns the id a forward ack must reach to clear the untracked count.
    pub fn untracked_until(&self) -> u64 {
        self.untracked_until
    }

    /// Returns the number of counted mentions.
    pub fn count(&self) -> u32 {
        let tracked = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        tracked.saturating_add(self.untracked)
    }
}

impl ReadState {
    /// Returns the state of a pair that was never written: all zeros.
    pub fn empty(channel_id: ChannelId) -> Self {
        Self {
            channel_id,
            last_message_id: MessageId::NONE,
            last_pin_timestamp_ms: 0,
            updated_at_ms: 0,
            version: 0,
            mentions: Mentions::default(),
        }
    }

    /// Returns the number of counted mentions.
    pub fn mention_count(&self) -> u32 {
        self.mentions.count()
    }

    /// Acknowledges messages up to `message_id`. Returns whether anything
    /// changed: a stale ack (not newer than the last one) changes nothing.
    pub fn ack(&mut self, message_id: MessageId) -> bool {
        if message_id <= self.last_message_id {
            return false;
        }
        self.last_message_id = message_id;
        let acked = message_id.get();
        let cleared = self.mentions.pending.partition_point(|&id| id <= acked);
        self.mentions.pending.drain(..cleared);
        if acked >= self.mentions.untracked_until {
            self.mentions.untracked = 0;
            self.mentions.untracked_until = 0;
        }
        true
    }

    /// "Mark as unread": sets the last acknowledged message to exactly
    /// `message_id` (even backwards) and the mention count to `mention_count`.
    /// Returns whether anything changed.
    pub fn manual_ack(&mut self, message_id: MessageId, mention_count: u32) -> bool {
        let unchanged = self.last_message_id == message_id
            && self.mentions.pending.is_empty()
            && self.mentions.untracked == mention_count
            && self.mentions.untracked_until == 0;
        if unchanged {
            return false;
        }
        self.last_message_id = message_id;
        self.mentions.pending.clear();
        self.mentions.untracked = mention_count;
        self.mentions.untracked_until = 0;
        true
    }

    /// Counts a mention in `message_id` if that message is unread and not
    /// counted yet. Past `tracked_cap` tracked ids the mention is counted
    /// without its id (and so without de-duplication). Returns whether the
    /// count changed.
    pub fn add_mention(&mut self, message_id: MessageId, tracked_cap: usize) -> bool {
        if message_id <= self.last_message_id {
            return false;
        }
        let id = message_id.get();
        let Err(position) = self.mentions.pending.binary_search(&id) else {
            return false;
        };
        if self.mentions.pending.len() < tracked_cap {
            self.mentions.pending.insert(position, id);
        } else {
            self.mentions.untracked = self.mentions.untracked.saturating_add(1);
            self.mentions.untracked_until = self.mentions.untracked_until.max(id);
        }
        true
    }

    /// Un-counts the mention in `message_id` if it is counted. Returns
    /// whether the count changed.
    pub fn remove_mention(&mut self, message_id: MessageId) -> bool {
        match self.mentions.pending.binary_search(&message_id.get()) {
            Ok(position) => {
                self.mentions.pending.remove(position);
                true
            }
            Err(_) => false,
        }
    }

    /// Records that pins up to `pin_timestamp_ms` were seen. Returns whether
    /// anything changed.
    pub fn ack_pins(&mut self, pin_timestamp_ms: u64) -> bool {
        if pin_timestamp_ms <= self.last_pin_timestamp_ms {
            return false;
        }
        self.last_pin_timestamp_ms = pin_timestamp_ms;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const CAP: usize = 1_000;

    fn state() -> ReadState {
        ReadState::empty(ChannelId::new(1).unwrap())
    }

    fn msg(id: u64) -> MessageId {
        MessageId::new(id).unwrap()
    }

    #[test]
    fn ack_moves_forward_only_and_clears_mentions_at_or_below() {
        let mut s = state();
        for id in [5, 7, 9] {
            assert!(s.add_mention(msg(id), CAP));
        }
        assert!(s.ack(msg(7)));
        assert_eq!(s.last_message_id, msg(7));
        assert_eq!(s.mention_count(), 1);
        assert!(!s.ack(msg(6)), "stale ack changes nothing");
        assert_eq!(s.last_message_id, msg(7));
        assert_eq!(s.mention_count(), 1);
    }

    #[test]
    fn mentions_are_idempotent_and_order_independent() {
        let mut s = state();
        assert!(s.add_mention(msg(9), CAP));
        assert!(!s.add_mention(msg(9), CAP), "retry counts once");
        assert!(s.add_mention(msg(7), CAP), "older unread mention counts");
        assert_eq!(s.mention_count(), 2);
        s.ack(msg(8));
        assert!(!s.add_mention(msg(7), CAP), "read message is not counted");
        assert_eq!(s.mention_count(), 1);
    }

    #[test]
    fn remove_uncounts_only_counted_mentions() {
        let mut s = state();
        s.add_mention(msg(5), CAP);
        assert!(!s.remove_mention(msg(6)));
        assert!(s.remove_mention(msg(5)));
        assert!(!s.remove_mention(msg(5)), "count never goes negative");
        assert_eq!(s.mention_count(), 0);
    }

    #[test]
    fn manual_ack_sets_position_and_count_until_next_forward_ack() {
        let mut s = state();
        s.ack(msg(100));
        assert!(s.manual_ack(msg(50), 3));
        assert_eq!(s.last_message_id, msg(50));
        assert_eq!(s.mention_count(), 3);
        assert!(s.add_mention(msg(60), CAP));
        assert_eq!(s.mention_count(), 4);
        assert!(s.ack(msg(55)));
        assert_eq!(s.mention_count(), 1, "forward ack clears the given count");
        assert!(s.manual_ack(msg(55), 0));
        assert_eq!(s.mention_count(), 0);
        assert!(
            !s.manual_ack(msg(55), 0),
            "an identical manual ack changes nothing"
        );
    }

    #[test]
    fn past_the_cap_counts_without_ids_and_never_decreases_wrongly() {
        let mut s = state();
        for id in 1..=3 {
            assert!(s.add_mention(msg(id * 10), 2));
        }
        assert_eq!(s.mention_count(), 3);
        assert!(!s.remove_mention(msg(30)), "untracked ids can't be removed");
        assert!(s.ack(msg(20)));
        assert_eq!(s.mention_count(), 1, "mention 30 may still be unread");
        assert!(s.ack(msg(30)));
        assert_eq!(s.mention_count(), 0);
    }

    #[test]
    fn pins_move_forward_only() {
        let mut s = state();
        assert!(s.ack_pins(10));
        assert!(!s.ack_pins(5));
        assert_eq!(s.last_pin_timestamp_ms, 10);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Ack(u64),
        Manual(u64, u32),
        Add(u64),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..60).prop_map(Op::Ack),
            (0u64..60, 0u32..4).prop_map(|(id, n)| Op::Manual(id, n)),
            (1u64..60).prop_map(Op::Add),
            (1u64..60).prop_map(Op::Remove),
        ]
    }

    /// The reference model: the set of counted message ids, plus the count a
    /// manual ack gave.
    #[derive(Default)]
    struct Model {
        last: u64,
        counted: BTreeSet<u64>,
        given: u32,
    }

    impl Model {
        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Ack(id) if id > self.last => {
                    self.last = id;
                    self.counted.retain(|&m| m > id);
                    self.given = 0;
                }
                Op::Ack(_) => {}
                Op::Manual(id, n) => {
                    self.last = id;
                    self.counted.clear();
                    self.given = n;
                }
                Op::Add(id) if id > self.last => {
                    self.counted.insert(id);
                }
                Op::Add(_) => {}
                Op::Remove(id) => {
                    self.counted.remove(&id);
                }
            }
        }

        fn count(&self) -> u32 {
            self.counted.len() as u32 + self.given
        }
    }

    /// Applies `op` to `state`, tracking at most `cap` mentions.
    fn apply(state: &mut ReadState, op: &Op, cap: usize) {
        match *op {
            Op::Ack(id) => {
                state.ack(msg(id));
            }
            Op::Manual(id, n) => {
                state.manual_ack(msg(id), n);
            }
            Op::Add(id) => {
                state.add_mention(msg(id), cap);
            }
            Op::Remove(id) => {
                state.remove_mention(msg(id));
            }
        }
    }

    proptest! {
        #[test]
        fn matches_the_reference_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut s = state();
            let mut model = Model::default();
            for op in &ops {
                apply(&mut s, op, CAP);
                model.apply(op);
                prop_assert_eq!(s.last_message_id.get(), model.last);
                prop_assert_eq!(s.mention_count(), model.count());
            }
        }

        #[test]
        fn a_capped_count_never_falls_below_the_exact_one(ops in proptest::collection::vec(op(), 0..200)) {
            let mut capped = state();
            let mut model = Model::default();
            for op in &ops {
                apply(&mut capped, op, 3);
                model.apply(op);
                prop_assert!(capped.mention_count() >= model.count());
            }
        }
    }
}
