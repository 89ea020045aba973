//! ARCHITECTURE.md §2 through a running server: write-behind timing and
//! coalescing, writes on eviction (and reads racing them), store outages
//! and the dirty backlog, and reading everything back after a restart.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Client, InstrumentedStore, TestServer, ack_request, eventually, stored, test_config};
use readstates::api::proto::{AddMentionsRequest, GetReadStateRequest, GetUserReadStatesRequest};
use tokio::time::Instant;
use tonic::Code;

async fn last_read(client: &mut Client, user_id: u64, channel_id: u64) -> u64 {
    client
        .get_read_state(GetReadStateRequest {
            user_id,
            channel_id,
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap()
        .last_message_id
}

async fn stored_last(store: &InstrumentedStore, user_id: u64, channel_id: u64) -> Option<u64> {
    stored(&store.inner, user_id)
        .await
        .into_iter()
        .find(|state| state.channel_id.get() == channel_id)
        .map(|state| state.last_message_id.get())
}

#[tokio::test]
async fn a_change_reaches_the_store_within_the_flush_delay_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.delay_ms = 1_500;
    config.flush.tick_ms = 50;
    // The timer alone: the sweep writes earlier (see the next test).
    config.flush.sweep = Some(false);
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;

    server.client.ack(ack_request(1, 1, 42)).await.unwrap();
    let acked_at = Instant::now();
    let landed = eventually(Duration::from_secs(10), async || {
        stored_last(&store, 1, 1).await == Some(42)
    })
    .await;
    let elapsed = acked_at.elapsed();
    assert!(landed, "the ack never reached the store");
    // The timer rounds down to a tick, so the write may come one tick early,
    // never later than the delay (plus the write and this poll).
    assert!(
        elapsed >= Duration::from_millis(1_400),
        "flushed after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(3_500),
        "flushed after {elapsed:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_sweep_writes_every_change_before_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The embedded store's default: the sweep passes over the key space in
    // three quarters of the delay (4.5 s), the timer would write at 6 s.
    assert_eq!(config.flush.sweep, None);
    config.flush.delay_ms = 6_000;
    config.flush.tick_ms = 50;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;

    let users: Vec<u64> = (1..=100).map(|i| (i * 7_919) % 1_000 + 1).collect();
    for &user_id in &users {
        server.client.ack(ack_request(user_id, 1, 5)).await.unwrap();
    }
    let acked_at = Instant::now();
    let mut landed = true;
    for &user_id in &users {
        landed &= eventually(Duration::from_secs(10), async || {
            stored_last(&store, user_id, 1).await == Some(5)
        })
        .await;
    }
    let elapsed = acked_at.elapsed();
    assert!(landed, "an ack never reached the store");
    assert!(
        elapsed < Duration::from_millis(5_700),
        "every change was written by the sweep, before its timer: {elapsed:?}"
    );
    assert_eq!(store.rows_written(), users.len(), "each once");
    server.shutdown().await;
}

#[tokio::test]
async fn many_updates_inside_the_window_coalesce_into_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.delay_ms = 4_000;
    config.flush.tick_ms = 100;
    // The timer's window; the sweep's is shorter (it writes earlier).
    config.flush.sweep = Some(false);
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;

    for message_id in 1..=100 {
        server
            .client
            .ack(ack_request(7, 3, message_id))
            .await
            .unwrap();
    }
    // The row is readable as soon as it is committed, a moment before the
    // wrapper counts the write: wait for both.
    assert!(
        eventually(Duration::from_secs(15), async || store.rows_written() > 0
            && stored_last(&store, 7, 3).await == Some(100))
        .await
    );
    assert_eq!(
        store.rows_written(),
        1,
        "100 updates of one state, one row write"
    );
    assert_eq!(store.batches_written.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn dirty_states_evicted_under_load_all_reach_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cache.capacity = 20;
    config.cache.partitions = 2;
    // Only evictions write during the test.
    config.flush.delay_ms = 600_000;
    config.flush.tick_ms = 1_000;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;

    let users = 500u64;
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let mut client = server.client.clone();
        tasks.push(tokio::spawn(async move {
            for user in (1..=users).filter(|user| user % 4 == worker) {
                client.ack(ack_request(user, 9, user * 10)).await.unwrap();
                client
                    .add_mentions(AddMentionsRequest {
                        channel_id: 9,
                        message_id: user * 10 + 1,
                        user_ids: vec![user],
                        omit_read_states: false,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (resident, _) = server.running.cache.resident();
    assert!(resident <= 20, "cache holds {resident} states");

    // Every user outside the cache must be in the store with its newest state.
    let cached_at_most = 20;
    assert!(
        eventually(Duration::from_secs(20), async || {
            let mut landed = 0;
            for user in 1..=users {
                let rows = stored(&store.inner, user).await;
                if rows.iter().any(|state| {
                    state.last_message_id.get() == user * 10 && state.mention_count() == 1
                }) {
                    landed += 1;
                }
            }
            landed >= users - cached_at_most
        })
        .await,
        "evicted dirty states missing from the store"
    );
    // And every state reads back right, cached or reloaded.
    for user in (1..=users).step_by(37) {
        assert_eq!(last_read(&mut server.client, user, 9).await, user * 10);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_read_racing_the_eviction_write_sees_the_newest_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cache.capacity = 1;
    config.cache.partitions = 1;
    config.flush.delay_ms = 600_000;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    let c = &mut server.client;

    // Put an old state of user 1 in the store: evicting it writes it.
    c.ack(ack_request(1, 1, 10)).await.unwrap();
    c.ack(ack_request(2, 1, 10)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || stored_last(&store, 1, 1)
            .await
            == Some(10))
        .await
    );

    // Make the next writes slow, change user 1, and evict it again.
    store.write_delay_ms.store(1_500, Ordering::SeqCst);
    c.ack(ack_request(1, 1, 20)).await.unwrap();
    c.ack(ack_request(3, 1, 10)).await.unwrap();
    let write_started = Instant::now();
    // While the write is in flight, the store still holds 10.
    let mut reads = 0;
    while write_started.elapsed() < Duration::from_millis(1_000) {
        assert_eq!(
            last_read(c, 1, 1).await,
            20,
            "a read saw the stale stored state"
        );
        // Evict user 1 again so the next read races the write once more.
        c.ack(ack_request(4 + reads, 1, 10)).await.unwrap();
        reads += 1;
    }
    assert!(reads > 0);
    store.write_delay_ms.store(0, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), async || stored_last(&store, 1, 1)
            .await
            == Some(20))
        .await
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_store_outage_keeps_cached_states_served_bounds_the_backlog_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.delay_ms = 200;
    config.flush.tick_ms = 20;
    config.flush.max_dirty_states = 5;
    config.flush.retry_initial_ms = 20;
    config.flush.retry_max_ms = 100;
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store.clone()).await;
    let c = &mut server.client;

    c.ack(ack_request(1, 1, 1)).await.unwrap(); // user 1 is now cached
    store.set_down(true);

    // Cached states keep being served and updated.
    for channel in 1..=5 {
        c.ack(ack_request(1, channel, 100)).await.unwrap();
    }
    assert_eq!(last_read(c, 1, 3).await, 100);

    // Past the backlog limit, writes are refused, not buffered.
    let refused = c.ack(ack_request(1, 6, 100)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(server.running.cache.dirty_states() <= 5);

    // An uncached user cannot be loaded.
    let unavailable = c
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: 2,
            since_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");

    // Once the store is back, the backlog drains with nothing lost.
    store.set_down(false);
    let cache = Arc::clone(&server.running.cache);
    assert!(eventually(Duration::from_secs(10), async || cache.dirty_states() == 0).await);
    for channel in 1..=5 {
        assert_eq!(stored_last(&store, 1, channel).await, Some(100));
    }
    c.ack(ack_request(1, 6, 100)).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_restart_reads_everything_back_and_never_reuses_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flush.delay_ms = 600_000;
    let mut highest_version = 0;
    {
        let store = InstrumentedStore::open(dir.path());
        let mut server = TestServer::start(&config, store).await;
        for channel in 1..=50 {
            let state = server
                .client
                .ack(ack_request(5, channel, channel * 3))
                .await
                .unwrap()
                .into_inner()
                .read_state
                .unwrap();
            highest_version = highest_version.max(state.version);
        }
        server
            .client
            .add_mentions(AddMentionsRequest {
                channel_id: 50,
                message_id: 1_000,
                user_ids: vec![5],
                omit_read_states: false,
            })
            .await
            .unwrap();
        // Nothing was flushed yet: the graceful shutdown writes it all.
        server.shutdown().await;
    }
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store).await;
    let states = server
        .client
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: 5,
            since_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(states.read_states.len(), 50);
    for state in &states.read_states {
        assert_eq!(state.last_message_id, state.channel_id * 3);
    }
    let mentioned = states
        .read_states
        .iter()
        .find(|s| s.channel_id == 50)
        .unwrap();
    assert_eq!(mentioned.mention_count, 1);
    assert!(states.version >= highest_version);

    let after = server
        .client
        .ack(ack_request(5, 51, 1))
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap();
    assert!(
        after.version > states.version,
        "a restarted server reused a version"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_users_version_never_goes_backwards_across_a_restart_after_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let version_after_delete = {
        let store = InstrumentedStore::open(dir.path());
        let mut server = TestServer::start(&config, store).await;
        server.client.ack(ack_request(9, 1, 5)).await.unwrap();
        server.client.ack(ack_request(9, 2, 5)).await.unwrap();
        server
            .client
            .delete_read_states(readstates::api::proto::DeleteReadStatesRequest {
                user_id: 9,
                channel_ids: vec![2],
            })
            .await
            .unwrap();
        let version = server
            .client
            .get_user_read_states(GetUserReadStatesRequest {
                user_id: 9,
                since_version: None,
            })
            .await
            .unwrap()
            .into_inner()
            .version;
        server.shutdown().await;
        version
    };
    let store = InstrumentedStore::open(dir.path());
    let mut server = TestServer::start(&config, store).await;
    let reloaded = server
        .client
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: 9,
            since_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.read_states.len(), 1);
    assert_eq!(reloaded.version, version_after_delete);
    server.shutdown().await;
}
