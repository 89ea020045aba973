//! The watch with a slot map, which a scripted instance serves, naming
//! real servers (each over its own store) as the owners: users followed at
//! their owners and moved when an owner leaves, subscriptions the scripted
//! instance ends (UNAVAILABLE, MOVED), and a stream refused for its token.

use std::time::Duration;

use readstates::api::proto::watch_ended::Reason;
use readstates_client::{Code, ReadStatesClient, WatchEvent};

use super::ack;
use super::follower::{Follower, next, read_all};
use crate::fake::{Fake, slot_map};
use crate::service::Service;

#[tokio::test]
async fn each_user_is_followed_at_its_owner_and_then_where_it_moves() {
    // Two real servers, each with its own store; a scripted instance
    // answers GetRouting with a map that splits the slots between them.
    let (a, b) = (Service::start().await, Service::start().await);
    let seed = Fake::start(9).await;
    let owners = [("a", a.address()), ("b", b.address())];
    const SLOTS: u32 = 16;
    let by_parity = |slot: u32| Some((slot % 2) as usize);
    seed.script.set_routing(slot_map(SLOTS, &owners, by_parity));
    let client = ReadStatesClient::builder()
        .addresses([seed.address()])
        .refresh_interval(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    let map = client.slot_map().expect("a slot map");
    let users: Vec<u64> = (1..=12).collect();
    let at_b: Vec<u64> = users
        .iter()
        .copied()
        .filter(|&user_id| map.owner_of(user_id).unwrap().address == b.address())
        .collect();
    assert!(!at_b.is_empty() && at_b.len() < users.len());
    for &user_id in &users {
        client.ack(ack(user_id, 7, user_id * 10)).await.unwrap();
    }
    let mut watch = client.watch();
    for &user_id in &users {
        watch.subscribe(user_id, 0).unwrap();
    }
    let mut follower = Follower::default();
    // Each user's states are at its owner only: a copy equal to them was
    // followed there.
    follower.catch_up_with(&mut watch, &client, &users).await;
    for (service, count) in [(&a, users.len() - at_b.len()), (&b, at_b.len())] {
        assert_eq!(service.metric("readstates_watch_streams"), 1.0);
        assert_eq!(
            service.metric("readstates_watch_subscriptions"),
            count as f64
        );
    }

    // b leaves (its subscriptions end with SHUTTING_DOWN, its stream with
    // UNAVAILABLE); the map now gives its slots to a. a holds none of
    // their states (its store is its own), nor their versions: each is
    // resubscribed there, and its copy reset, to nothing.
    seed.script
        .set_routing(slot_map(SLOTS, &owners, |_| Some(0)));
    let from = follower.events.len();
    b.shutdown().await;
    for &user_id in &at_b {
        while follower.events_of(user_id, from).is_empty() {
            follower.step(&mut watch).await;
        }
        match follower.events_of(user_id, from)[..] {
            [WatchEvent::CatchUp { delta, .. }] => {
                assert!(delta.reset && delta.read_states.is_empty(), "{delta:?}");
            }
            ref other => panic!("user {user_id}: {other:?}"),
        }
        assert_eq!(follower.copies[&user_id].states.len(), 0);
    }
    // Then followed there: every user's next change comes from a.
    for &user_id in &users {
        client.ack(ack(user_id, 8, 1_000)).await.unwrap();
    }
    follower.catch_up_with(&mut watch, &client, &users).await;
    for &user_id in &users {
        let events = follower.events_of(user_id, from);
        let changes = if at_b.contains(&user_id) { 2 } else { 1 };
        assert_eq!(events.len(), changes, "{events:?}");
        assert!(matches!(events[changes - 1], WatchEvent::Changed(_)));
    }
    assert_eq!(a.metric("readstates_watch_streams"), 1.0);
    assert_eq!(
        a.metric("readstates_watch_subscriptions"),
        users.len() as f64
    );
    a.shutdown().await;
}

#[tokio::test]
async fn an_ended_subscription_is_resumed_where_the_map_says_from_the_version_held() {
    // A scripted instance owns every slot at first; its stream ends the
    // user's subscription with UNAVAILABLE, and then again with MOVED,
    // naming a real server as the new owner.
    let a = Service::start().await;
    let direct = a.client().await;
    direct.ack(ack(1, 7, 100)).await.unwrap();
    let held = read_all(&direct, 1).await;
    let later = direct
        .ack(ack(1, 8, 200))
        .await
        .unwrap()
        .read_state
        .unwrap();
    let seed = Fake::start(9).await;
    let on_seed = slot_map(4, &[("f", seed.address())], |_| Some(0));
    let on_a = slot_map(4, &[("a", a.address())], |_| Some(0));
    seed.script.set_routing(on_seed);
    seed.script
        .watch
        .then([(Reason::Unavailable, None), (Reason::Moved, Some(on_a))]);
    let client = ReadStatesClient::builder()
        .addresses([seed.address()])
        .refresh_interval(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    let mut watch = client.watch();
    watch.subscribe(1, held.version).unwrap();

    // The ends never show: the first event is a's delta since the version
    // held, after the same owner was tried again (UNAVAILABLE), and the
    // map read again (MOVED).
    match next(&mut watch).await.unwrap() {
        WatchEvent::CatchUp { user_id: 1, delta } => {
            assert!(!delta.reset, "{delta:?}");
            assert_eq!(delta.read_states, vec![later]);
            assert_eq!(delta.version, later.version);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        seed.script.watch.subscriptions(),
        [(1, held.version), (1, held.version)]
    );
    assert_eq!(seed.script.routing_reads(), 2, "at connect, after MOVED");
    // Followed at a from then on.
    let acked = client.ack(ack(1, 9, 300)).await.unwrap();
    assert_eq!(
        next(&mut watch).await.unwrap(),
        WatchEvent::Changed(acked.read_state.unwrap())
    );
    a.shutdown().await;
}

#[tokio::test]
async fn a_stream_refused_for_its_token_is_reported_once_and_the_token_is_sent() {
    const TOKEN: &str = "orders-0123456789abcdef";
    let service = Service::start_with(|config, dir| {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("orders {TOKEN}\n")).unwrap();
        config.auth.tokens_file = Some(tokens);
    })
    .await;
    // A scripted instance, which asks for no token, names the server as
    // every user's owner.
    let seed = Fake::start(9).await;
    seed.script
        .set_routing(slot_map(4, &[("a", service.address())], |_| Some(0)));
    let without = ReadStatesClient::builder()
        .addresses([seed.address()])
        .connect()
        .await
        .unwrap();
    let mut watch = without.watch();
    watch.subscribe(1, 0).unwrap();
    watch.subscribe(2, 0).unwrap();
    let mut stopped = Vec::new();
    while stopped.len() < 2 {
        let error = next(&mut watch).await.unwrap_err();
        assert_eq!(error.status().code(), Code::Unauthenticated, "{error}");
        stopped.extend_from_slice(error.user_ids());
    }
    stopped.sort_unstable();
    assert_eq!(stopped, [1, 2]);

    let with = ReadStatesClient::builder()
        .addresses([seed.address()])
        .bearer_token(TOKEN)
        .connect()
        .await
        .unwrap();
    with.ack(ack(1, 7, 100)).await.unwrap();
    let mut watch = with.watch();
    watch.subscribe(1, 0).unwrap();
    let mut follower = Follower::default();
    follower.catch_up_with(&mut watch, &with, &[1]).await;
    assert_eq!(follower.copies[&1].states[&7].last_message_id, 100);
    service.shutdown().await;
}
