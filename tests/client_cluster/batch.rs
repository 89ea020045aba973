//! A round of every kind of call through the client, over users of every
//! owner, each answer checked against what the rounds so far must have
//! left: round `r` acks channel 1 to `base(r) + user` (and its pins to
//! `base(r) + 7`), channels 2 and 3 to `base(r) + 2` and `+ 3` by a bulk
//! ack, mentions channel 4 in six new messages and removes three of them
//! (so `3 r` mentions after it), and acks then deletes channel 9. A call
//! that fails once the client has given up is sent again (every call here
//! is idempotent) and counted; only `UNAVAILABLE` and `DEADLINE_EXCEEDED`,
//! what the client retries, may fail.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use readstates_client::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetReadStateRequest, GetUserReadStatesRequest, RemoveMentionsRequest,
};
use readstates_client::{Code, ReadStatesClient, Status};
use tokio::time::Instant;

use readstates::config::ScyllaConfig;

use crate::common::cluster::Cluster;
use crate::common::routing::{lease_table, slot_of};
use crate::support::{self, Instance, Retries, client_map, forwards, placed, settled};

/// How long one call may keep failing (a killed owner's lease runs out,
/// the slots move, the client reads the map again).
const GIVE_UP: Duration = Duration::from_secs(30);

/// Calls made, sends that failed after the client's retries, and sends
/// that failed without them though they should not have (see
/// [`support::unretried`]).
#[derive(Default)]
pub struct Tally {
    pub calls: AtomicU64,
    pub failed: AtomicU64,
    pub unretried: AtomicU64,
}

impl Tally {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    pub fn unretried(&self) -> u64 {
        self.unretried.load(Ordering::SeqCst)
    }
}

/// Sends a call (`send` makes it) until it succeeds; counts each failure,
/// which must be one the client retries (or one it should have retried,
/// counted apart), and waits 100 ms after it.
pub async fn send<T, F, Fut>(tally: &Tally, what: &str, mut send: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    tally.calls.fetch_add(1, Ordering::SeqCst);
    let began = Instant::now();
    loop {
        let status = match send().await {
            Ok(answer) => return answer,
            Err(status) => status,
        };
        assert!(
            began.elapsed() < GIVE_UP,
            "{what} kept failing for {GIVE_UP:?}: {status:?}"
        );
        if support::unretried(&status) {
            println!("{what} failed, not retried: {status:?}");
            tally.unretried.fetch_add(1, Ordering::SeqCst);
        } else {
            assert!(
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{what} failed with a status the client does not retry: {status:?}"
            );
            tally.failed.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first message id of round `round`.
fn base(round: u64) -> u64 {
    round * 1_000_000
}

/// Runs round `round` (1, 2, ...: one after the other) over `users`.
pub async fn run_round(client: &ReadStatesClient, users: &[u64], round: u64, tally: &Tally) {
    let base = base(round);
    // Acks, a bulk ack and pins, every user at once.
    join_all(users.iter().map(|&user| async move {
        let ack = AckRequest {
            user_id: user,
            channel_id: 1,
            message_id: base + user,
            ..Default::default()
        };
        let acked = send(tally, "Ack", || client.ack(ack)).await;
        assert_eq!(acked.read_state.unwrap().last_message_id, base + user);
        let bulk = BulkAckRequest {
            user_id: user,
            acks: [2, 3]
                .map(|channel_id| ChannelAck {
                    channel_id,
                    message_id: base + channel_id,
                })
                .to_vec(),
        };
        let bulk = send(tally, "BulkAck", || client.bulk_ack(bulk.clone())).await;
        let acked: Vec<(u64, u64, u64)> = bulk
            .read_states
            .iter()
            .map(|state| (state.user_id, state.channel_id, state.last_message_id))
            .collect();
        assert_eq!(acked, [(user, 2, base + 2), (user, 3, base + 3)]);
        let pins = AckPinsRequest {
            user_id: user,
            channel_id: 1,
            pin_timestamp_ms: base + 7,
        };
        let pinned = send(tally, "AckPins", || client.ack_pins(pins)).await;
        let pinned = pinned.read_state.unwrap();
        assert_eq!(
            (pinned.last_message_id, pinned.last_pin_timestamp_ms),
            (base + user, base + 7)
        );
    }))
    .await;

    // Fan-outs over every user, in a new order each time: six mentions,
    // then three of them removed.
    let before = 3 * (round - 1);
    for k in 1..=9_u64 {
        let mut user_ids = users.to_vec();
        user_ids.rotate_left((k as usize * 7) % users.len());
        if k % 2 == 0 {
            user_ids.reverse();
        }
        let (states, expected) = if k <= 6 {
            let request = AddMentionsRequest {
                channel_id: 4,
                message_id: base + k,
                user_ids: user_ids.clone(),
                omit_read_states: false,
            };
            let added = send(tally, "AddMentions", || {
                client.add_mentions(request.clone())
            })
            .await;
            (added.read_states, before + k)
        } else {
            let request = RemoveMentionsRequest {
                channel_id: 4,
                message_id: base + k - 6,
                user_ids: user_ids.clone(),
            };
            let removed = send(tally, "RemoveMentions", || {
                client.remove_mentions(request.clone())
            })
            .await;
            (removed.read_states, before + 6 - (k - 6))
        };
        let answered: Vec<(u64, u64, u64)> = states
            .iter()
            .map(|state| {
                (
                    state.user_id,
                    state.channel_id,
                    u64::from(state.mention_count),
                )
            })
            .collect();
        let wanted: Vec<(u64, u64, u64)> = user_ids.iter().map(|&u| (u, 4, expected)).collect();
        assert_eq!(answered, wanted, "fan-out {k} of round {round}");
    }

    // Reads, and a state made then deleted, every user at once.
    join_all(users.iter().map(|&user| async move {
        let one = GetReadStateRequest {
            user_id: user,
            channel_id: 1,
        };
        let one = send(tally, "GetReadState", || client.get_read_state(one)).await;
        let one = one.read_state.unwrap();
        assert_eq!(
            (one.last_message_id, one.last_pin_timestamp_ms),
            (base + user, base + 7),
            "user {user}"
        );
        let all = GetUserReadStatesRequest {
            user_id: user,
            since_version: None,
        };
        let all = send(tally, "GetUserReadStates", || {
            client.get_user_read_states(all)
        })
        .await;
        let states: BTreeMap<u64, (u64, u32)> = all
            .read_states
            .iter()
            .map(|state| {
                (
                    state.channel_id,
                    (state.last_message_id, state.mention_count),
                )
            })
            .collect();
        let expected = BTreeMap::from([
            (1, (base + user, 0)),
            (2, (base + 2, 0)),
            (3, (base + 3, 0)),
            (4, (0, 3 * round as u32)),
        ]);
        assert_eq!(states, expected, "every state of user {user}");
        let ack = AckRequest {
            user_id: user,
            channel_id: 9,
            message_id: base + 9,
            ..Default::default()
        };
        send(tally, "Ack", || client.ack(ack)).await;
        let delete = DeleteReadStatesRequest {
            user_id: user,
            channel_ids: vec![9],
        };
        let deleted = send(tally, "DeleteReadStates", || {
            client.delete_read_states(delete.clone())
        })
        .await;
        let deleted: Vec<(u64, u64, u64)> = deleted
            .read_states
            .iter()
            .map(|state| (state.user_id, state.channel_id, state.last_message_id))
            .collect();
        assert_eq!(deleted, [(user, 9, 0)], "the delete of user {user}");
    }))
    .await;
}

/// Reads the map again and checks it: the lease table, placement over
/// `live`, and every user's owner the instance its calls go to; then runs
/// a round and checks that it made no forward, no retry and no failure.
#[allow(clippy::too_many_arguments)]
pub async fn steady_round(
    cluster: &Cluster,
    settings: &ScyllaConfig,
    client: &ReadStatesClient,
    live: &[&Instance],
    users: &[u64],
    round: &mut u64,
    tally: &Tally,
    phase: &str,
) {
    client.refresh_routing().await.unwrap();
    let map = client.slot_map().expect("the cluster's slot map");
    let table = lease_table(cluster, settings).await;
    assert_eq!(
        table,
        placed(live),
        "{phase}: placement over the live instances"
    );
    assert_eq!(
        client_map(&map),
        table,
        "{phase}: the client's map is the lease table"
    );
    let mut users_per_owner: BTreeMap<String, usize> = BTreeMap::new();
    for &user in users {
        let owner = map.owner_of(user).expect("every slot has an owner");
        let (holder, address) = &table[&slot_of(user)];
        assert_eq!(
            (&owner.instance_id, &owner.address),
            (holder, address),
            "user {user}"
        );
        *users_per_owner
            .entry(owner.instance_id.clone())
            .or_default() += 1;
    }
    assert_eq!(
        users_per_owner.len(),
        live.len(),
        "{phase}: users of every owner"
    );

    let (forwarded, retries, calls, failed) = (
        forwards(live).await,
        Retries::now(),
        tally.calls(),
        tally.failed() + tally.unretried(),
    );
    *round += 1;
    run_round(client, users, *round, tally).await;
    let forwarded = forwards(live).await - forwarded;
    let retries = Retries::since(retries);
    let failed = tally.failed() + tally.unretried() - failed;
    let calls = tally.calls() - calls;
    println!(
        "{phase}: settled round: {calls} calls over {users_per_owner:?}: {forwarded} forwards, \
         {} retries, {failed} failed",
        retries.retried
    );
    assert_eq!(forwarded, 0, "{phase}: every call went to its owner");
    assert_eq!(retries, Retries::default(), "{phase}: no call was retried");
    assert_eq!(failed, 0, "{phase}: no call failed");
}

/// Runs rounds (at least one) while the slots move, until they settle on
/// `live`; prints what the calls met.
pub async fn moving_rounds(
    client: &ReadStatesClient,
    live: &[&Instance],
    users: &[u64],
    round: &mut u64,
    tally: &Tally,
    phase: &str,
) {
    let began = Instant::now();
    let (retries, calls, failed, unretried) = (
        Retries::now(),
        tally.calls(),
        tally.failed(),
        tally.unretried(),
    );
    let mut rounds = 0;
    loop {
        *round += 1;
        rounds += 1;
        run_round(client, users, *round, tally).await;
        if settled(live).await {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "{phase}: the slots never settled"
        );
    }
    let retries = Retries::since(retries);
    println!(
        "{phase}: {rounds} rounds while the slots moved ({:?}): {} calls, {} sends failed once \
         the client gave up and were sent again, {} without the retries it should have had; \
         {retries:?}",
        began.elapsed(),
        tally.calls() - calls,
        tally.failed() - failed,
        tally.unretried() - unretried,
    );
}
