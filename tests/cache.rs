//! Cache behaviour seen through the API: single-flight loads and capacity.

mod common;

use std::sync::atomic::Ordering;

use common::{InstrumentedStore, TestServer, test_config};
use readstates::api::proto::{AckRequest, GetUserReadStatesRequest};

#[tokio::test]
async fn concurrent_misses_of_one_user_load_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = InstrumentedStore::open(dir.path());
    store.load_delay_ms.store(300, Ordering::SeqCst);
    let server = TestServer::start(&config, store.clone()).await;

    let mut calls = Vec::new();
    for channel in 1..=50u64 {
        let mut client = server.client.clone();
        calls.push(tokio::spawn(async move {
            client
                .ack(AckRequest {
                    user_id: 77,
                    channel_id: channel,
                    message_id: 5,
                    manual: false,
                    mention_count: None,
                })
                .await
                .unwrap()
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        1,
        "one load for 50 waiting calls"
    );
    let mut client = server.client.clone();
    let states = client
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: 77,
            since_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(states.read_states.len(), 50, "no call's update was lost");
    server.shutdown().await;
}

#[tokio::test]
async fn reads_of_users_without_states_stay_within_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cache.capacity = 40;
    config.cache.partitions = 4;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;

    for user_id in 1..=1_000u64 {
        let response = server
            .client
            .get_user_read_states(GetUserReadStatesRequest {
                user_id,
                since_version: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.read_states.is_empty());
    }
    let (weight, users) = server.running.cache.resident();
    assert!(weight <= 40, "capacity in use {weight}");
    assert!(users <= 40, "{users} empty users cached");
    server.shutdown().await;
}
