//! Store failures over gRPC by class: a permanent one (here a damaged row
//! in the real embedded store) is INTERNAL and says not to retry, a
//! retryable one stays UNAVAILABLE, and `/metrics` counts them apart.

mod common;

use std::path::Path;

use common::{InstrumentedStore, TestServer, ack_request, http_get, sample, test_config};
use readstates::api::proto::{GetReadStateRequest, GetUserReadStatesRequest};
use readstates::store::EmbeddedStore;
use tonic::Code;

/// The embedded store's table of rows: (user, channel) to an encoded row.
const STATES: redb::TableDefinition<(u64, u64), &[u8]> = redb::TableDefinition::new("read_states");

/// Writes a row no build can decode (an unknown format tag) for a user,
/// straight into the embedded store's file.
fn damage_row(data_dir: &Path, user: u64, channel: u64) {
    drop(EmbeddedStore::open(data_dir).unwrap()); // creates the file and its tables
    let file = data_dir.join("readstates.redb");
    assert!(file.exists(), "the embedded store's file moved: {file:?}");
    let db = redb::Database::open(&file).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(STATES)
        .unwrap()
        .insert((user, channel), &[0xEE_u8][..])
        .unwrap();
    txn.commit().unwrap();
}

fn user_states(user_id: u64) -> GetUserReadStatesRequest {
    GetUserReadStatesRequest {
        user_id,
        since_version: None,
    }
}

#[tokio::test]
async fn a_permanent_store_failure_is_internal_and_counted_apart_from_retryable_ones() {
    let dir = tempfile::tempdir().unwrap();
    damage_row(dir.path(), 7, 1);
    let config = test_config(dir.path());
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    let c = &mut server.client;

    let damaged = c.get_user_read_states(user_states(7)).await.unwrap_err();
    assert_eq!(damaged.code(), Code::Internal, "{damaged:?}");
    assert!(damaged.message().contains("do not retry"), "{damaged:?}");
    assert!(
        !damaged.message().contains("0xEE") && !damaged.message().contains("tag"),
        "no internals leak: {damaged:?}"
    );
    let damaged = c
        .get_read_state(GetReadStateRequest {
            user_id: 7,
            channel_id: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(damaged.code(), Code::Internal, "{damaged:?}");

    // Other users are served; an outage is still worth retrying.
    c.ack(ack_request(8, 1, 10)).await.unwrap();
    store.set_down(true);
    let outage = c.get_user_read_states(user_states(9)).await.unwrap_err();
    assert_eq!(outage.code(), Code::Unavailable, "{outage:?}");
    store.set_down(false);

    let metrics_addr = server.running.metrics_addr.unwrap();
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    let load_errors = |class: &str| {
        sample(
            &text,
            &format!(
                r#"readstates_store_errors_total{{operation="load_user",backend="instrumented-embedded",class="{class}"}}"#
            ),
        )
    };
    assert_eq!(load_errors("permanent"), Some(2.0), "{text}");
    assert_eq!(load_errors("retryable"), Some(1.0), "{text}");
    server.shutdown().await;
}
