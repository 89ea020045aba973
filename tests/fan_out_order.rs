//! A fan-out answers one state per user, in the order of its `user_ids`,
//! whichever of them were cached and whichever had to be loaded (in any
//! order) first: clients pair states with users by position, and an
//! instance merging the parts of a fan-out split by owner relies on it.

mod common;

use common::{TestServer, ack_request, test_config};
use readstates::api::proto::{AddMentionsRequest, RemoveMentionsRequest};
use readstates::server;

#[tokio::test]
async fn fan_out_states_come_in_request_order_cached_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = server::open_store(&config).await.unwrap();
    let mut server = TestServer::start(&config, store).await;
    // Users 10 to 29 written, then the server restarted, so none is
    // cached; then every other one cached again: the rest load.
    for user in 10..30 {
        server.client.ack(ack_request(user, 7, 1)).await.unwrap();
    }
    server.shutdown().await;
    let store = server::open_store(&config).await.unwrap();
    let mut server = TestServer::start(&config, store).await;
    for user in (10..30).step_by(2) {
        server.client.ack(ack_request(user, 7, 2)).await.unwrap();
    }
    let user_ids: Vec<u64> = (10..30).rev().chain([40, 11, 10]).collect();
    let added = AddMentionsRequest {
        channel_id: 7,
        message_id: 50,
        user_ids: user_ids.clone(),
        omit_read_states: false,
    };
    let added = server
        .client
        .add_mentions(added)
        .await
        .unwrap()
        .into_inner();
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
    let removed = server.client.remove_mentions(removed).await.unwrap();
    let order: Vec<u64> = removed
        .get_ref()
        .read_states
        .iter()
        .map(|state| state.user_id)
        .collect();
    assert_eq!(order, user_ids);
    server.shutdown().await;
}
