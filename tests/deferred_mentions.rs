//! AddMentions with `omit_read_states` through a running server: the call
//! never waits for a user who is not cached, and the mentions it defers
//! are counted exactly as if it had waited (ARCHITECTURE.md §1.2), reach the
//! store within the flush delay with no further request, and survive a
//! graceful shutdown.

mod common;

use std::time::Duration;

use common::{
    Client, InstrumentedStore, TestServer, ack_request, eventually, get, http_get, sample, stored,
    test_config,
};
use readstates::api::proto::{AckRequest, AddMentionsRequest, RemoveMentionsRequest};
use tokio::time::Instant;
use tonic::Code;

fn mention(channel_id: u64, message_id: u64, user_ids: Vec<u64>, omit: bool) -> AddMentionsRequest {
    AddMentionsRequest {
        channel_id,
        message_id,
        user_ids,
        omit_read_states: omit,
    }
}

async fn stored_count(store: &InstrumentedStore, user: u64, channel: u64) -> Option<u32> {
    stored(&store.inner, user)
        .await
        .into_iter()
        .find(|state| state.channel_id.get() == channel)
        .map(|state| state.mentions.count())
}

async fn count(client: &mut Client, user: u64, channel: u64) -> u32 {
    get(client, user, channel).await.mention_count
}

#[tokio::test]
async fn the_send_path_does_not_wait_for_the_store_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.delay_ms = 1_500;
    config.flush.tick_ms = 50;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    let metrics = server.running.metrics_addr.unwrap();

    // User 1 is cached; users 2 and 3 are not, and the store is down.
    server.client.ack(ack_request(1, 1, 10)).await.unwrap();
    store.set_down(true);
    let waiting = server
        .client
        .add_mentions(mention(1, 20, vec![1, 2, 3], false))
        .await
        .unwrap_err();
    assert_eq!(waiting.code(), Code::Unavailable, "{waiting:?}");
    let answer = server
        .client
        .add_mentions(mention(1, 20, vec![1, 2, 3], true))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.read_states.is_empty(), "{answer:?}");
    let accepted_at = Instant::now();
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&text, "readstates_mentions_deferred_waiting"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "readstates_mentions_deferred_total"),
        Some(2.0)
    );

    // The store comes back: with no further request, each mention is
    // written within the flush delay of its call (plus the write).
    store.set_down(false);
    let landed = eventually(Duration::from_secs(10), async || {
        stored_count(&store, 2, 1).await == Some(1) && stored_count(&store, 3, 1).await == Some(1)
    })
    .await;
    assert!(landed, "the deferred mentions never reached the store");
    let elapsed = accepted_at.elapsed();
    assert!(
        elapsed < Duration::from_millis(3_000),
        "written after {elapsed:?}"
    );
    assert_eq!(count(&mut server.client, 1, 1).await, 1);
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&text, "readstates_mentions_deferred_waiting"),
        Some(0.0)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn deferred_mentions_are_counted_as_the_contract_says() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    {
        let store = InstrumentedStore::open(dir.path());
        let mut server = TestServer::start(&config, store).await;
        for channel in 1..=3 {
            server
                .client
                .ack(ack_request(7, channel, 100))
                .await
                .unwrap();
        }
        server.shutdown().await;
    }
    // A new server: user 7 is cold.
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store).await;
    let c = &mut server.client;
    for (channel, message) in [(1, 50), (1, 150), (1, 150), (1, 120), (2, 150), (3, 130)] {
        c.add_mentions(mention(channel, message, vec![7], true))
            .await
            .unwrap();
    }
    c.remove_mentions(RemoveMentionsRequest {
        channel_id: 2,
        message_id: 150,
        user_ids: vec![7],
    })
    .await
    .unwrap();
    c.ack(AckRequest {
        user_id: 7,
        channel_id: 3,
        message_id: 90,
        manual: true,
        mention_count: Some(4),
    })
    .await
    .unwrap();
    // Channel 1: 50 was read already, 150 retried counts once, 120 counts.
    assert_eq!(count(c, 7, 1).await, 2);
    // Channel 2: removed again.
    assert_eq!(count(c, 7, 2).await, 0);
    // Channel 3: the manual ack came after the mention: its count stands.
    let state = get(c, 7, 3).await;
    assert_eq!((state.last_message_id, state.mention_count), (90, 4));
    server.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_writes_the_mentions_still_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.retry_initial_ms = 10;
    let users: Vec<u64> = (1..=50).collect();
    {
        let store = InstrumentedStore::open(dir.path());
        let mut server = TestServer::start(&config, store.clone()).await;
        // The store is down: nothing can be merged before the shutdown.
        store.set_down(true);
        server
            .client
            .add_mentions(mention(4, 44, users.clone(), true))
            .await
            .unwrap();
        let running = server.running;
        drop(server.client);
        let stopping = tokio::spawn(running.shutdown());
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.set_down(false);
        stopping.await.unwrap().unwrap();
    }
    let store = InstrumentedStore::open(dir.path());
    for &user in &users {
        assert_eq!(stored_count(&store, user, 4).await, Some(1), "user {user}");
    }
}
