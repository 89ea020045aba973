//! The failure paths of ARCHITECTURE.md §2, driven deterministically by a
//! fault-injecting store (`common::faults`) under a real server over real
//! gRPC: failing writes, a hung store holding every write permit, failing
//! loads, a version lease that cannot be renewed, and the tombstone purge
//! held back by an old write in flight. (A whole-store outage with the
//! dirty backlog filling is in `persistence`.)
//!
//! No test asserts how long anything took; timeouts only guard against a
//! hang.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::faults::{Fault, FaultyStore, Op};
use common::{TestServer, ack_request, eventually, sample, stored, test_config};
use readstates::api::proto::GetReadStateRequest;
use readstates::clock::unix_micros;
use readstates::config::Config;
use tonic::Code;

/// Long enough for anything that should happen; only a hang guard.
const GUARD: Duration = Duration::from_secs(30);

/// Fast flushes, small batches, two write permits, a 2 s version lease,
/// frequent purges, and a short shutdown deadline.
fn config(dir: &std::path::Path) -> Config {
    let mut config = test_config(dir);
    config.flush.delay_ms = 100;
    config.flush.tick_ms = 10;
    config.flush.concurrency = 2;
    config.flush.batch_size = 1;
    config.flush.retry_initial_ms = 20;
    config.flush.retry_max_ms = 200;
    config.flush.version_lease_ms = 2_000;
    config.flush.purge_interval_ms = 50;
    config.flush.tombstone_grace_ms = 100;
    config.server.drain_timeout_ms = 500;
    config.server.shutdown_timeout_ms = 2_000;
    config
}

async fn start(config: &Config) -> (Arc<FaultyStore>, TestServer) {
    let dir = config.store.data_dir.clone();
    let store = FaultyStore::open(&dir);
    let server = TestServer::start(config, store.clone()).await;
    (store, server)
}

fn metric(server: &TestServer, series: &str) -> f64 {
    let text = server.running.metrics.render();
    sample(&text, series).unwrap_or_else(|| panic!("{series} is not rendered"))
}

async fn stored_last(store: &FaultyStore, user: u64, channel: u64) -> Option<u64> {
    stored(store, user)
        .await
        .iter()
        .find(|state| state.channel_id.get() == channel)
        .map(|state| state.last_message_id.get())
}

#[tokio::test]
async fn failed_writes_are_retried_and_nothing_is_lost_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut server) = start(&config(dir.path())).await;
    store.set(Op::Write, Fault::Error);
    for user in 1..=5 {
        server.client.ack(ack_request(user, 1, 10)).await.unwrap();
    }
    // Every batch fails and is tried again; none is dropped.
    assert!(eventually(GUARD, async || store.calls(Op::Write) >= 15).await);
    assert_eq!(store.rows_written(), 0);
    assert_eq!(server.running.cache.dirty_states(), 5);
    assert!(metric(&server, "readstates_flush_retries_total") >= 10.0);

    store.set(Op::Write, Fault::None);
    let cache = Arc::clone(&server.running.cache);
    assert!(eventually(GUARD, async || cache.dirty_states() == 0).await);
    for user in 1..=5 {
        assert_eq!(stored_last(&store, user, 1).await, Some(10), "user {user}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn with_every_permit_held_by_a_hung_write_the_lease_is_renewed_and_shutdown_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.flush.max_dirty_states = 6;
    let (store, mut server) = start(&config).await;
    let c = &mut server.client;
    store.set(Op::Write, Fault::Hang);
    for user in 1..=4 {
        c.ack(ack_request(user, 1, 10)).await.unwrap();
    }
    // Both permits are held by writes that never end; the other batches wait.
    assert!(eventually(GUARD, async || store.hanging(Op::Write) == 2).await);

    // The lease is still renewed, and keeps writes going past the end of
    // the lease recorded at start-up.
    let clock_lease = || server.running.cache.clock().lease();
    let first_lease = clock_lease();
    let renewals = store.calls(Op::VersionFloor);
    assert!(
        eventually(GUARD, async || unix_micros() > first_lease).await,
        "the first lease never ran out"
    );
    assert!(store.calls(Op::VersionFloor) > renewals);
    assert!(clock_lease() > first_lease, "the lease was not renewed");
    c.ack(ack_request(1, 2, 10)).await.unwrap();

    // Rows waiting for a permit stay counted as dirty: the backlog fills.
    c.ack(ack_request(5, 1, 10)).await.unwrap();
    assert_eq!(server.running.cache.dirty_states(), 6);
    let refused = c.ack(ack_request(6, 1, 10)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("backlog"), "{refused:?}");
    assert_eq!(
        store.hanging(Op::Write),
        2,
        "no write was started meanwhile"
    );

    // Shutdown is acted on at once: the final flush retries until the
    // shutdown deadline, then spills what it could not write, and the next
    // start writes it.
    let TestServer { running, client } = server;
    drop(client);
    let outcome = tokio::time::timeout(GUARD, running.shutdown())
        .await
        .expect("shutdown hung while every write permit was held");
    outcome.expect("the unwritten states were spilled");
    let spill = config.store.spill_dir();
    let spilled = common::spill_files(&spill);
    assert_eq!(spilled, 1, "one spill file in {}", spill.display());
    assert_eq!(store.rows_written(), 0, "the hung writes never landed");
    drop(store);

    let store = FaultyStore::open(&config.store.data_dir);
    let mut server = TestServer::start(&config, store.clone()).await;
    assert_eq!(common::spill_files(&spill), 0, "replayed");
    for (user, channel) in [(1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (5, 1)] {
        let state = server
            .client
            .get_read_state(GetReadStateRequest {
                user_id: user,
                channel_id: channel,
            })
            .await
            .unwrap()
            .into_inner()
            .read_state
            .unwrap();
        assert_eq!(state.last_message_id, 10, "user {user} channel {channel}");
        assert_eq!(stored_last(&store, user, channel).await, Some(10));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_final_flush_keeps_retrying_until_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.server.shutdown_timeout_ms = 60_000;
    let (store, mut server) = start(&config).await;
    store.set(Op::Write, Fault::Error);
    for user in 1..=3 {
        server.client.ack(ack_request(user, 1, 10)).await.unwrap();
    }
    assert!(eventually(GUARD, async || store.calls(Op::Write) >= 3).await);

    let TestServer { running, client } = server;
    drop(client);
    let shutdown = tokio::spawn(running.shutdown());
    // The drain goes on failing, and does not give up early.
    let failed_so_far = store.calls(Op::Write);
    assert!(eventually(GUARD, async || store.calls(Op::Write) >= failed_so_far + 5).await);
    assert!(!shutdown.is_finished());

    store.set(Op::Write, Fault::None);
    tokio::time::timeout(GUARD, shutdown)
        .await
        .expect("shutdown hung after the store recovered")
        .unwrap()
        .unwrap();
    for user in 1..=3 {
        assert_eq!(stored_last(&store, user, 1).await, Some(10), "user {user}");
    }
}

#[tokio::test]
async fn a_failed_load_gives_unavailable_and_a_later_call_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut server) = start(&config(dir.path())).await;
    let get = |user_id| GetReadStateRequest {
        user_id,
        channel_id: 1,
    };

    store.set(Op::Load, Fault::Error);
    let refused = server.client.get_read_state(get(7)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let refused = server.client.ack(ack_request(7, 1, 5)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // A slow store is only slow.
    store.set(Op::Load, Fault::Latency(Duration::from_millis(100)));
    server.client.ack(ack_request(7, 1, 5)).await.unwrap();
    store.set(Op::Load, Fault::None);
    let state = server.client.get_read_state(get(7)).await.unwrap();
    let state = state.into_inner().read_state.unwrap();
    assert_eq!(state.last_message_id, 5);
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_lease_renewal_backs_off_and_its_expiry_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.flush.retry_initial_ms = 50;
    config.flush.retry_max_ms = 400;
    let (store, mut server) = start(&config).await;
    server.client.ack(ack_request(1, 1, 10)).await.unwrap();

    store.set(Op::VersionFloor, Fault::Error);
    let attempts_before = store.calls(Op::VersionFloor);
    let lease = server.running.cache.clock().lease();
    let client = &mut server.client;
    let refused = async {
        for message in 11.. {
            if let Err(status) = client.ack(ack_request(1, 1, message)).await {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unreachable!()
    };
    let refused = tokio::time::timeout(GUARD, refused)
        .await
        .expect("writes were never refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("not confirmed new versions"),
        "{refused:?}"
    );
    assert!(
        unix_micros() + 100_000 >= lease,
        "refused before the lease ran out"
    );

    // Half the 2 s lease passed before the first renewal; from then on the
    // retries back off (50, 100, 200, 400 ms...): a handful of attempts,
    // where one per 10 ms flush tick would have made about a hundred.
    let attempts = store.calls(Op::VersionFloor) - attempts_before;
    assert!((1..=20).contains(&attempts), "{attempts} renewal attempts");
    // Counted when the error comes back: one may be on its way, either side.
    let failures = metric(&server, "readstates_version_lease_renewal_failures_total");
    assert!(
        (1.0..=attempts as f64 + 1.0).contains(&failures),
        "{failures} failures counted, {attempts} attempts"
    );
    assert_eq!(
        metric(&server, "readstates_version_lease_remaining_seconds"),
        0.0
    );

    // Reads are still served; writes come back with the store.
    let state = server
        .client
        .get_read_state(GetReadStateRequest {
            user_id: 1,
            channel_id: 1,
        })
        .await
        .unwrap();
    assert!(state.into_inner().read_state.unwrap().last_message_id >= 10);
    store.set(Op::VersionFloor, Fault::None);
    let client = &mut server.client;
    assert!(
        eventually(GUARD, async || client
            .ack(ack_request(1, 1, 1_000))
            .await
            .is_ok())
        .await
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_old_write_in_flight_holds_back_the_tombstone_purge() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut server) = start(&config(dir.path())).await;
    store.set(Op::Write, Fault::Hang);
    let state = server.client.ack(ack_request(1, 1, 10)).await.unwrap();
    let version = state.into_inner().read_state.unwrap().version;
    assert!(eventually(GUARD, async || store.hanging(Op::Write) == 1).await);
    // Well past the grace (100 ms): without the write in flight, the
    // cutoff would now be above its version.
    assert!(eventually(GUARD, async || unix_micros() > version + 500_000).await);

    let seen = store.purge_cutoffs().len();
    assert!(eventually(GUARD, async || store.purge_cutoffs().len() >= seen + 3).await);
    let held = store.purge_cutoffs()[seen..].to_vec();
    assert!(
        held.iter().all(|&below| below <= version),
        "a purge could drop tombstones newer than the write in flight: {held:?} > {version}"
    );

    // Once it lands, the cutoff moves on.
    store.set(Op::Write, Fault::None);
    assert!(
        eventually(GUARD, async || store
            .purge_cutoffs()
            .last()
            .is_some_and(|&below| below > version))
        .await
    );
    server.shutdown().await;
}
