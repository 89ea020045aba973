//! Overload: past `limits.max_in_flight_calls`, calls are refused at once
//! with `RESOURCE_EXHAUSTED` (and counted), health stays reachable, and the
//! limit frees again when admitted calls end, cancelled ones included; a
//! request over `limits.max_request_bytes` is refused before decoding; and
//! while tasks wait longer than `limits.max_queue_delay_ms` for a worker,
//! calls are refused too, until the workers catch up; calls past a
//! connection's stream limit wait in the client instead of failing.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{InstrumentedStore, TestServer, eventually, http_get, sample, test_config};
use readstates::api::proto::{AddMentionsRequest, GetReadStateRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn get(user_id: u64) -> GetReadStateRequest {
    GetReadStateRequest {
        user_id,
        channel_id: 1,
    }
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_shed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_in_flight_calls = 2;
    let store = InstrumentedStore::open(dir.path());
    // Loads of cold users hang for a minute: the first two calls stay in flight.
    store.load_delay_ms.store(60_000, Ordering::SeqCst);
    let mut server = TestServer::start(&config, store.clone()).await;
    let metrics_addr = server.running.metrics_addr.unwrap();

    let held: Vec<_> = (1..=2)
        .map(|user| {
            let mut client = server.client.clone();
            tokio::spawn(async move { client.get_read_state(get(user)).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), async || store
            .loads
            .load(Ordering::SeqCst)
            == 2)
        .await,
        "the first two calls never reached the store"
    );

    let started = Instant::now();
    let shed = server.client.get_read_state(get(3)).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("limits.max_in_flight_calls"),
        "{shed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shed, not queued"
    );
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        2,
        "a shed call does no work"
    );

    // Health is not counted against the limit.
    let channel = common::channel(server.running.addr).await;
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "readstates.v1.ReadStates".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let text = http_get(metrics_addr, "/metrics").await.1;
    let series =
        r#"readstates_rpc_duration_seconds_count{method="GetReadState",code="RESOURCE_EXHAUSTED"}"#;
    assert_eq!(sample(&text, series), Some(1.0), "{series}");

    // The held calls' clients give up; their slots free, and calls are
    // admitted again.
    for call in held {
        call.abort();
    }
    store.load_delay_ms.store(0, Ordering::SeqCst);
    let mut admitted = false;
    for _ in 0..200 {
        match server.client.get_read_state(get(4)).await {
            Ok(_) => {
                admitted = true;
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    assert!(
        admitted,
        "the limit never freed after the held calls were cancelled"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_request_bytes = 4096;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;

    // 1,000 large ids take about 9 KB on the wire.
    let user_ids: Vec<u64> = (0..1_000).map(|i| (1 << 62) + i).collect();
    let status = server
        .client
        .add_mentions(AddMentionsRequest {
            channel_id: 1,
            message_id: 10,
            user_ids,
            omit_read_states: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        0,
        "nothing was decoded or loaded"
    );

    let small = server
        .client
        .add_mentions(AddMentionsRequest {
            channel_id: 1,
            message_id: 10,
            user_ids: vec![1 << 62],
            omit_read_states: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(small.read_states.len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_server_short_of_cpu_sheds_until_its_workers_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_queue_delay_ms = 10;
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let metrics_addr = server.running.metrics_addr.unwrap();
    let mention = |user_id| AddMentionsRequest {
        channel_id: 1,
        message_id: 100,
        user_ids: vec![user_id],
        omit_read_states: false,
    };
    let admitted = async |mut client: common::Client| {
        eventually(Duration::from_secs(30), async || {
            client.add_mentions(mention(1)).await.is_ok()
        })
        .await
    };

    assert!(
        admitted(server.client.clone()).await,
        "an idle server refuses calls"
    );

    // Starve the server of CPU: on this one-worker runtime, a task that
    // holds the worker 40 ms at a time (a deliberate blocking sleep) makes
    // every other task, the server's included, wait that long for it.
    let hog = tokio::spawn(async {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(40));
            tokio::task::yield_now().await;
        }
    });
    let mut shed = None;
    for user_id in 2..200 {
        if let Err(status) = server.client.add_mentions(mention(user_id)).await {
            shed = Some(status);
            break;
        }
    }
    let shed = shed.expect("no call was refused while the workers were starved");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("limits.max_queue_delay_ms"),
        "{shed:?}"
    );
    hog.await.unwrap();

    assert!(
        admitted(server.client.clone()).await,
        "calls are still refused once the workers caught up"
    );
    let text = http_get(metrics_addr, "/metrics").await.1;
    let series =
        r#"readstates_rpc_duration_seconds_count{method="AddMentions",code="RESOURCE_EXHAUSTED"}"#;
    assert!(sample(&text, series).unwrap_or(0.0) >= 1.0, "{text}");
    assert!(
        sample(&text, "readstates_runtime_queue_delay_seconds").is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn calls_past_the_stream_limit_of_a_connection_wait_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_concurrent_requests_per_connection = 2;
    let store = InstrumentedStore::open(dir.path());
    // Loads of cold users take a while: two calls hold both streams.
    store.load_delay_ms.store(1_000, Ordering::SeqCst);
    let mut server = TestServer::start(&config, store.clone()).await;
    // One call first, so the client has the server's settings (the stream
    // limit among them) before it opens more streams.
    server.client.get_read_state(get(10)).await.unwrap();
    let warm = store.loads.load(Ordering::SeqCst);

    // Three calls on one connection: the third waits in the client for a
    // stream (HTTP/2's limit, advertised by the server) and then succeeds,
    // where a limit enforced only by the server would refuse it.
    let calls: Vec<_> = (1..=3)
        .map(|user| {
            let mut client = server.client.clone();
            tokio::spawn(async move { client.get_read_state(get(user)).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), async || store
            .loads
            .load(Ordering::SeqCst)
            >= warm + 2)
        .await,
        "the first two calls never reached the store"
    );
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        warm + 2,
        "a third stream was opened past the limit"
    );
    for call in calls {
        let result = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("a call hung")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), warm + 3);
}
