//! Tests of one user's cached states (`entry`) and its transaction.

use super::super::UserTxn;
use super::*;
use crate::clock::VersionClock;

fn user(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

fn channel(id: u64) -> ChannelId {
    ChannelId::new(id).unwrap()
}

fn message(id: u64) -> MessageId {
    MessageId::new(id).unwrap()
}

#[test]
fn plain_states_carry_no_extra_and_mentions_or_pins_do() {
    let clock = VersionClock::default();
    let mut entry = UserEntry::default();
    let mut txn = UserTxn::new(user(1), &mut entry, &clock, 1_000, None);
    txn.ack(channel(3), message(10));
    txn.add_mention(channel(1), message(5));
    txn.ack_pins(channel(2), 77);
    assert_eq!(entry.sizes(), (3, 2));

    let mut txn = UserTxn::new(user(1), &mut entry, &clock, 1_000, None);
    let view = txn.ack(channel(1), message(5));
    assert_eq!(view.mention_count, 0);
    assert_eq!(entry.sizes(), (3, 1), "a cleared mention frees its extra");
    let view = entry.view(channel(2));
    assert_eq!(view.last_pin_timestamp_ms, 77);
    assert_eq!(entry.dirty_count(), 3);
}

#[test]
fn flags_do_not_leak_into_the_update_time() {
    let clock = VersionClock::default();
    let mut entry = UserEntry::default();
    let mut txn = UserTxn::new(user(1), &mut entry, &clock, 1_000, None);
    let view = txn.ack(channel(1), message(10));
    assert!(view.updated_at_ms > 1_600_000_000_000 && view.updated_at_ms < TIME_MASK);
    assert_eq!(entry.view(channel(1)), view);
    let mut rows = Vec::new();
    entry.dirty_rows(UserId::new(9).unwrap(), &mut rows);
    assert_eq!(rows[0].state.updated_at_ms, view.updated_at_ms);
    assert!(!rows[0].deleted);
}

#[test]
fn a_no_op_on_an_unknown_channel_leaves_no_slot() {
    let clock = VersionClock::default();
    let mut entry = UserEntry::default();
    let mut txn = UserTxn::new(user(1), &mut entry, &clock, 1_000, None);
    assert_eq!(
        txn.ack(channel(1), MessageId::NONE),
        StateView::empty(channel(1))
    );
    assert!(!txn.changed());
    assert_eq!(entry.sizes(), (0, 0));
}

#[test]
fn slots_grow_by_an_eighth_and_stay_within_an_eighth_of_the_length() {
    let clock = VersionClock::default();
    let mut entry = UserEntry::default();
    let mut growths = 0;
    for id in 1..=1_000 {
        let capacity_before = entry.slots.capacity();
        // Descending ids insert at the front: the costliest case.
        UserTxn::new(user(1), &mut entry, &clock, 1_000, None)
            .ack(channel(2_000 - id), message(id));
        growths += usize::from(entry.slots.capacity() != capacity_before);
        let len = entry.slots.len();
        assert!(entry.slots.capacity() <= len + len / 8 + 1);
    }
    assert!(growths < 60, "{growths} reallocations for 1,000 inserts");
}

#[test]
fn loaded_states_round_trip_through_the_compact_layout() {
    let mut with_mentions = ReadState::empty(channel(2));
    with_mentions.last_message_id = message(40);
    with_mentions.version = 5;
    with_mentions.updated_at_ms = 1_700_000_000_000;
    with_mentions.last_pin_timestamp_ms = 9;
    with_mentions.add_mention(message(50), 1_000);
    let mut plain = ReadState::empty(channel(1));
    plain.last_message_id = message(3);
    plain.version = 7;
    let entry = UserEntry::loaded(UserRows {
        states: vec![with_mentions.clone(), plain.clone()],
        deleted: Vec::new(),
        version: 8,
    });
    assert_eq!(entry.version, 8);
    assert_eq!(entry.state(0), plain);
    assert_eq!(entry.state(1), with_mentions);
    assert_eq!(entry.dirty_count(), 0);
}

fn tombstone(channel_id: u64, version: u64) -> Tombstone {
    Tombstone {
        channel_id: channel(channel_id),
        version,
    }
}

#[test]
fn loaded_tombstones_read_as_deleted_and_show_in_deltas() {
    let mut live = ReadState::empty(channel(1));
    live.last_message_id = message(3);
    live.version = 7;
    let mut older = ReadState::empty(channel(3));
    older.last_message_id = message(4);
    older.version = 4;
    let entry = UserEntry::loaded(UserRows {
        states: vec![older, live],
        // Channel 3's marker is newer than its row: the deletion wins.
        deleted: vec![tombstone(3, 5), tombstone(2, 9)],
        version: 0,
    });
    assert_eq!(entry.version, 9, "the newest marker counts");
    assert_eq!(entry.view(channel(2)), StateView::empty(channel(2)));
    assert_eq!(entry.view(channel(3)), StateView::empty(channel(3)));
    let mut views = Vec::new();
    entry.views_since(0, &mut views);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].channel_id, channel(1));
    let mut deleted = Vec::new();
    entry.deleted_since(0, &mut deleted);
    assert_eq!(deleted, vec![tombstone(2, 9), tombstone(3, 5)]);
    deleted.clear();
    entry.deleted_since(5, &mut deleted);
    assert_eq!(deleted, vec![tombstone(2, 9)]);
    assert_eq!(entry.highest_version_up_to(8), 7);
    assert_eq!(entry.dirty_count(), 0, "loaded markers need no write");
}

#[test]
fn a_written_deletion_stays_as_a_tombstone_until_a_change_revives_it() {
    let clock = VersionClock::default();
    let mut entry = UserEntry::default();
    UserTxn::new(user(1), &mut entry, &clock, 1_000, None).ack(channel(1), message(10));
    let mut txn = UserTxn::new(user(1), &mut entry, &clock, 1_000, None);
    let deletion = txn.delete(channel(1)).version;
    assert!(deletion > 0);
    assert!(entry.mark_written(channel(1), deletion));
    let mut deleted = Vec::new();
    entry.deleted_since(0, &mut deleted);
    assert_eq!(deleted, vec![tombstone(1, deletion)]);
    let revived =
        UserTxn::new(user(1), &mut entry, &clock, 1_000, None).ack(channel(1), message(5));
    assert!(revived.version > deletion);
    assert_eq!(
        revived.last_message_id,
        message(5),
        "a revived pair starts from zeros"
    );
    deleted.clear();
    entry.deleted_since(0, &mut deleted);
    assert!(deleted.is_empty());
}
