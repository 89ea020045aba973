//! Routing by the slot map, against scripted instances whose GetRouting
//! names each other as the owners of the slots.

use std::time::Duration;

use readstates::api::proto::GetRoutingResponse;
use readstates_client::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetReadStateRequest, GetUserReadStatesRequest, RemoveMentionsRequest,
};
use readstates_client::routing::{SlotMapError, slot_of};
use readstates_client::{Code, ConnectError, ReadStatesClient, Status};

use crate::fake::{Fake, Step, slot_map};

const SLOTS: u32 = 16;

fn ack(user_id: u64, manual: bool) -> AckRequest {
    AckRequest {
        user_id,
        channel_id: 7,
        message_id: 100,
        manual,
        mention_count: None,
    }
}

/// Instances "a" (marker 1) and "b" (marker 2), both answering `map`.
async fn two_instances(holder: impl Fn(u32) -> Option<usize>) -> (Fake, Fake, GetRoutingResponse) {
    let (a, b) = (Fake::start(1).await, Fake::start(2).await);
    let map = slot_map(SLOTS, &[("a", a.address()), ("b", b.address())], holder);
    a.script.set_routing(map.clone());
    b.script.set_routing(map.clone());
    (a, b, map)
}

/// A client that knows only `seed`, with no background refresh.
async fn client_of(seed: &Fake) -> ReadStatesClient {
    ReadStatesClient::builder()
        .addresses([seed.address()])
        .refresh_interval(Duration::ZERO)
        .retry(
            readstates_client::RetryPolicy::default()
                .backoff(Duration::from_millis(1), Duration::from_millis(5)),
        )
        .connect()
        .await
        .unwrap()
}

fn by_parity(slot: u32) -> Option<usize> {
    Some((slot % 2) as usize)
}

#[tokio::test]
async fn each_call_goes_to_the_owner_the_slot_map_names() {
    let (a, b, _) = two_instances(by_parity).await;
    let client = client_of(&a).await;
    let map = client.slot_map().expect("a slot map");
    assert_eq!(map.slot_count(), SLOTS);
    for user_id in 1..=20 {
        client.ack(ack(user_id, false)).await.unwrap();
        let bulk = BulkAckRequest {
            user_id,
            acks: vec![ChannelAck {
                channel_id: 8,
                message_id: 1,
            }],
        };
        client.bulk_ack(bulk).await.unwrap();
        let pins = AckPinsRequest {
            user_id,
            channel_id: 7,
            pin_timestamp_ms: 1,
        };
        client.ack_pins(pins).await.unwrap();
        let one = GetReadStateRequest {
            user_id,
            channel_id: 7,
        };
        let one = client.get_read_state(one).await.unwrap();
        let marker = one.read_state.unwrap().updated_at_ms;
        assert_eq!(marker, u64::from(slot_of(user_id, SLOTS) % 2) + 1);
        let all = GetUserReadStatesRequest {
            user_id,
            since_version: None,
        };
        client.get_user_read_states(all).await.unwrap();
        let delete = DeleteReadStatesRequest {
            user_id,
            channel_ids: vec![8],
        };
        client.delete_read_states(delete).await.unwrap();
    }
    for (instance, parity) in [(&a, 0), (&b, 1)] {
        let calls = instance.script.calls();
        assert_eq!(calls.len() % 6, 0, "every method of each of its users");
        assert!(!calls.is_empty());
        for call in calls {
            let slot = slot_of(call.user_ids[0], SLOTS);
            assert_eq!(slot % 2, parity, "{} of {:?}", call.method, call.user_ids);
        }
    }
}

#[tokio::test]
async fn a_fan_out_is_split_by_owner_and_merged_in_request_order() {
    // Every third slot has no known holder: its users go to the seed, "a".
    let holder = |slot: u32| (slot % 3 != 2).then_some((slot % 2) as usize);
    let (a, b, _) = two_instances(holder).await;
    let client = client_of(&a).await;
    let expected_marker = |user_id: u64| match holder(slot_of(user_id, SLOTS)) {
        Some(index) => index as u64 + 1,
        None => 1,
    };
    let user_ids: Vec<u64> = (1..=40).rev().chain([5, 5, 17]).collect();
    let added = AddMentionsRequest {
        channel_id: 7,
        message_id: 50,
        user_ids: user_ids.clone(),
        omit_read_states: false,
    };
    let added = client.add_mentions(added).await.unwrap();
    let answered: Vec<(u64, u64)> = added
        .read_states
        .iter()
        .map(|state| (state.user_id, state.updated_at_ms))
        .collect();
    let expected: Vec<(u64, u64)> = user_ids
        .iter()
        .map(|&user_id| (user_id, expected_marker(user_id)))
        .collect();
    assert_eq!(answered, expected);
    // Each instance got only its own users (and "a" the unknown slots').
    for user_id in b.script.users() {
        assert_eq!(holder(slot_of(user_id, SLOTS)), Some(1), "user {user_id}");
    }
    let mut received: Vec<u64> = a.script.users();
    received.extend(b.script.users());
    received.sort_unstable();
    let mut sent = user_ids.clone();
    sent.sort_unstable();
    assert_eq!(received, sent, "every user sent once");

    let removed = RemoveMentionsRequest {
        channel_id: 7,
        message_id: 50,
        user_ids: user_ids.clone(),
    };
    let removed = client.remove_mentions(removed).await.unwrap();
    let order: Vec<u64> = removed
        .read_states
        .iter()
        .map(|state| state.user_id)
        .collect();
    assert_eq!(order, user_ids);

    let omitted = AddMentionsRequest {
        channel_id: 7,
        message_id: 51,
        user_ids: user_ids.clone(),
        omit_read_states: true,
    };
    let omitted = client.add_mentions(omitted).await.unwrap();
    assert!(omitted.read_states.is_empty());
}

#[tokio::test]
async fn a_failed_part_fails_the_fan_out_with_its_status() {
    let (a, b, _) = two_instances(by_parity).await;
    let client = client_of(&a).await;
    b.script
        .always_fail(Status::invalid_argument("user_ids has 10001 entries"));
    let added = AddMentionsRequest {
        channel_id: 7,
        message_id: 50,
        user_ids: (1..=20).collect(),
        omit_read_states: false,
    };
    let failed = client.add_mentions(added).await.unwrap_err();
    assert_eq!(failed.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_unavailable_naming_a_slot_refreshes_the_map_at_once() {
    let (a, b, _) = two_instances(|_| Some(0)).await;
    let client = client_of(&a).await;
    assert_eq!(
        client.slot_map().unwrap().owner_of(1).unwrap().instance_id,
        "a"
    );
    // Every slot moves to "b"; "a" still gets user 1's next call.
    let moved = slot_map(SLOTS, &[("a", a.address()), ("b", b.address())], |_| {
        Some(1)
    });
    a.script.set_routing(moved.clone());
    b.script.set_routing(moved);
    a.script.then([Step::Fail(Status::unavailable(
        "user_id 1 is in slot 9, which this instance does not serve; retry with backoff while \
         slots move",
    ))]);
    client.ack(ack(1, false)).await.unwrap();
    assert_eq!(a.script.calls().len(), 1);
    assert_eq!(b.script.calls().len(), 1, "the retry went to the new owner");
    assert_eq!(
        client.slot_map().unwrap().owner_of(1).unwrap().instance_id,
        "b"
    );

    // A manual ack is not retried, but the map is still read again.
    let back = slot_map(SLOTS, &[("a", a.address()), ("b", b.address())], |_| {
        Some(0)
    });
    a.script.set_routing(back.clone());
    b.script.set_routing(back);
    b.script.then([Step::Fail(Status::unavailable(
        "user_id 1 is not served by this instance now; its slot is moving: retry with backoff",
    ))]);
    let refused = client.ack(ack(1, true)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    let moved_back =
        eventually(|| client.slot_map().unwrap().owner_of(1).unwrap().instance_id == "a").await;
    assert!(moved_back, "the map was not read again");
    assert_eq!(b.script.calls().len(), 2, "the manual ack was sent once");
}

#[tokio::test]
async fn the_slot_map_is_read_again_in_the_background() {
    let (a, b, _) = two_instances(|_| Some(0)).await;
    let client = ReadStatesClient::builder()
        .addresses([a.address()])
        .refresh_interval(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let moved = slot_map(SLOTS, &[("b", b.address())], |_| Some(0));
    a.script.set_routing(moved);
    let read_again = eventually(|| client.slot_map().unwrap().owners()[0].instance_id == "b").await;
    assert!(read_again);
    client.ack(ack(1, false)).await.unwrap();
    assert_eq!(b.script.calls().len(), 1);
    // The refresh stops with the client.
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reads = a.script.routing_reads();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.script.routing_reads(), reads);
}

#[tokio::test]
async fn a_slot_map_with_an_unknown_hash_is_not_routed_by() {
    let (a, _b, mut map) = two_instances(by_parity).await;
    let client = client_of(&a).await;
    map.slot_hash = "murmur3-mod".to_owned();
    a.script.set_routing(map);
    let error = ReadStatesClient::builder()
        .addresses([a.address()])
        .connect()
        .await
        .unwrap_err();
    let expected = SlotMapError::UnknownSlotHash {
        name: "murmur3-mod".to_owned(),
    };
    assert!(
        matches!(&error, ConnectError::SlotMap(error) if *error == expected),
        "{error:?}"
    );
    // A running client drops to round-robin over the given addresses.
    let refreshed = client.refresh_routing().await;
    assert!(matches!(refreshed, Err(ConnectError::SlotMap(_))));
    assert!(client.slot_map().is_none());
    client.ack(ack(1, false)).await.unwrap();
}

/// Polls `condition` every 10 ms for up to 5 s.
async fn eventually(condition: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
