//! `/metrics` after real traffic, and live cache tuning seen in the
//! metrics with nothing lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    InstrumentedStore, TestServer, ack_request, eventually, http_get, sample, stored, test_config,
};
use readstates::api::proto::{AddMentionsRequest, GetReadStateRequest, GetUserReadStatesRequest};
use tonic::Code;

#[tokio::test]
async fn every_metric_family_shows_after_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cache.capacity = 16;
    config.cache.partitions = 2;
    config.flush.delay_ms = 100;
    config.flush.tick_ms = 10;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    let metrics_addr = server.running.metrics_addr.unwrap();

    for user in 1..=40 {
        server.client.ack(ack_request(user, 1, 10)).await.unwrap();
        server.client.ack(ack_request(user, 1, 11)).await.unwrap();
    }
    server
        .client
        .add_mentions(AddMentionsRequest {
            channel_id: 1,
            message_id: 50,
            user_ids: (1..=40).collect(),
            omit_read_states: false,
        })
        .await
        .unwrap();
    let invalid = server.client.ack(ack_request(0, 1, 1)).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    // Wait until every change is written and no user waits in a bucket.
    // Evicted users wait for their write outside the cache, where no dirty
    // count sees them; the flush lag counts every batch write still in
    // flight, so it says when the last one landed.
    let mut text = String::new();
    let settled = eventually(Duration::from_secs(10), async || {
        text = http_get(metrics_addr, "/metrics").await.1;
        sample(&text, "readstates_dirty_read_states") == Some(0.0)
            && sample(&text, "readstates_flush_queue_users") == Some(0.0)
            && sample(&text, "readstates_flush_lag_seconds") == Some(0.0)
    })
    .await;
    assert!(settled, "write-behind did not settle:\n{text}");
    let (status, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));

    assert_eq!(
        value(r#"readstates_rpc_duration_seconds_count{method="Ack",code="OK"}"#),
        80.0
    );
    assert_eq!(
        value(r#"readstates_rpc_duration_seconds_count{method="Ack",code="INVALID_ARGUMENT"}"#),
        1.0
    );
    assert_eq!(
        value(r#"readstates_rpc_duration_seconds_count{method="AddMentions",code="OK"}"#),
        1.0
    );
    assert!(
        value(r#"readstates_rpc_duration_seconds_bucket{method="Ack",code="OK",le="+Inf"}"#)
            == 80.0
    );
    // Every method is present with code OK before its first call.
    assert_eq!(
        value(r#"readstates_rpc_duration_seconds_count{method="DeleteReadStates",code="OK"}"#),
        0.0
    );

    assert!(value("readstates_cache_hits_total") >= 40.0);
    assert!(value("readstates_cache_misses_total") >= 40.0);
    assert!(value(r#"readstates_cache_evictions_total{dirty="true"}"#) > 0.0);
    assert!(value("readstates_cache_read_states") <= 16.0);
    assert!(value("readstates_cache_users") > 0.0);
    assert!(value("readstates_cache_protected_users") <= value("readstates_cache_users"));
    assert_eq!(value("readstates_cache_capacity_read_states"), 16.0);
    assert!(
        value("readstates_cache_partition_read_states_max")
            >= value("readstates_cache_partition_read_states_min")
    );
    assert!(value("readstates_cache_estimated_bytes") > 0.0);
    assert_eq!(value("readstates_dirty_read_states"), 0.0);
    assert_eq!(value("readstates_flush_queue_users"), 0.0);
    value("readstates_flush_eviction_queue_users");
    assert_eq!(value("readstates_flush_lag_seconds"), 0.0);
    assert!(value("readstates_state_changes_total") >= 120.0);
    assert!(value("readstates_flush_coalesced_updates_total") >= 1.0);
    assert!(value("readstates_flush_rows_written_total") >= 40.0);
    assert!(value("readstates_flush_batches_total") >= 1.0);
    value("readstates_flush_retries_total");
    assert!(value("readstates_flush_batch_rows_count") >= 1.0);
    assert!(
        value(
            r#"readstates_store_operation_duration_seconds_count{operation="load_user",backend="instrumented-embedded"}"#
        ) >= 40.0
    );
    assert!(
        value(
            r#"readstates_store_operation_duration_seconds_count{operation="write_batch",backend="instrumented-embedded"}"#
        ) >= 1.0
    );
    assert_eq!(
        value(
            r#"readstates_store_errors_total{operation="write_batch",backend="instrumented-embedded",class="retryable"}"#
        ),
        0.0
    );
    assert!(value("readstates_process_resident_memory_bytes") > 1_000_000.0);
    assert_eq!(
        value(&format!(
            r#"readstates_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );

    let (status, _) = http_get(metrics_addr, "/nothing").await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn store_errors_and_retries_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.delay_ms = 50;
    config.flush.tick_ms = 10;
    config.flush.retry_initial_ms = 10;
    config.flush.retry_max_ms = 20;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    server.client.ack(ack_request(1, 1, 1)).await.unwrap();
    store.set_down(true);
    server.client.ack(ack_request(1, 1, 2)).await.unwrap();
    let metrics_addr = server.running.metrics_addr.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let (_, text) = http_get(metrics_addr, "/metrics").await;
            sample(&text, "readstates_flush_retries_total").unwrap_or(0.0) >= 2.0
                && sample(&text, "readstates_flush_lag_seconds").unwrap_or(0.0) > 0.0
                && sample(&text, r#"readstates_store_errors_total{operation="write_batch",backend="instrumented-embedded",class="retryable"}"#)
                    .unwrap_or(0.0)
                    >= 2.0
        })
        .await
    );
    store.set_down(false);
    server.shutdown().await;
}

#[tokio::test]
async fn shrinking_the_cache_live_evicts_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cache.capacity = 10_000;
    config.cache.partitions = 4;
    // Only the evictions caused by the shrink write anything.
    config.flush.delay_ms = 600_000;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    for user in 1..=100 {
        for channel in 1..=3 {
            server
                .client
                .ack(ack_request(user, channel, user * 10 + channel))
                .await
                .unwrap();
        }
    }
    assert_eq!(server.running.cache.dirty_states(), 300);
    assert_eq!(store.rows_written(), 0);

    let mut smaller = config.clone();
    smaller.cache.capacity = 12;
    let need_restart = server.running.reconfigure(&smaller);
    assert!(need_restart.is_empty(), "{need_restart:?}");

    let (resident, _) = server.running.cache.resident();
    assert!(resident <= 12, "{resident} states still cached");
    let metrics_addr = server.running.metrics_addr.unwrap();
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(
        sample(&text, "readstates_cache_capacity_read_states"),
        Some(12.0)
    );
    assert!(sample(&text, r#"readstates_cache_evictions_total{dirty="true"}"#).unwrap() >= 96.0);

    // The evicted users' states reach the store at once, not after 10 minutes.
    let cache = Arc::clone(&server.running.cache);
    assert!(eventually(Duration::from_secs(10), async || cache.dirty_states() <= 12).await);
    let mut in_store = 0;
    for user in 1..=100 {
        in_store += stored(&store.inner, user).await.len();
    }
    assert!(in_store >= 288, "{in_store} of 300 states in the store");

    // And every state reads back right.
    for user in 1..=100 {
        let states = server
            .client
            .get_user_read_states(GetUserReadStatesRequest {
                user_id: user,
                since_version: None,
            })
            .await
            .unwrap()
            .into_inner()
            .read_states;
        assert_eq!(states.len(), 3);
        for state in states {
            assert_eq!(state.last_message_id, user * 10 + state.channel_id);
        }
    }

    let mut restart_only = smaller.clone();
    restart_only.cache.partitions = 8;
    assert_eq!(
        server.running.reconfigure(&restart_only),
        vec!["cache.partitions"]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn injected_store_latency_delays_every_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Median equal to p99: every load is delayed by exactly 40 ms.
    config.store.injected_latency_median_ms = 40;
    config.store.injected_latency_p99_ms = 40;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store).await;
    let metrics_addr = server.running.metrics_addr.unwrap();
    for user in 1..=5 {
        server.client.ack(ack_request(user, 1, 10)).await.unwrap();
    }
    let text = http_get(metrics_addr, "/metrics").await.1;
    let load = |part: &str| {
        let series = format!(
            r#"readstates_store_operation_duration_seconds_{part}{{operation="load_user",backend="instrumented-embedded"}}"#
        );
        sample(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(load("count"), 5.0);
    assert!(
        load("sum") >= 5.0 * 0.040,
        "five loads took {} s in all",
        load("sum")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_call_cut_short_by_its_grpc_timeout_is_counted_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Every load takes 2 s, far past the client's 50 ms deadline.
    config.store.injected_latency_median_ms = 2_000;
    config.store.injected_latency_p99_ms = 2_000;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store).await;
    let metrics_addr = server.running.metrics_addr.unwrap();

    let mut request = tonic::Request::new(GetReadStateRequest {
        user_id: 7,
        channel_id: 1,
    });
    request.set_timeout(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let status = server.client.get_read_state(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "the server held the call for {:?}",
        started.elapsed()
    );

    let series = r#"readstates_rpc_duration_seconds_count{method="GetReadState",code="CANCELLED"}"#;
    let mut counted = None;
    for _ in 0..100 {
        let text = http_get(metrics_addr, "/metrics").await.1;
        counted = sample(&text, series);
        if counted == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, Some(1.0), "{series}");
    server.shutdown().await;
}
