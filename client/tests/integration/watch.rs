//! The change stream through the client's `Watch`, against real servers
//! over loopback: catch-ups then every change in each user's version
//! order, deltas from a version, a restart of the server on its address
//! and store; and, in `routed`, users followed at the owners a slot map
//! names. Copies of the users' states are built only from the events, and
//! must end equal to `GetUserReadStates`.

use std::collections::HashMap;
use std::time::Duration;

use readstates_client::proto::{
    AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck, DeleteReadStatesRequest,
};
use readstates_client::{Code, ReadStatesClient, RetryPolicy, WatchEvent};

use crate::service::Service;

mod follower;
mod routed;

use follower::{Follower, eventually, kind, next, read_all};

fn ack(user_id: u64, channel_id: u64, message_id: u64) -> AckRequest {
    AckRequest {
        user_id,
        channel_id,
        message_id,
        manual: false,
        mention_count: None,
    }
}

#[tokio::test]
async fn a_watch_yields_a_catch_up_then_each_change_in_version_order() {
    let service = Service::start().await;
    let client = service.client().await;
    client.ack(ack(1, 7, 100)).await.unwrap();

    let mut watch = client.watch();
    watch.subscribe(1, 0).unwrap();
    watch.subscribe(2, 0).unwrap();
    for user_id in [0, 1 << 63] {
        let refused = watch.subscribe(user_id, 0).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    let mut follower = Follower::default();
    follower.step(&mut watch).await;
    follower.step(&mut watch).await;
    let first: Vec<(u64, (&str, u64))> = follower
        .events
        .iter()
        .map(|event| (event.user_id(), kind(event)))
        .collect();
    assert!(first.contains(&(1, ("catch_up", 1))), "{first:?}");
    assert!(first.contains(&(2, ("catch_up", 0))), "{first:?}");
    assert_eq!(follower.copies[&1].states[&7].last_message_id, 100);

    let acked = client.ack(ack(1, 8, 50)).await.unwrap();
    let mentioned = AddMentionsRequest {
        channel_id: 7,
        message_id: 200,
        user_ids: vec![1, 2],
        omit_read_states: false,
    };
    let mentioned = client.add_mentions(mentioned).await.unwrap();
    let delete = DeleteReadStatesRequest {
        user_id: 1,
        channel_ids: vec![8],
    };
    let deleted = client.delete_read_states(delete).await.unwrap();
    let bulk = BulkAckRequest {
        user_id: 2,
        acks: vec![
            ChannelAck {
                channel_id: 7,
                message_id: 300,
            },
            ChannelAck {
                channel_id: 9,
                message_id: 10,
            },
        ],
    };
    let bulk = client.bulk_ack(bulk).await.unwrap();
    follower.catch_up_with(&mut watch, &client, &[1, 2]).await;

    // Each call's resulting states, as the calls answered them, in order.
    let one: Vec<(&str, u64)> = follower.events_of(1, 0).into_iter().map(kind).collect();
    assert_eq!(
        one,
        [
            ("catch_up", 1),
            ("changed", 8),
            ("changed", 7),
            ("deleted", 8)
        ]
    );
    let two: Vec<(&str, u64)> = follower.events_of(2, 0).into_iter().map(kind).collect();
    assert_eq!(
        two,
        [
            ("catch_up", 0),
            ("changed", 7),
            ("changed", 7),
            ("changed", 9)
        ]
    );
    let events = follower.events_of(1, 0);
    assert_eq!(*events[1], WatchEvent::Changed(acked.read_state.unwrap()));
    assert_eq!(*events[2], WatchEvent::Changed(mentioned.read_states[0]));
    match events[3] {
        WatchEvent::Deleted(pair) => assert_eq!(pair.version, deleted.read_states[0].version),
        other => panic!("{other:?}"),
    }
    let versions: Vec<u64> = events.iter().map(|event| event.version()).collect();
    assert!(versions.is_sorted() && versions[1] < versions[2] && versions[2] < versions[3]);
    let events = follower.events_of(2, 0);
    assert_eq!(*events[1], WatchEvent::Changed(mentioned.read_states[1]));
    // One call's changes share a version, and come in the order applied.
    assert_eq!(*events[2], WatchEvent::Changed(bulk.read_states[0]));
    assert_eq!(*events[3], WatchEvent::Changed(bulk.read_states[1]));
    assert_eq!(events[2].version(), events[3].version());
    assert!(events[1].version() < events[2].version());
    assert_eq!(
        service.metric("readstates_watch_streams"),
        1.0,
        "one stream"
    );

    // Unsubscribed: none of its later changes comes, whereas the other
    // user's, applied after them, do.
    watch.unsubscribe(1);
    client.ack(ack(1, 7, 400)).await.unwrap();
    let from = follower.events.len();
    client.ack(ack(2, 7, 400)).await.unwrap();
    follower.catch_up_with(&mut watch, &client, &[2]).await;
    assert!(follower.events_of(1, from).is_empty());
    assert_eq!(follower.events.len(), from + 1);

    drop(watch);
    eventually("the dropped watch's stream is closed", || {
        service.metric("readstates_watch_streams") == 0.0
    })
    .await;
    service.shutdown().await;
}

#[tokio::test]
async fn a_subscription_from_a_version_gets_only_what_came_after_it() {
    let service = Service::start().await;
    let client = service.client().await;
    client.ack(ack(5, 1, 10)).await.unwrap();
    client.ack(ack(5, 2, 20)).await.unwrap();
    let before = read_all(&client, 5).await;
    let third = client.ack(ack(5, 3, 30)).await.unwrap();
    let delete = DeleteReadStatesRequest {
        user_id: 5,
        channel_ids: vec![1],
    };
    client.delete_read_states(delete).await.unwrap();
    let after = read_all(&client, 5).await;
    client.ack(ack(6, 1, 10)).await.unwrap();
    let six = read_all(&client, 6).await;

    let mut watch = client.watch();
    watch.subscribe(5, before.version).unwrap();
    watch.subscribe(6, six.version).unwrap();
    let mut catch_ups = HashMap::new();
    for _ in 0..2 {
        match next(&mut watch).await.unwrap() {
            WatchEvent::CatchUp { user_id, delta } => catch_ups.insert(user_id, delta),
            other => panic!("{other:?}"),
        };
    }
    let five = &catch_ups[&5];
    assert!(!five.reset);
    assert_eq!(five.version, after.version);
    assert_eq!(five.read_states, vec![third.read_state.unwrap()]);
    let deleted: Vec<u64> = five.deleted.iter().map(|pair| pair.channel_id).collect();
    assert_eq!(deleted, vec![1]);
    let six_delta = &catch_ups[&6];
    assert!(!six_delta.reset && six_delta.read_states.is_empty() && six_delta.deleted.is_empty());
    assert_eq!(six_delta.version, six.version);

    // Subscribed again from its first version: it starts over from there.
    let from = client.ack(ack(6, 2, 20)).await.unwrap().read_state.unwrap();
    watch.subscribe(6, six.version).unwrap();
    let mut follower = Follower::default();
    loop {
        let event = next(&mut watch).await.unwrap();
        let restarted = matches!(&event, WatchEvent::CatchUp { user_id: 6, delta }
            if delta.read_states == vec![from]);
        follower.apply(event);
        if restarted {
            break;
        }
    }
    let versions: Vec<u64> = follower.events.iter().map(WatchEvent::version).collect();
    assert!(versions.iter().all(|&version| version <= from.version));
    service.shutdown().await;
}

#[tokio::test]
async fn a_watch_resumes_across_a_restart_of_its_server() {
    let service = Service::start().await;
    let client = ReadStatesClient::builder()
        .addresses([service.address()])
        .retry(RetryPolicy::default().max_attempts(10))
        .connect()
        .await
        .unwrap();
    let users: Vec<u64> = (1..=40).collect();
    for &user_id in &users {
        client.ack(ack(user_id, 7, 100)).await.unwrap();
    }
    let mut watch = client.watch();
    for &user_id in &users {
        watch.subscribe(user_id, 0).unwrap();
    }
    let mut follower = Follower::default();
    follower.catch_up_with(&mut watch, &client, &users).await;
    let mention = |channel_id| AddMentionsRequest {
        channel_id,
        message_id: 150,
        user_ids: users.clone(),
        omit_read_states: false,
    };
    client.add_mentions(mention(7)).await.unwrap();
    follower.catch_up_with(&mut watch, &client, &users).await;

    // Stopped (its subscriptions end with SHUTTING_DOWN, its stream with
    // UNAVAILABLE), down for a moment (the watch's attempts to subscribe
    // again fail meanwhile), and started again on the same address and
    // store.
    let from = follower.events.len();
    let held: HashMap<u64, u64> = users
        .iter()
        .map(|&user_id| (user_id, follower.copies[&user_id].version))
        .collect();
    let stopped = service.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let service = stopped.start().await;
    // Changes race with the resubscriptions.
    for &user_id in &users {
        client.ack(ack(user_id, 7, 200)).await.unwrap();
        if user_id % 3 == 0 {
            let delete = DeleteReadStatesRequest {
                user_id,
                channel_ids: vec![7],
            };
            client.delete_read_states(delete).await.unwrap();
        }
    }
    client.add_mentions(mention(8)).await.unwrap();
    follower.catch_up_with(&mut watch, &client, &users).await;
    for &user_id in &users {
        let events = follower.events_of(user_id, from);
        // Resubscribed with the last version delivered: a plain delta (a
        // graceful stop loses nothing) of what came after it, if anything
        // did by then, then the rest.
        match events.first() {
            Some(WatchEvent::CatchUp { delta, .. }) => {
                assert!(!delta.reset, "{delta:?}");
                let after = |version| version > held[&user_id];
                assert!(delta.read_states.iter().all(|state| after(state.version)));
                assert!(delta.deleted.iter().all(|pair| after(pair.version)));
            }
            other => panic!("user {user_id}: {other:?}"),
        }
        let channels: Vec<u64> = follower.copies[&user_id].states.keys().copied().collect();
        let expected = if user_id % 3 == 0 {
            vec![8]
        } else {
            vec![7, 8]
        };
        assert_eq!(channels, expected, "user {user_id}");
    }
    assert_eq!(service.metric("readstates_watch_streams"), 1.0);
    service.shutdown().await;
}
