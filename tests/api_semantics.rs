//! ARCHITECTURE.md §1.2 semantics, over real gRPC on loopback against a
//! running server with the embedded store. One test per behaviour; each
//! starts its own server over its own temporary directory.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, TestServer, get, test_config};
use readstates::api::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetReadStateRequest, GetUserReadStatesRequest,
    GetUserReadStatesResponse, ReadState, RemoveMentionsRequest,
};
use readstates::config::Config;
use tonic::Code;

/// The largest valid snowflake id: 2^63 - 1.
const MAX_ID: u64 = i64::MAX as u64;
/// The smallest id above the valid range.
const TOO_LARGE: u64 = MAX_ID + 1;

// ---------------------------------------------------------------------------
// Harness helpers
// ---------------------------------------------------------------------------

async fn start_with(adjust: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let store = common::InstrumentedStore::open(dir.path());
    let server = TestServer::start(&config, store).await;
    (dir, server)
}

async fn start() -> (tempfile::TempDir, TestServer) {
    start_with(|_| {}).await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn ack(c: &mut Client, user: u64, channel: u64, message: u64) -> ReadState {
    c.ack(AckRequest {
        user_id: user,
        channel_id: channel,
        message_id: message,
        manual: false,
        mention_count: None,
    })
    .await
    .unwrap()
    .into_inner()
    .read_state
    .unwrap()
}

async fn manual_ack(
    c: &mut Client,
    user: u64,
    channel: u64,
    message: u64,
    mention_count: Option<u32>,
) -> ReadState {
    c.ack(AckRequest {
        user_id: user,
        channel_id: channel,
        message_id: message,
        manual: true,
        mention_count,
    })
    .await
    .unwrap()
    .into_inner()
    .read_state
    .unwrap()
}

async fn add(c: &mut Client, channel: u64, message: u64, users: &[u64]) -> Vec<ReadState> {
    c.add_mentions(AddMentionsRequest {
        channel_id: channel,
        message_id: message,
        user_ids: users.to_vec(),
        omit_read_states: false,
    })
    .await
    .unwrap()
    .into_inner()
    .read_states
}

async fn add_one(c: &mut Client, user: u64, channel: u64, message: u64) -> ReadState {
    let mut states = add(c, channel, message, &[user]).await;
    assert_eq!(states.len(), 1);
    states.pop().unwrap()
}

async fn remove(c: &mut Client, channel: u64, message: u64, users: &[u64]) -> Vec<ReadState> {
    c.remove_mentions(RemoveMentionsRequest {
        channel_id: channel,
        message_id: message,
        user_ids: users.to_vec(),
    })
    .await
    .unwrap()
    .into_inner()
    .read_states
}

async fn remove_one(c: &mut Client, user: u64, channel: u64, message: u64) -> ReadState {
    let mut states = remove(c, channel, message, &[user]).await;
    assert_eq!(states.len(), 1);
    states.pop().unwrap()
}

async fn pins(c: &mut Client, user: u64, channel: u64, pin_timestamp_ms: u64) -> ReadState {
    c.ack_pins(AckPinsRequest {
        user_id: user,
        channel_id: channel,
        pin_timestamp_ms,
    })
    .await
    .unwrap()
    .into_inner()
    .read_state
    .unwrap()
}

/// Returns the user's states sorted by channel, and the user's version.
async fn user_states(c: &mut Client, user: u64, since: Option<u64>) -> (Vec<ReadState>, u64) {
    let response = c
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: user,
            since_version: since,
        })
        .await
        .unwrap()
        .into_inner();
    let mut states = response.read_states;
    states.sort_by_key(|s| s.channel_id);
    (states, response.version)
}

fn channels_of(states: &[ReadState]) -> Vec<u64> {
    states.iter().map(|s| s.channel_id).collect()
}

async fn bulk_ack(c: &mut Client, user: u64, acks: &[(u64, u64)]) -> Vec<ReadState> {
    c.bulk_ack(BulkAckRequest {
        user_id: user,
        acks: acks
            .iter()
            .map(|&(channel_id, message_id)| ChannelAck {
                channel_id,
                message_id,
            })
            .collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .read_states
}

async fn delete(c: &mut Client, user: u64, channels: &[u64]) -> Vec<ReadState> {
    c.delete_read_states(DeleteReadStatesRequest {
        user_id: user,
        channel_ids: channels.to_vec(),
    })
    .await
    .unwrap()
    .into_inner()
    .read_states
}

/// Asserts a pair reads as never written: all zeros, ids echoed.
#[track_caller]
fn assert_zeros(state: &ReadState, user: u64, channel: u64) {
    assert_eq!(
        *state,
        ReadState {
            user_id: user,
            channel_id: channel,
            ..ReadState::default()
        }
    );
}

/// Asserts `INVALID_ARGUMENT` with a message naming `field`.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message {:?} should name the field {field:?}",
        status.message()
    );
}

fn ack_req(user: u64, channel: u64, message: u64, manual: bool) -> AckRequest {
    AckRequest {
        user_id: user,
        channel_id: channel,
        message_id: message,
        manual,
        mention_count: None,
    }
}

fn add_req(channel: u64, message: u64, users: Vec<u64>) -> AddMentionsRequest {
    AddMentionsRequest {
        channel_id: channel,
        message_id: message,
        user_ids: users,
        omit_read_states: false,
    }
}

fn remove_req(channel: u64, message: u64, users: Vec<u64>) -> RemoveMentionsRequest {
    RemoveMentionsRequest {
        channel_id: channel,
        message_id: message,
        user_ids: users,
    }
}

fn bulk_req(user: u64, acks: &[(u64, u64)]) -> BulkAckRequest {
    BulkAckRequest {
        user_id: user,
        acks: acks
            .iter()
            .map(|&(channel_id, message_id)| ChannelAck {
                channel_id,
                message_id,
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// 2.1 Ack
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ack_moves_forward_and_clears_mentions_at_or_below_it() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    for message in [5, 7, 9] {
        add_one(c, 1, 10, message).await;
    }
    assert_eq!(get(c, 1, 10).await.mention_count, 3);

    let acked = ack(c, 1, 10, 7).await;
    assert_eq!(acked.last_message_id, 7);
    assert_eq!(acked.mention_count, 1, "mentions 5 and 7 cleared, 9 kept");
    assert_eq!(acked.user_id, 1);
    assert_eq!(acked.channel_id, 10);

    let read = get(c, 1, 10).await;
    assert_eq!(read, acked, "GetReadState returns what the ack returned");

    let acked = ack(c, 1, 10, 20).await;
    assert_eq!(acked.last_message_id, 20);
    assert_eq!(acked.mention_count, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn stale_ack_changes_nothing_and_does_not_bump_the_version() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    ack(c, 1, 10, 100).await;
    let before = add_one(c, 1, 10, 150).await;
    assert_eq!(before.mention_count, 1);
    let (_, user_version_before) = user_states(c, 1, None).await;

    for stale in [50, 100] {
        let after = ack(c, 1, 10, stale).await;
        assert_eq!(after, before, "a stale ack ({stale}) changes nothing");
    }
    assert_eq!(get(c, 1, 10).await, before);
    let (_, user_version_after) = user_states(c, 1, None).await;
    assert_eq!(user_version_after, user_version_before);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2.2 Manual ack
// ---------------------------------------------------------------------------

#[tokio::test]
async fn manual_ack_sets_position_backwards_and_the_given_count() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    ack(c, 1, 10, 100).await;
    add_one(c, 1, 10, 120).await;
    let manual = manual_ack(c, 1, 10, 50, Some(3)).await;
    assert_eq!(manual.last_message_id, 50, "moves backwards exactly");
    assert_eq!(manual.mention_count, 3, "count is the given value");
    assert_eq!(get(c, 1, 10).await, manual);

    // Later mentions add to the given count, once each.
    assert_eq!(add_one(c, 1, 10, 60).await.mention_count, 4);
    assert_eq!(add_one(c, 1, 10, 60).await.mention_count, 4);
    assert_eq!(add_one(c, 1, 10, 70).await.mention_count, 5);
    // A mention at or below the manual position is read.
    assert_eq!(add_one(c, 1, 10, 40).await.mention_count, 5);

    // A stale ack does not clear the given count.
    let stale = ack(c, 1, 10, 45).await;
    assert_eq!((stale.last_message_id, stale.mention_count), (50, 5));

    // The next forward ack clears the given count and the mentions it reaches.
    let forward = ack(c, 1, 10, 65).await;
    assert_eq!(forward.last_message_id, 65);
    assert_eq!(forward.mention_count, 1, "only mention 70 is left");
    server.shutdown().await;
}

#[tokio::test]
async fn manual_ack_without_a_count_sets_zero_and_may_move_forward() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    add_one(c, 1, 10, 10).await;
    add_one(c, 1, 10, 20).await;
    let manual = manual_ack(c, 1, 10, 5, None).await;
    assert_eq!((manual.last_message_id, manual.mention_count), (5, 0));

    // Forward manual ack: mentions at or below are then not counted.
    let manual = manual_ack(c, 1, 10, 200, Some(2)).await;
    assert_eq!((manual.last_message_id, manual.mention_count), (200, 2));
    assert_eq!(add_one(c, 1, 10, 150).await.mention_count, 2);
    assert_eq!(add_one(c, 1, 10, 250).await.mention_count, 3);

    // Manual ack of a never-written pair creates it with the given values.
    let fresh = manual_ack(c, 2, 20, 30, Some(4)).await;
    assert_eq!((fresh.last_message_id, fresh.mention_count), (30, 4));
    assert!(fresh.version > 0);
    assert_eq!(get(c, 2, 20).await, fresh);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2.3 AddMentions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn add_mentions_counts_only_unread_messages() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    let acked = ack(c, 1, 10, 100).await;
    for read in [99, 100] {
        let state = add_one(c, 1, 10, read).await;
        assert_eq!(
            state, acked,
            "mention of read message {read} changes nothing"
        );
    }
    let state = add_one(c, 1, 10, 101).await;
    assert_eq!((state.last_message_id, state.mention_count), (100, 1));
    assert!(state.version > acked.version);
    server.shutdown().await;
}

#[tokio::test]
async fn add_mentions_is_idempotent() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    let first = add_one(c, 1, 10, 50).await;
    assert_eq!(first.mention_count, 1);
    let retried = add_one(c, 1, 10, 50).await;
    assert_eq!(retried, first, "a retry counts once and changes nothing");

    // Duplicate user ids within one call count once.
    let states = add(c, 10, 60, &[2, 2, 3, 2]).await;
    assert!(states.iter().all(|s| s.mention_count == 1), "{states:?}");
    // Overlapping lists across calls count once per user.
    add(c, 10, 60, &[3, 4]).await;
    for user in [2, 3, 4] {
        assert_eq!(get(c, user, 10).await.mention_count, 1, "user {user}");
    }
    // The same message id in another channel is another mention.
    assert_eq!(add_one(c, 2, 11, 60).await.mention_count, 1);
    assert_eq!(get(c, 2, 10).await.mention_count, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn add_mentions_is_order_independent() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    assert_eq!(add_one(c, 1, 10, 9).await.mention_count, 1);
    assert_eq!(
        add_one(c, 1, 10, 7).await.mention_count,
        2,
        "7 arriving after 9 still counts while unread"
    );
    assert_eq!(ack(c, 1, 10, 8).await.mention_count, 1);
    assert_eq!(
        add_one(c, 1, 10, 7).await.mention_count,
        1,
        "7 is read now: a late duplicate does not count"
    );
    assert_eq!(
        add_one(c, 1, 10, 5).await.mention_count,
        1,
        "a late first delivery of a read message does not count"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn add_mentions_to_a_never_written_pair_starts_from_zeros() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    let before = now_ms();
    let state = add_one(c, 1, 10, 42).await;
    let after = now_ms();
    assert_eq!(state.user_id, 1);
    assert_eq!(state.channel_id, 10);
    assert_eq!(state.last_message_id, 0);
    assert_eq!(state.mention_count, 1);
    assert_eq!(state.last_pin_timestamp_ms, 0);
    assert!(state.version > 0);
    assert!(
        (before..=after).contains(&state.updated_at_ms),
        "{before} <= {} <= {after}",
        state.updated_at_ms
    );
    server.shutdown().await;
}

#[tokio::test]
async fn add_mentions_fans_out_to_thousands_of_cached_and_uncached_users() {
    // A small cache so that part of the first fan-out's users are evicted
    // (and written, then reloaded) by the time the second one runs.
    let (_dir, mut server) = start_with(|config| {
        config.cache.capacity = 600;
        config.flush.delay_ms = 200;
        config.flush.tick_ms = 50;
    })
    .await;
    let c = &mut server.client;

    let first: Vec<u64> = (1..=1_000).collect();
    let states = add(c, 10, 500, &first).await;
    assert_eq!(states.len(), 1_000);

    let all: Vec<u64> = (1..=2_000).collect();
    let states = add(c, 10, 600, &all).await;
    assert_eq!(states.len(), 2_000, "one state per user");
    let users: BTreeSet<u64> = states.iter().map(|s| s.user_id).collect();
    assert_eq!(users, all.iter().copied().collect::<BTreeSet<_>>());
    for state in &states {
        let expected = if state.user_id <= 1_000 { 2 } else { 1 };
        assert_eq!(state.channel_id, 10);
        assert_eq!(state.mention_count, expected, "{state:?}");
    }
    for user in [1, 2, 500, 999, 1_000, 1_001, 1_500, 2_000] {
        let expected = if user <= 1_000 { 2 } else { 1 };
        assert_eq!(
            get(c, user, 10).await.mention_count,
            expected,
            "user {user}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_thousand_pending_mentions_are_exact_and_past_the_cap_never_decrease_wrongly() {
    let (_dir, mut server) = start_with(|config| config.cache.max_tracked_mentions = 1_000).await;

    // 1,000 distinct pending mentions, sent 50 calls at a time.
    for chunk in (1..=1_000u64).collect::<Vec<_>>().chunks(50) {
        let calls = chunk.iter().map(|&message| {
            let mut c = server.client.clone();
            async move { add_one(&mut c, 1, 10, message).await }
        });
        futures_util::future::join_all(calls).await;
    }
    let c = &mut server.client;
    assert_eq!(get(c, 1, 10).await.mention_count, 1_000);
    // Tracked exactly: retries do not count, removals un-count.
    assert_eq!(add_one(c, 1, 10, 500).await.mention_count, 1_000);
    assert_eq!(remove_one(c, 1, 10, 500).await.mention_count, 999);
    assert_eq!(add_one(c, 1, 10, 500).await.mention_count, 1_000);

    // Past the cap every new mention still counts.
    for message in 1_001..=1_005 {
        add_one(c, 1, 10, message).await;
    }
    assert_eq!(get(c, 1, 10).await.mention_count, 1_005);
    let removed = remove_one(c, 1, 10, 1_003).await.mention_count;
    assert!(
        (1_004..=1_005).contains(&removed),
        "removing one mention took {removed} from 1005"
    );
    // An ack below some of them keeps at least the ones above it (past the
    // cap the count may be over, never under), and does not grow it.
    let partial = ack(c, 1, 10, 1_002).await.mention_count;
    assert!(
        (2..=removed).contains(&partial),
        "mentions 1004 and 1005 (and maybe 1003) are unread: {partial}"
    );
    // An ack past every mention clears them all.
    assert_eq!(ack(c, 1, 10, 1_005).await.mention_count, 0);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2.4 RemoveMentions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn remove_mentions_uncounts_only_counted_mentions() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    assert_eq!(add_one(c, 1, 10, 5).await.mention_count, 1);
    assert_eq!(add_one(c, 1, 10, 6).await.mention_count, 2);
    assert_eq!(remove_one(c, 1, 10, 5).await.mention_count, 1);

    // Removing it again, or removing one never counted, changes nothing.
    let counted = get(c, 1, 10).await;
    assert_eq!(remove_one(c, 1, 10, 5).await, counted);
    assert_eq!(remove_one(c, 1, 10, 99).await, counted);

    assert_eq!(remove_one(c, 1, 10, 6).await.mention_count, 0);
    assert_eq!(
        remove_one(c, 1, 10, 6).await.mention_count,
        0,
        "never negative"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn remove_mentions_of_a_mention_cleared_by_an_ack_changes_nothing() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    add_one(c, 1, 10, 7).await;
    add_one(c, 1, 10, 9).await;
    let acked = ack(c, 1, 10, 8).await;
    assert_eq!(acked.mention_count, 1);
    assert_eq!(
        remove_one(c, 1, 10, 7).await,
        acked,
        "7 was cleared by the ack: removing it must not un-count 9"
    );

    // Mentions a manual ack gave have no ids: removing any id keeps them.
    let manual = manual_ack(c, 2, 10, 50, Some(2)).await;
    assert_eq!(remove_one(c, 2, 10, 60).await, manual);

    // Removing from a never-written pair leaves it never written.
    let untouched = remove_one(c, 3, 10, 7).await;
    assert_zeros(&untouched, 3, 10);
    assert_zeros(&get(c, 3, 10).await, 3, 10);
    let (states, version) = user_states(c, 3, None).await;
    assert!(states.is_empty());
    assert_eq!(version, 0);

    // Fan-out removal: each user's own count.
    add(c, 20, 100, &[4, 5]).await;
    add_one(c, 5, 20, 101).await;
    let states = remove(c, 20, 100, &[4, 5, 6]).await;
    assert_eq!(states.len(), 3);
    for state in states {
        let expected = if state.user_id == 5 { 1 } else { 0 };
        assert_eq!(state.mention_count, expected, "{state:?}");
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2.5 AckPins
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ack_pins_keeps_the_newest_timestamp() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    let first = pins(c, 1, 10, 1_000).await;
    assert_eq!(first.last_pin_timestamp_ms, 1_000);
    assert_eq!((first.last_message_id, first.mention_count), (0, 0));
    assert!(first.version > 0);

    let older = pins(c, 1, 10, 500).await;
    assert_eq!(older, first, "an older pin changes nothing");
    let newer = pins(c, 1, 10, 2_000).await;
    assert_eq!(newer.last_pin_timestamp_ms, 2_000);
    assert!(newer.version > first.version);

    // Pins and acks are independent.
    let acked = ack(c, 1, 10, 77).await;
    assert_eq!(acked.last_pin_timestamp_ms, 2_000);
    assert_eq!(pins(c, 1, 10, 3_000).await.last_message_id, 77);
    assert_eq!(get(c, 1, 10).await.last_pin_timestamp_ms, 3_000);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2.6 Reads and versions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn get_read_state_of_a_never_written_pair_is_all_zeros() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    assert_zeros(&get(c, 1, 10).await, 1, 10);
    // Also for a user that has other states.
    ack(c, 1, 11, 5).await;
    assert_zeros(&get(c, 1, 10).await, 1, 10);
    // And for the largest valid ids.
    assert_zeros(&get(c, MAX_ID, MAX_ID).await, MAX_ID, MAX_ID);

    let (states, version) = user_states(c, 2, None).await;
    assert!(states.is_empty());
    assert_eq!(version, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn get_user_read_states_returns_every_state_and_the_user_version() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    let before = now_ms();
    let versions = [
        ack(c, 1, 10, 5).await.version,
        add_one(c, 1, 20, 7).await.version,
        pins(c, 1, 30, 1_000).await.version,
        ack(c, 1, 10, 6).await.version,
        add_one(c, 1, 30, 8).await.version,
        manual_ack(c, 1, 20, 3, Some(1)).await.version,
    ];
    let after = now_ms();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions strictly increase across the user's channels: {versions:?}"
    );
    // Another user's states are not included.
    ack(c, 2, 10, 99).await;

    let (states, version) = user_states(c, 1, None).await;
    assert_eq!(channels_of(&states), [10, 20, 30]);
    assert_eq!(version, *versions.last().unwrap());
    assert_eq!(
        version,
        states.iter().map(|s| s.version).max().unwrap(),
        "the user's version is the highest of its states'"
    );
    for state in &states {
        assert_eq!(state.user_id, 1);
        assert_eq!(*state, get(c, 1, state.channel_id).await);
        assert!(
            (before..=after).contains(&state.updated_at_ms),
            "{before} <= {} <= {after}",
            state.updated_at_ms
        );
    }
    let by_channel: Vec<(u64, u32, u64)> = states
        .iter()
        .map(|s| (s.last_message_id, s.mention_count, s.last_pin_timestamp_ms))
        .collect();
    assert_eq!(by_channel, [(6, 0, 0), (3, 1, 0), (0, 1, 1_000)]);

    // The state versions are those of each channel's last change.
    assert_eq!(states[0].version, versions[3]);
    assert_eq!(states[1].version, versions[5]);
    assert_eq!(states[2].version, versions[4]);

    // An explicit since_version of 0 means everything.
    let (all, _) = user_states(c, 1, Some(0)).await;
    assert_eq!(all, states);
    server.shutdown().await;
}

#[tokio::test]
async fn get_user_read_states_since_version_returns_only_later_changes() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    ack(c, 1, 10, 5).await;
    ack(c, 1, 20, 5).await;
    ack(c, 1, 30, 5).await;
    let (_, v1) = user_states(c, 1, None).await;

    let (delta, version) = user_states(c, 1, Some(v1)).await;
    assert!(delta.is_empty(), "nothing changed after {v1}: {delta:?}");
    assert_eq!(version, v1);

    let changed = add_one(c, 1, 20, 9).await;
    ack(c, 1, 10, 1).await; // stale: not a change
    let (delta, v2) = user_states(c, 1, Some(v1)).await;
    assert_eq!(delta, [changed]);
    assert_eq!(v2, changed.version);
    assert!(v2 > v1);

    let newest = pins(c, 1, 30, 7).await;
    let (delta, v3) = user_states(c, 1, Some(v2)).await;
    assert_eq!(delta, [newest]);
    assert_eq!(v3, newest.version);
    let (delta, _) = user_states(c, 1, Some(v1)).await;
    assert_eq!(channels_of(&delta), [20, 30]);
    server.shutdown().await;
}

/// Returns the full answer of a delta since `since`.
async fn delta(c: &mut Client, user: u64, since: u64) -> GetUserReadStatesResponse {
    let mut response = c
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: user,
            since_version: Some(since),
        })
        .await
        .unwrap()
        .into_inner();
    response.read_states.sort_by_key(|s| s.channel_id);
    response
}

/// The (channel, version) of each deleted pair in a delta.
fn deletions(response: &GetUserReadStatesResponse) -> Vec<(u64, u64)> {
    response
        .deleted
        .iter()
        .map(|deleted| (deleted.channel_id, deleted.version))
        .collect()
}

#[tokio::test]
async fn a_delta_reports_the_pairs_deleted_after_its_version() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;
    ack(c, 1, 10, 5).await;
    ack(c, 1, 20, 5).await;
    ack(c, 1, 30, 5).await;
    let (_, v1) = user_states(c, 1, None).await;

    let deletion = delete(c, 1, &[20]).await[0].version;
    let later = ack(c, 1, 40, 5).await;
    let answer = delta(c, 1, v1).await;
    assert!(!answer.reset);
    assert_eq!(answer.read_states, [later]);
    assert_eq!(deletions(&answer), [(20, deletion)]);
    assert!(answer.deleted.iter().all(|deleted| deleted.user_id == 1));
    assert_eq!(answer.version, later.version);

    // From the deletion's own version, only what followed it.
    let answer = delta(c, 1, deletion).await;
    assert_eq!(channels_of(&answer.read_states), [40]);
    assert!(answer.deleted.is_empty());

    // A pair changed again after its deletion is a changed pair, no longer
    // a deleted one.
    let revived = ack(c, 1, 20, 3).await;
    let answer = delta(c, 1, v1).await;
    assert_eq!(channels_of(&answer.read_states), [20, 40]);
    assert_eq!(answer.read_states[0], revived);
    assert!(answer.deleted.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn deletions_in_a_delta_survive_the_users_eviction_and_reload() {
    let (_dir, mut server) = start_with(|config| {
        config.cache.capacity = 2;
        config.cache.partitions = 1;
        config.flush.delay_ms = 50;
        config.flush.tick_ms = 10;
    })
    .await;
    let c = &mut server.client;
    ack(c, 1, 10, 5).await;
    ack(c, 1, 20, 5).await;
    let (_, v1) = user_states(c, 1, None).await;
    let deletion = delete(c, 1, &[10]).await[0].version;
    // Other users push user 1 out of the two-state cache; it is written
    // on eviction, and reloaded (with its deletion marker) by the delta.
    for user in 2..6 {
        ack(c, user, 10, 5).await;
        ack(c, user, 20, 5).await;
    }
    let answer = delta(c, 1, v1).await;
    assert!(!answer.reset);
    assert!(answer.read_states.is_empty(), "{answer:?}");
    assert_eq!(deletions(&answer), [(10, deletion)]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_delta_that_cannot_be_proved_complete_is_a_reset_with_every_state() {
    let (_dir, mut server) = start_with(|config| {
        config.flush.delay_ms = 50;
        config.flush.tick_ms = 10;
        config.flush.tombstone_grace_ms = 50;
        config.flush.purge_interval_ms = 20;
    })
    .await;
    let c = &mut server.client;
    ack(c, 1, 10, 5).await;
    let kept = ack(c, 1, 20, 5).await;
    let (_, v1) = user_states(c, 1, None).await;

    // Ahead of the user: the copy has what the service does not.
    let answer = delta(c, 1, v1 + 1_000_000).await;
    assert!(answer.reset);
    assert_eq!(channels_of(&answer.read_states), [10, 20]);
    assert!(answer.deleted.is_empty());

    // Older than the deletion horizon, once the deletion marker may be
    // purged: the deletion cannot be proved, so every state comes back.
    delete(c, 1, &[10]).await;
    let reset = common::eventually(Duration::from_secs(20), async || {
        delta(c, 1, v1).await.reset
    })
    .await;
    assert!(reset, "the purge never passed version {v1}");
    let answer = delta(c, 1, v1).await;
    assert_eq!(answer.read_states, [kept]);
    assert!(answer.deleted.is_empty());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// BulkAck
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bulk_ack_acks_many_channels_with_per_channel_results() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    for channel in 1..=5 {
        add_one(c, 1, channel, 100).await;
        add_one(c, 1, channel, 200).await;
    }
    ack(c, 1, 5, 300).await; // channel 5 is ahead of the bulk ack below
    let before = user_states(c, 1, None).await.1;

    let acks = [(1, 100), (2, 150), (3, 200), (4, 250), (5, 120), (6, 10)];
    let states = bulk_ack(c, 1, &acks).await;
    assert_eq!(channels_of(&states), [1, 2, 3, 4, 5, 6]);
    let results: Vec<(u64, u32)> = states
        .iter()
        .map(|s| (s.last_message_id, s.mention_count))
        .collect();
    assert_eq!(
        results,
        [(100, 1), (150, 1), (200, 0), (250, 0), (300, 0), (10, 0)]
    );
    for state in &states {
        assert_eq!(state.user_id, 1);
        assert_eq!(*state, get(c, 1, state.channel_id).await);
        if state.channel_id != 5 {
            assert!(state.version > before, "{state:?}");
        }
    }
    assert_eq!(
        states[4].version, before,
        "the stale ack of channel 5 changed it"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// DeleteReadStates
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deleted_states_read_as_zeros_and_are_recreated_from_zeros() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    for channel in [1, 2, 3] {
        ack(c, 1, channel, 100).await;
        add_one(c, 1, channel, 150).await;
        pins(c, 1, channel, 1_000).await;
    }
    let (_, before) = user_states(c, 1, None).await;

    let deleted = delete(c, 1, &[1, 2, 4]).await;
    assert_eq!(channels_of(&deleted), [1, 2, 4]);
    for state in &deleted {
        assert_eq!(state.user_id, 1);
        assert_eq!(
            (
                state.last_message_id,
                state.mention_count,
                state.last_pin_timestamp_ms
            ),
            (0, 0, 0)
        );
    }
    assert!(deleted[0].version > before);

    for channel in [1, 2, 4] {
        assert_zeros(&get(c, 1, channel).await, 1, channel);
    }
    let (states, version) = user_states(c, 1, None).await;
    assert_eq!(channels_of(&states), [3], "deleted states are gone");
    assert!(version >= before);
    let (delta, _) = user_states(c, 1, Some(before)).await;
    assert!(delta.is_empty(), "deletions are not reported: {delta:?}");

    // A later change starts from zeros: the old position, mention and pins
    // do not come back.
    let recreated = ack(c, 1, 1, 50).await;
    assert_eq!(
        (
            recreated.last_message_id,
            recreated.mention_count,
            recreated.last_pin_timestamp_ms
        ),
        (50, 0, 0)
    );
    assert!(recreated.version > deleted[0].version);
    let mention = add_one(c, 1, 2, 10).await;
    assert_eq!((mention.last_message_id, mention.mention_count), (0, 1));
    let (states, _) = user_states(c, 1, None).await;
    assert_eq!(channels_of(&states), [1, 2, 3]);
    server.shutdown().await;
}

#[tokio::test]
async fn deletions_of_stored_states_persist() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.delay_ms = 100;
    config.flush.tick_ms = 20;
    let store = common::InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    let c = &mut server.client;

    for channel in [1, 2, 3] {
        add_one(c, 1, channel, 100).await;
    }
    // Wait until the states are stored and clean, then delete two.
    let flushed = common::eventually(Duration::from_secs(5), async || {
        common::stored(store.as_ref(), 1).await.len() == 3
    })
    .await;
    assert!(flushed, "the states were not flushed");
    delete(c, 1, &[1, 2]).await;
    server.shutdown().await;

    // A fresh server over the same store: the deletions were written.
    let mut server = TestServer::start(&config, store.clone()).await;
    let c = &mut server.client;
    for channel in [1, 2] {
        assert_zeros(&get(c, 1, channel).await, 1, channel);
    }
    let (states, _) = user_states(c, 1, None).await;
    assert_eq!(channels_of(&states), [3]);
    assert_eq!(states[0].mention_count, 1);
    let recreated = add_one(c, 1, 1, 100).await;
    assert_eq!(recreated.mention_count, 1, "recreated from zeros");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2.7 Validation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ack_validates_ids() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    for manual in [false, true] {
        assert_invalid(c.ack(ack_req(0, 1, 1, manual)).await, "user_id");
        assert_invalid(c.ack(ack_req(TOO_LARGE, 1, 1, manual)).await, "user_id");
        assert_invalid(c.ack(ack_req(u64::MAX, 1, 1, manual)).await, "user_id");
        assert_invalid(c.ack(ack_req(1, 0, 1, manual)).await, "channel_id");
        assert_invalid(c.ack(ack_req(1, TOO_LARGE, 1, manual)).await, "channel_id");
        assert_invalid(c.ack(ack_req(1, 1, TOO_LARGE, manual)).await, "message_id");
    }
    // Nothing was written by the refused calls.
    assert_zeros(&get(c, 1, 1).await, 1, 1);
    // The largest valid ids are accepted.
    let state = ack(c, MAX_ID, MAX_ID, MAX_ID).await;
    assert_eq!(
        (state.user_id, state.channel_id, state.last_message_id),
        (MAX_ID, MAX_ID, MAX_ID)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bulk_ack_validates_ids_and_list_size() {
    let (_dir, mut server) = start_with(|config| config.limits.max_bulk_acks = 3).await;
    let c = &mut server.client;

    assert_invalid(c.bulk_ack(bulk_req(0, &[(1, 1)])).await, "user_id");
    assert_invalid(c.bulk_ack(bulk_req(TOO_LARGE, &[(1, 1)])).await, "user_id");
    assert_invalid(c.bulk_ack(bulk_req(1, &[])).await, "acks");
    assert_invalid(
        c.bulk_ack(bulk_req(1, &[(1, 1), (2, 1), (3, 1), (4, 1)]))
            .await,
        "acks",
    );
    assert_invalid(
        c.bulk_ack(bulk_req(1, &[(1, 1), (0, 1)])).await,
        "channel_id",
    );
    assert_invalid(
        c.bulk_ack(bulk_req(1, &[(1, 1), (TOO_LARGE, 1)])).await,
        "channel_id",
    );
    assert_invalid(
        c.bulk_ack(bulk_req(1, &[(1, 1), (2, TOO_LARGE)])).await,
        "message_id",
    );
    // A refused bulk ack applies none of its acks.
    assert_zeros(&get(c, 1, 1).await, 1, 1);
    // At the limit it is accepted.
    let states = bulk_ack(c, 1, &[(1, 1), (2, 1), (3, 1)]).await;
    assert_eq!(states.len(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn add_and_remove_mentions_validate_ids_and_list_size() {
    let (_dir, mut server) = start_with(|config| config.limits.max_mention_users = 5).await;
    let c = &mut server.client;

    for remove in [false, true] {
        macro_rules! call {
            ($channel:expr, $message:expr, $users:expr) => {
                if remove {
                    c.remove_mentions(remove_req($channel, $message, $users))
                        .await
                        .map(|r| r.map(|r| r.read_states))
                } else {
                    c.add_mentions(add_req($channel, $message, $users))
                        .await
                        .map(|r| r.map(|r| r.read_states))
                }
            };
        }
        assert_invalid(call!(0, 1, vec![1]), "channel_id");
        assert_invalid(call!(TOO_LARGE, 1, vec![1]), "channel_id");
        assert_invalid(call!(1, 0, vec![1]), "message_id");
        assert_invalid(call!(1, TOO_LARGE, vec![1]), "message_id");
        assert_invalid(call!(1, 1, vec![]), "user_ids");
        assert_invalid(call!(1, 1, vec![1, 0]), "user_ids");
        assert_invalid(call!(1, 1, vec![1, TOO_LARGE]), "user_ids");
        assert_invalid(call!(1, 1, vec![1, u64::MAX]), "user_ids");
        assert_invalid(call!(1, 1, (1..=6).collect()), "user_ids");
        // At the limit it is accepted.
        let accepted = call!(1, 1, (1..=5).collect()).unwrap().into_inner();
        assert_eq!(accepted.len(), 5);
        let expected = if remove { 0 } else { 1 };
        assert!(accepted.iter().all(|s| s.mention_count == expected));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn refused_fan_out_changes_no_user() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    assert_invalid(
        c.add_mentions(add_req(1, 5, vec![1, 2, 0])).await,
        "user_ids",
    );
    for user in [1, 2] {
        assert_zeros(&get(c, user, 1).await, user, 1);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn ack_pins_and_reads_validate_ids() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    let pins_req = |user_id, channel_id| AckPinsRequest {
        user_id,
        channel_id,
        pin_timestamp_ms: 1,
    };
    assert_invalid(c.ack_pins(pins_req(0, 1)).await, "user_id");
    assert_invalid(c.ack_pins(pins_req(TOO_LARGE, 1)).await, "user_id");
    assert_invalid(c.ack_pins(pins_req(1, 0)).await, "channel_id");
    assert_invalid(c.ack_pins(pins_req(1, TOO_LARGE)).await, "channel_id");

    let get_req = |user_id, channel_id| GetReadStateRequest {
        user_id,
        channel_id,
    };
    assert_invalid(c.get_read_state(get_req(0, 1)).await, "user_id");
    assert_invalid(c.get_read_state(get_req(TOO_LARGE, 1)).await, "user_id");
    assert_invalid(c.get_read_state(get_req(1, 0)).await, "channel_id");
    assert_invalid(c.get_read_state(get_req(1, TOO_LARGE)).await, "channel_id");

    for since_version in [None, Some(5)] {
        for user_id in [0, TOO_LARGE, u64::MAX] {
            let request = GetUserReadStatesRequest {
                user_id,
                since_version,
            };
            assert_invalid(c.get_user_read_states(request).await, "user_id");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn delete_read_states_validates_ids_and_list_size() {
    let (_dir, mut server) = start_with(|config| config.limits.max_delete_channels = 3).await;
    let c = &mut server.client;

    let req = |user_id, channel_ids: Vec<u64>| DeleteReadStatesRequest {
        user_id,
        channel_ids,
    };
    assert_invalid(c.delete_read_states(req(0, vec![1])).await, "user_id");
    assert_invalid(
        c.delete_read_states(req(TOO_LARGE, vec![1])).await,
        "user_id",
    );
    assert_invalid(c.delete_read_states(req(1, vec![])).await, "channel_ids");
    assert_invalid(
        c.delete_read_states(req(1, vec![1, 2, 3, 4])).await,
        "channel_ids",
    );
    ack(c, 1, 1, 5).await;
    assert_invalid(
        c.delete_read_states(req(1, vec![1, 0])).await,
        "channel_ids",
    );
    assert_invalid(
        c.delete_read_states(req(1, vec![1, TOO_LARGE])).await,
        "channel_ids",
    );
    assert_eq!(
        get(c, 1, 1).await.last_message_id,
        5,
        "a refused delete deletes nothing"
    );
    assert_eq!(delete(c, 1, &[1, 2, 3]).await.len(), 3);
    assert_zeros(&get(c, 1, 1).await, 1, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn default_limits_are_ten_thousand_mentioned_users_and_a_thousand_acks() {
    let (_dir, mut server) = start().await;
    let c = &mut server.client;

    let too_many: Vec<u64> = (1..=10_001).collect();
    assert_invalid(
        c.add_mentions(add_req(1, 1, too_many.clone())).await,
        "user_ids",
    );
    assert_invalid(
        c.remove_mentions(remove_req(1, 1, too_many)).await,
        "user_ids",
    );
    let at_limit: Vec<u64> = (1..=10_000).collect();
    assert_eq!(add(c, 1, 1, &at_limit).await.len(), 10_000);

    let acks: Vec<(u64, u64)> = (1..=1_001).map(|channel| (channel, 5)).collect();
    assert_invalid(c.bulk_ack(bulk_req(1, &acks)).await, "acks");
    assert_eq!(bulk_ack(c, 1, &acks[..1_000]).await.len(), 1_000);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Health and reflection
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_reports_serving_for_the_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let (_dir, server) = start().await;
    let channel = common::channel(server.running.addr).await;
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: "readstates.v1.ReadStates".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);

    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.shutdown().await;
}

/// Reflection answers in both protocol versions: v1, and v1alpha, which
/// much tooling still speaks.
macro_rules! reflection_test {
    ($name:ident, $version:ident) => {
        #[tokio::test]
        async fn $name() {
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, ServerReflectionResponse,
            };

            let (_dir, server) = start().await;
            let channel = common::channel(server.running.addr).await;
            let mut reflection = ServerReflectionClient::new(channel);
            let requests = [
                MessageRequest::ListServices(String::new()),
                MessageRequest::FileContainingSymbol("readstates.v1.ReadStates".to_owned()),
            ]
            .map(|request| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            });
            let mut stream = reflection
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .unwrap()
                .into_inner();

            let next =
                |response: Option<ServerReflectionResponse>| response.unwrap().message_response;
            match next(stream.message().await.unwrap()) {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
                    assert!(names.contains(&"readstates.v1.ReadStates"), "{names:?}");
                    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
                }
                other => panic!("expected a service list, got {other:?}"),
            }
            match next(stream.message().await.unwrap()) {
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    assert!(!files.file_descriptor_proto.is_empty());
                }
                other => panic!("expected a file descriptor, got {other:?}"),
            }
            drop(stream);
            server.shutdown().await;
        }
    };
}

reflection_test!(reflection_v1_lists_the_service, v1);
reflection_test!(reflection_v1alpha_lists_the_service, v1alpha);
