//! DESIGN.md section 2 semantics, over real gRPC on loopback against a
//! running server with the embedded store.

mod common;

use common::{TestServer, test_config};
use readstates::api::proto::{AckRequest, AddMentionsRequest, GetReadStateRequest};

#[tokio::test]
async fn ack_then_mentions_then_get() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = common::InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store).await;
    let c = &mut server.client;

    let added = c
        .add_mentions(AddMentionsRequest {
            channel_id: 10,
            message_id: 100,
            user_ids: vec![1, 2],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.read_states.len(), 2);
    assert!(added.read_states.iter().all(|s| s.mention_count == 1));

    let acked = c
        .ack(AckRequest {
            user_id: 1,
            channel_id: 10,
            message_id: 100,
            manual: false,
            mention_count: None,
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap();
    assert_eq!(acked.last_message_id, 100);
    assert_eq!(acked.mention_count, 0);

    let other = c
        .get_read_state(GetReadStateRequest {
            user_id: 2,
            channel_id: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap();
    assert_eq!(other.mention_count, 1);
    server.shutdown().await;
}
