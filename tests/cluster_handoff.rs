//! Slot handoff against a real cluster: two servers in one process, with the
//! cluster on and a write-behind delay far longer than the test, so that
//! what the next owner of a slot reads can only have been written by the
//! handoff (or a final flush). Changes acknowledged on one server, deferred
//! mentions included, are exact on the other as soon as it serves their
//! slot; a slot that moves away and back is served from the store, not
//! from the copy the first owner cached before; and a handoff the store
//! refuses keeps the lease until it runs out.
//!
//! Gated like the Scylla suite (see `common::cluster`):
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test cluster_handoff`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster as ScyllaCluster, Proxy};
use common::{TestServer, ack_request, eventually, get, http_get, sample, test_config};
use readstates::api::proto::AddMentionsRequest;
use readstates::cluster::placement::Members;
use readstates::cluster::slot_of;
use readstates::config::{ClusterConfig, ScyllaConfig, StoreBackend};
use readstates::ids::UserId;
use readstates::server;
use readstates::store::{ScyllaStore, Store};
use tokio::time::Instant;
use tonic::Code;

/// Few slots keep each run's Paxos rounds few on a one-node test cluster.
const SLOTS: u32 = 16;
/// Far longer than the test: nothing reaches the store by the write-behind.
const FLUSH_DELAY_MS: u64 = 60_000;

/// Lease timing: short, so a lease kept after a failed handoff runs out soon.
const LEASE_MS: u64 = 3_000;

async fn start(
    settings: &ScyllaConfig,
    dir: &Path,
    instance_id: &str,
    flush_delay_ms: u64,
) -> TestServer {
    let config = server_config(settings, dir, instance_id, flush_delay_ms);
    let store = server::open_store(&config).await.unwrap();
    TestServer::start(&config, store).await
}

fn server_config(
    settings: &ScyllaConfig,
    dir: &Path,
    instance_id: &str,
    flush_delay_ms: u64,
) -> readstates::config::Config {
    let mut config = test_config(dir);
    config.store.backend = StoreBackend::Scylla;
    config.scylla = settings.clone();
    config.flush.delay_ms = flush_delay_ms;
    config.flush.tick_ms = config.flush.tick_ms.min(flush_delay_ms);
    config.cluster = ClusterConfig {
        enabled: true,
        instance_id: instance_id.to_owned(),
        advertise_addr: format!("{instance_id}.test:50051"),
        slots: SLOTS,
        lease_ms: LEASE_MS,
        safety_margin_ms: 1_000,
        heartbeat_ms: 200,
        handoff_timeout_ms: 500,
        ..ClusterConfig::default()
    };
    config.validate().unwrap();
    config
}

/// Returns `count` users whose slots `members` places on `id`.
fn users_of(members: &Members, id: &str, count: usize) -> Vec<u64> {
    (1..)
        .filter(|user| members.owner_of(slot_of(UserId::new(*user).unwrap(), SLOTS)) == Some(id))
        .take(count)
        .collect()
}

/// Waits until `server` serves every one of `users`.
async fn serves(server: &TestServer, users: &[u64]) -> bool {
    let ownership = server.running.ownership.clone().unwrap();
    eventually(Duration::from_secs(20), async || {
        users
            .iter()
            .all(|user| ownership.owns(UserId::new(*user).unwrap()))
    })
    .await
}

fn mention(channel_id: u64, message_id: u64, user_ids: Vec<u64>, omit: bool) -> AddMentionsRequest {
    AddMentionsRequest {
        channel_id,
        message_id,
        user_ids,
        omit_read_states: omit,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_acked_on_one_instance_are_exact_on_the_next_as_soon_as_it_serves_them() {
    const TEST: &str =
        "changes_acked_on_one_instance_are_exact_on_the_next_as_soon_as_it_serves_them";
    let Some(cluster) = ScyllaCluster::from_env(TEST).await else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(&settings, dir.path(), "a", FLUSH_DELAY_MS).await;
    let members = Members::new(["a", "b"]);
    let moving = users_of(&members, "b", 3);
    let staying = users_of(&members, "a", 1);
    assert!(
        serves(&a, &[moving.clone(), staying.clone()].concat()).await,
        "a alone"
    );

    // Acknowledged on a: acks, a fan-out with states, and deferred mentions
    // (users not cached wait in an inbox until their next load).
    for (index, user) in moving.iter().chain(&staying).enumerate() {
        let message = 100 + index as u64;
        a.client.ack(ack_request(*user, 10, message)).await.unwrap();
    }
    a.client
        .add_mentions(mention(30, 700, moving.clone(), false))
        .await
        .unwrap();
    let cold = users_of(&members, "b", 6)[3..].to_vec();
    for message in [500, 501] {
        let users = [moving.clone(), cold.clone()].concat();
        a.client
            .add_mentions(mention(20, message, users, true))
            .await
            .unwrap();
    }
    a.client
        .add_mentions(mention(20, 501, cold.clone(), true))
        .await
        .unwrap(); // a retry counts once

    // b joins: a hands off b's share before releasing it.
    let joined = Instant::now();
    let mut b = start(&settings, dir.path(), "b", FLUSH_DELAY_MS).await;
    assert!(
        serves(&b, &[moving.clone(), cold.clone()].concat()).await,
        "b took its share"
    );
    let took = joined.elapsed();
    for (index, user) in moving.iter().enumerate() {
        let state = get(&mut b.client, *user, 10).await;
        assert_eq!(state.last_message_id, 100 + index as u64, "user {user}");
        assert_eq!(get(&mut b.client, *user, 30).await.mention_count, 1);
        assert_eq!(get(&mut b.client, *user, 20).await.mention_count, 2);
    }
    for user in &cold {
        assert_eq!(
            get(&mut b.client, *user, 20).await.mention_count,
            2,
            "user {user}"
        );
    }
    assert!(
        took < Duration::from_millis(FLUSH_DELAY_MS / 4),
        "b served its share {took:?} after joining"
    );
    // a no longer serves them, and still serves its own.
    let refused = a
        .client
        .ack(ack_request(moving[0], 10, 999))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        get(&mut a.client, staying[0], 10).await.last_message_id,
        103
    );

    let (_, text) = http_get(a.running.metrics_addr.unwrap(), "/metrics").await;
    let completed = sample(
        &text,
        "readstates_cluster_handoffs_total{result=\"completed\"}",
    );
    let written = sample(&text, "readstates_cluster_handoff_users_written_total");
    assert!(completed.is_some_and(|count| count >= 1.0), "{completed:?}");
    assert!(written.is_some_and(|count| count >= 6.0), "{written:?}");
    let handoff_seconds = sample(&text, "readstates_cluster_handoff_duration_seconds_sum");
    eprintln!(
        "cluster_handoff: b served its share {took:?} after joining; a's handoffs wrote \
         {written:?} users in {handoff_seconds:?} s"
    );

    b.shutdown().await;
    a.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_that_moves_away_and_back_is_served_from_the_store_not_a_stale_copy() {
    const TEST: &str = "a_slot_that_moves_away_and_back_is_served_from_the_store_not_a_stale_copy";
    let Some(cluster) = ScyllaCluster::from_env(TEST).await else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    // a writes behind at once: its copy of the user is clean, and still
    // cached, when the slot moves.
    let mut a = start(&settings, dir.path(), "a", 100).await;
    let members = Members::new(["a", "b"]);
    let user = users_of(&members, "b", 1)[0];
    assert!(serves(&a, &[user]).await, "a alone");
    a.client.ack(ack_request(user, 10, 100)).await.unwrap();
    a.client
        .add_mentions(mention(20, 500, vec![user], false))
        .await
        .unwrap();
    let clean = eventually(Duration::from_secs(10), async || {
        a.running.cache.dirty_states() == 0
    })
    .await;
    assert!(clean, "a wrote the user");

    // To b, which changes the user ...
    let mut b = start(&settings, dir.path(), "b", FLUSH_DELAY_MS).await;
    assert!(serves(&b, &[user]).await, "b took the slot");
    assert_eq!(get(&mut b.client, user, 10).await.last_message_id, 100);
    b.client.ack(ack_request(user, 10, 200)).await.unwrap();
    b.client.ack(ack_request(user, 20, 600)).await.unwrap();
    b.client
        .add_mentions(mention(30, 700, vec![user], false))
        .await
        .unwrap();

    // ... and back to a when b leaves: a serves b's changes.
    b.shutdown().await;
    assert!(serves(&a, &[user]).await, "a took the slot back");
    assert_eq!(get(&mut a.client, user, 10).await.last_message_id, 200);
    let mentioned = get(&mut a.client, user, 20).await;
    assert_eq!(
        (mentioned.last_message_id, mentioned.mention_count),
        (600, 0)
    );
    assert_eq!(get(&mut a.client, user, 30).await.mention_count, 1);

    a.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handoff_the_store_refuses_keeps_the_lease_until_it_runs_out() {
    const TEST: &str = "a_handoff_the_store_refuses_keeps_the_lease_until_it_runs_out";
    let Some(cluster) = ScyllaCluster::from_env(TEST).await else {
        return;
    };
    if !cluster.single_node(
        "cluster_handoff::a_handoff_the_store_refuses_keeps_the_lease_until_it_runs_out",
    ) {
        return;
    }
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    // a's store goes through a proxy the test cuts; its leases do not.
    let (proxy, proxied) = Proxy::to_node(&cluster, &settings).await;
    let store = ScyllaStore::open_with(&proxied, |builder| proxy.route(builder))
        .await
        .unwrap();
    let config = server_config(&settings, dir.path(), "a", FLUSH_DELAY_MS);
    let mut a = TestServer::start(&config, Arc::new(store)).await;
    let members = Members::new(["a", "b"]);
    let user = users_of(&members, "b", 1)[0];
    assert!(serves(&a, &[user]).await, "a alone");
    a.client.ack(ack_request(user, 10, 100)).await.unwrap();

    // The handoff cannot write: a keeps the lease, and b waits for it to
    // run out (a dead member's wait, not a released slot's).
    proxy.set_up(false);
    let joined = Instant::now();
    let mut b = start(&settings, dir.path(), "b", FLUSH_DELAY_MS).await;
    assert!(serves(&b, &[user]).await, "b took the slot");
    let took = joined.elapsed();
    assert!(
        took >= Duration::from_millis(LEASE_MS / 3),
        "b served the slot {took:?} after joining: the lease was released unwritten"
    );
    let (_, text) = http_get(a.running.metrics_addr.unwrap(), "/metrics").await;
    let unfinished = ["failed", "timed_out"]
        .map(|result| {
            let series = format!("readstates_cluster_handoffs_total{{result=\"{result}\"}}");
            sample(&text, &series).unwrap_or(0.0)
        })
        .iter()
        .sum::<f64>();
    assert!(unfinished >= 1.0, "{text}");
    assert!(
        sample(
            &text,
            "readstates_cluster_handoffs_total{result=\"completed\"}"
        ) == Some(0.0),
        "no handoff completed"
    );

    // b changes the user; a's write, made once its store is back, is older
    // and loses, as a crashed instance's would.
    b.client.ack(ack_request(user, 10, 50)).await.unwrap();
    b.shutdown().await;
    proxy.set_up(true);
    let cache = Arc::clone(&a.running.cache);
    let drained = eventually(Duration::from_secs(30), async || cache.dirty_states() == 0).await;
    assert!(drained, "a's write-behind wrote the user");
    let observer = ScyllaStore::open(&settings).await.unwrap();
    let states = common::stored(&observer as &dyn Store, user).await;
    let last = states.iter().find(|state| state.channel_id.get() == 10);
    assert_eq!(last.map(|state| state.last_message_id.get()), Some(50));
    eprintln!(
        "cluster_handoff: with a's store cut off, b served the slot {took:?} after joining \
         (leases of {LEASE_MS} ms)"
    );

    a.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}
