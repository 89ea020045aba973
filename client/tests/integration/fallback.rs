//! With the cluster off, the service answers GetRouting with
//! FAILED_PRECONDITION: the client routes round-robin over the given
//! addresses, and every call works against a real server.

use readstates_client::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetReadStateRequest, GetUserReadStatesRequest, ReadState,
    RemoveMentionsRequest,
};
use readstates_client::{Code, ConnectError, ReadStatesClient};

use crate::fake::Fake;
use crate::service::Service;

fn ack(user_id: u64, channel_id: u64, message_id: u64) -> AckRequest {
    AckRequest {
        user_id,
        channel_id,
        message_id,
        manual: false,
        mention_count: None,
    }
}

/// Returns `(last_message_id, mention_count)` of `state`.
fn read(state: &Option<ReadState>) -> (u64, u32) {
    let state = state.as_ref().expect("a state");
    (state.last_message_id, state.mention_count)
}

#[tokio::test]
async fn every_call_works_with_the_cluster_off() {
    let service = Service::start().await;
    let client = service.client().await;
    assert!(client.slot_map().is_none(), "the cluster is off");

    let acked = client.ack(ack(1, 7, 100)).await.unwrap();
    assert_eq!(read(&acked.read_state), (100, 0));
    let bulk = BulkAckRequest {
        user_id: 1,
        acks: vec![
            ChannelAck {
                channel_id: 8,
                message_id: 50,
            },
            ChannelAck {
                channel_id: 9,
                message_id: 60,
            },
        ],
    };
    let bulk = client.bulk_ack(bulk).await.unwrap();
    let channels: Vec<(u64, u64)> = bulk
        .read_states
        .iter()
        .map(|state| (state.channel_id, state.last_message_id))
        .collect();
    assert_eq!(channels, vec![(8, 50), (9, 60)]);

    let mention = |user_ids: Vec<u64>| AddMentionsRequest {
        channel_id: 7,
        message_id: 200,
        user_ids,
        omit_read_states: false,
    };
    let added = client.add_mentions(mention(vec![1, 2])).await.unwrap();
    let counts: Vec<(u64, u32)> = added
        .read_states
        .iter()
        .map(|state| (state.user_id, state.mention_count))
        .collect();
    assert_eq!(counts, vec![(1, 1), (2, 1)]);
    // A retried (here: repeated) fan-out counts once.
    client.add_mentions(mention(vec![1, 2])).await.unwrap();
    let removed = RemoveMentionsRequest {
        channel_id: 7,
        message_id: 200,
        user_ids: vec![2],
    };
    let removed = client.remove_mentions(removed).await.unwrap();
    assert_eq!(removed.read_states[0].mention_count, 0);

    let manual = AckRequest {
        manual: true,
        mention_count: Some(3),
        ..ack(1, 7, 40)
    };
    let unread = client.ack(manual).await.unwrap();
    assert_eq!(read(&unread.read_state), (40, 3));

    let pins = AckPinsRequest {
        user_id: 1,
        channel_id: 7,
        pin_timestamp_ms: 1_700_000_000_000,
    };
    let pins = client.ack_pins(pins).await.unwrap();
    assert_eq!(
        pins.read_state.unwrap().last_pin_timestamp_ms,
        1_700_000_000_000
    );

    let one = GetReadStateRequest {
        user_id: 1,
        channel_id: 7,
    };
    let one = client.get_read_state(one).await.unwrap();
    assert_eq!(read(&one.read_state), (40, 3));

    let all = GetUserReadStatesRequest {
        user_id: 1,
        since_version: None,
    };
    let all = client.get_user_read_states(all).await.unwrap();
    assert_eq!(all.read_states.len(), 3);
    let version = all.version;

    let delete = DeleteReadStatesRequest {
        user_id: 1,
        channel_ids: vec![8],
    };
    let deleted = client.delete_read_states(delete).await.unwrap();
    assert_eq!(deleted.read_states[0].last_message_id, 0);
    let delta = GetUserReadStatesRequest {
        user_id: 1,
        since_version: Some(version),
    };
    let delta = client.get_user_read_states(delta).await.unwrap();
    assert!(delta.read_states.is_empty() && !delta.reset);
    let deleted: Vec<u64> = delta.deleted.iter().map(|pair| pair.channel_id).collect();
    assert_eq!(deleted, vec![8]);

    // The service's own refusals come back as they are.
    let refused = client.ack(ack(0, 7, 1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    service.shutdown().await;
}

#[tokio::test]
async fn a_fan_out_answers_in_user_ids_order() {
    let service = Service::start().await;
    let client = service.client().await;
    // Some users known (cached) first, the rest new; duplicates too.
    for user_id in (10..40).step_by(3) {
        client.ack(ack(user_id, 7, 1)).await.unwrap();
    }
    let user_ids: Vec<u64> = (10..40).rev().chain([11, 39, 10]).collect();
    let added = AddMentionsRequest {
        channel_id: 7,
        message_id: 50,
        user_ids: user_ids.clone(),
        omit_read_states: false,
    };
    let added = client.add_mentions(added).await.unwrap();
    let order: Vec<u64> = added
        .read_states
        .iter()
        .map(|state| state.user_id)
        .collect();
    assert_eq!(order, user_ids);
    assert!(
        added
            .read_states
            .iter()
            .all(|state| state.mention_count == 1)
    );
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
    service.shutdown().await;
}

#[tokio::test]
async fn calls_alternate_over_the_given_addresses() {
    let (first, second) = (Fake::start(1).await, Fake::start(2).await);
    let client = ReadStatesClient::builder()
        .addresses([first.address(), second.address()])
        .connect()
        .await
        .unwrap();
    assert!(client.slot_map().is_none());
    for user_id in 1..=6 {
        client.ack(ack(user_id, 7, 1)).await.unwrap();
    }
    assert_eq!(first.script.calls().len(), 3);
    assert_eq!(second.script.calls().len(), 3);
}

#[tokio::test]
async fn connecting_fails_clearly_when_no_address_answers() {
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = ReadStatesClient::builder()
        .addresses([closed.to_string()])
        .connect()
        .await
        .unwrap_err();
    match &error {
        ConnectError::GetRoutingFailed { tried: 1, status } => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        other => panic!("{other:?}"),
    }
    let error = ReadStatesClient::builder().connect().await.unwrap_err();
    assert!(matches!(error, ConnectError::NoAddresses), "{error:?}");
    let error = ReadStatesClient::builder()
        .addresses(["https://localhost:1"])
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ConnectError::InvalidAddress { reason, .. } if reason.contains("tls")),
        "{error:?}"
    );
}
