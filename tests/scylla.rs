//! The ScyllaDB / Cassandra store against a real cluster: migrations, the
//! store's paged reads and bounded writes, ARCHITECTURE.md §1.2 through the
//! service, write-behind and eviction, restarts, and an unreachable cluster.
//! The contract every store keeps (versioned writes, deletes, the version
//! floor) is checked against the cluster in `tests/store_contract.rs`.
//!
//! Enabled when `READSTATES_TEST_SCYLLA` names contact points, e.g.
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test scylla`
//! (`READSTATES_TEST_SCYLLA_DC` names the datacenter, default
//! `datacenter1`). Without it each test prints why it was skipped and
//! passes; only the closed-port test needs no cluster and always runs. Each
//! test works in its own keyspace `readstates_test_<random>`, dropped when
//! the test passes (a failed test leaves its keyspace for inspection). Only
//! CQL common to ScyllaDB and Cassandra 4 (protocol v4) is used.
//!
//! The outage test routes the store through a TCP proxy in the test and
//! cuts it; it needs a single-node cluster (with more nodes the driver
//! would reach the others directly) and skips otherwise. An address
//! translator sends the driver to the proxy whatever address the node
//! advertises.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::{Cluster, Proxy, put, state, write};
use common::{Client, TestServer, ack_request, eventually, test_config};
use readstates::api::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetReadStateRequest, GetUserReadStatesRequest, ReadState,
    RemoveMentionsRequest,
};
use readstates::config::{Config, ScyllaConfig, StoreBackend};
use readstates::ids::UserId;
use readstates::store::{
    LoadPriority, MigrateError, RowWrite, ScyllaError, ScyllaStore, Store, UserRows,
};
use tokio::net::TcpListener;
use tonic::Code;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A service config over `settings`, on loopback ports.
fn service_config(dir: &std::path::Path, settings: &ScyllaConfig) -> Config {
    let mut config = test_config(dir);
    config.store.backend = StoreBackend::Scylla;
    config.scylla = settings.clone();
    config
}

async fn open(settings: &ScyllaConfig) -> Arc<ScyllaStore> {
    Arc::new(ScyllaStore::open(settings).await.unwrap())
}

fn user(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

async fn load(store: &dyn Store, user_id: u64) -> UserRows {
    store
        .load_user(user(user_id), LoadPriority::Urgent)
        .await
        .unwrap()
}

fn last_of(rows: &UserRows, channel: u64) -> Option<u64> {
    rows.states
        .iter()
        .find(|state| state.channel_id.get() == channel)
        .map(|state| state.last_message_id.get())
}

// gRPC helpers.

async fn ack(c: &mut Client, user_id: u64, channel_id: u64, message_id: u64) -> ReadState {
    c.ack(ack_request(user_id, channel_id, message_id))
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap()
}

async fn get(c: &mut Client, user_id: u64, channel_id: u64) -> ReadState {
    c.get_read_state(GetReadStateRequest {
        user_id,
        channel_id,
    })
    .await
    .unwrap()
    .into_inner()
    .read_state
    .unwrap()
}

async fn mention(c: &mut Client, channel_id: u64, message_id: u64, user_ids: Vec<u64>) {
    c.add_mentions(AddMentionsRequest {
        channel_id,
        message_id,
        user_ids,
        omit_read_states: false,
    })
    .await
    .unwrap();
}

async fn unmention(c: &mut Client, channel_id: u64, message_id: u64, user_ids: Vec<u64>) {
    c.remove_mentions(RemoveMentionsRequest {
        channel_id,
        message_id,
        user_ids,
    })
    .await
    .unwrap();
}

async fn user_states(
    c: &mut Client,
    user_id: u64,
    since_version: Option<u64>,
) -> (Vec<ReadState>, u64) {
    let response = c
        .get_user_read_states(GetUserReadStatesRequest {
            user_id,
            since_version,
        })
        .await
        .unwrap()
        .into_inner();
    (response.read_states, response.version)
}

/// With a one-state cache, touching another user evicts everything else:
/// the next call of a user goes through the store (or the write in flight).
async fn churn(c: &mut Client) {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
    let other = NEXT.fetch_add(1, Ordering::Relaxed);
    ack(c, other, 1, 1).await;
}

// ---------------------------------------------------------------------------
// Without a cluster
// ---------------------------------------------------------------------------

#[tokio::test]
async fn opening_against_a_closed_port_fails_with_a_clear_error() {
    // Runs without a cluster: nothing listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = ScyllaConfig {
        contact_points: vec![format!("127.0.0.1:{port}")],
        connect_timeout_ms: 1_000,
        ..ScyllaConfig::default()
    };
    let opened = tokio::time::timeout(Duration::from_secs(30), ScyllaStore::open(&settings))
        .await
        .expect("opening must give up, not hang");
    let Err(error) = opened else {
        panic!("a closed port cannot be a cluster");
    };
    assert!(matches!(error, ScyllaError::Connect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("scylla.contact_points"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let config = service_config(dir.path(), &settings);
    let error = readstates::server::open_store(&config).await.err().unwrap();
    assert!(format!("{error:#}").contains("scylla"), "{error:#}");
}

#[test]
fn the_compose_config_is_valid_and_uses_the_cluster() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/readstates-scylla.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let config = Config::from_toml_and_env(&text, Vec::new()).unwrap();
    assert_eq!(config.store.backend, StoreBackend::Scylla);
    assert_eq!(config.scylla.contact_points, ["scylla:9042"]);
    assert_eq!(config.server.listen_addr.to_string(), "0.0.0.0:50051");
    assert_eq!(config.metrics.listen_addr.to_string(), "0.0.0.0:9464");
    assert!(config.scylla.replication.contains("'datacenter1': 1"));
    assert!(config.cluster.enabled);

    // docker-compose.yml's instances: each names itself by environment.
    let compose = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
    let compose = std::fs::read_to_string(compose).unwrap();
    let mut instances: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in compose.lines() {
        if let Some(service) = line.strip_prefix("  readstates-")
            && let Some(number) = service.strip_suffix(':')
        {
            instances.push((format!("readstates-{number}"), Vec::new()));
        } else if let Some((key, value)) = line.trim().split_once(": ")
            && key.starts_with("READSTATES_")
            && let Some((_, env)) = instances.last_mut()
        {
            env.push((key.to_owned(), value.to_owned()));
        }
    }
    assert_eq!(instances.len(), 3, "{instances:?}");
    for (service, env) in instances {
        let config = Config::from_toml_and_env(&text, env).unwrap();
        assert!(config.cluster.enabled);
        assert_eq!(config.cluster.instance_id, service);
        assert_eq!(config.cluster.advertise_addr, format!("{service}:50051"));
    }
}

// ---------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn migrations_apply_in_order_and_reapplying_changes_nothing() {
    let Some(cluster) =
        Cluster::from_env("migrations_apply_in_order_and_reapplying_changes_nothing").await
    else {
        return;
    };
    let settings = cluster.settings();

    // Before migrating, the store refuses to start and says what to do.
    let error = ScyllaStore::open(&settings).await.err().unwrap();
    assert!(
        matches!(error, ScyllaError::Schema(MigrateError::Pending { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("readstates migrate"), "{error}");

    let first = ScyllaStore::migrate(&settings).await.unwrap();
    assert_eq!(first.applied_now, [1, 2, 3, 4, 5]);
    assert!(first.already_applied.is_empty());
    let again = ScyllaStore::migrate(&settings).await.unwrap();
    assert!(again.applied_now.is_empty(), "{again:?}");
    assert_eq!(again.already_applied, [1, 2, 3, 4, 5]);

    let store = open(&settings).await;
    put(store.as_ref(), vec![write(1, state(2, 3, 4), false)]).await;
    assert_eq!(last_of(&load(store.as_ref(), 1).await, 2), Some(3));

    // migrate_on_start on a fresh keyspace migrates it.
    let fresh = ScyllaConfig {
        migrate_on_start: true,
        ..cluster.settings()
    };
    let store = open(&fresh).await;
    assert_eq!(load(store.as_ref(), 1).await, UserRows::default());
    let report = ScyllaStore::migrate(&fresh).await.unwrap();
    assert_eq!(report.already_applied, [1, 2, 3, 4, 5]);

    cluster.drop_keyspace(&settings).await;
    cluster.drop_keyspace(&fresh).await;
}

#[tokio::test]
async fn a_tampered_newer_or_foreign_schema_is_refused() {
    let Some(cluster) = Cluster::from_env("a_tampered_newer_or_foreign_schema_is_refused").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let keyspace = &settings.keyspace;

    // An applied migration whose recorded checksum differs from the file.
    cluster
        .query(format!(
            "UPDATE {keyspace}.schema_migrations SET checksum = '0000000000000000' WHERE version = 2"
        ))
        .await;
    let error = ScyllaStore::migrate(&settings).await.unwrap_err();
    assert!(
        matches!(
            error,
            ScyllaError::Schema(MigrateError::ChecksumMismatch { version: 2, .. })
        ),
        "{error:?}"
    );
    let error = ScyllaStore::open(&settings).await.err().unwrap();
    assert!(
        error.to_string().contains("must never be edited"),
        "{error}"
    );

    // Restore it, then record a migration from a newer build.
    cluster.drop_keyspace(&settings).await;
    let settings = cluster.migrated().await;
    let keyspace = &settings.keyspace;
    cluster
        .query(format!(
            "INSERT INTO {keyspace}.schema_migrations (version, name, checksum) \
             VALUES (99, 'from_the_future', 'x')"
        ))
        .await;
    let error = ScyllaStore::migrate(&settings).await.unwrap_err();
    assert!(
        matches!(
            error,
            ScyllaError::Schema(MigrateError::UnknownVersion { version: 99, .. })
        ),
        "{error:?}"
    );
    let error = ScyllaStore::open(&settings).await.err().unwrap();
    assert!(error.to_string().contains("newer readstates"), "{error}");
    cluster.drop_keyspace(&settings).await;

    // A keyspace holding someone else's tables is left alone.
    let foreign = cluster.settings();
    cluster
        .query(format!(
            "CREATE KEYSPACE {} WITH replication = {}",
            foreign.keyspace, foreign.replication
        ))
        .await;
    cluster
        .query(format!(
            "CREATE TABLE {}.theirs (id int PRIMARY KEY)",
            foreign.keyspace
        ))
        .await;
    let error = ScyllaStore::migrate(&foreign).await.unwrap_err();
    assert!(
        matches!(error, ScyllaError::Schema(MigrateError::Unmanaged { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("theirs"), "{error}");
    cluster.drop_keyspace(&foreign).await;
}

#[tokio::test]
async fn a_table_or_column_changed_by_hand_is_refused() {
    let Some(cluster) = Cluster::from_env("a_table_or_column_changed_by_hand_is_refused").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let keyspace = &settings.keyspace;
    let refused = async |settings: &ScyllaConfig| {
        let error = ScyllaStore::open(settings).await.err().unwrap();
        assert!(
            matches!(
                error,
                ScyllaError::Schema(MigrateError::SchemaMismatch { .. })
            ),
            "{error:?}"
        );
        let migrate_error = ScyllaStore::migrate(settings).await.unwrap_err();
        assert!(
            matches!(
                migrate_error,
                ScyllaError::Schema(MigrateError::SchemaMismatch { .. })
            ),
            "{migrate_error:?}"
        );
        error.to_string()
    };

    // The history is complete, but a column was dropped and another added.
    cluster
        .query(format!(
            "ALTER TABLE {keyspace}.read_states DROP untracked_until"
        ))
        .await;
    cluster
        .query(format!("ALTER TABLE {keyspace}.read_states ADD note text"))
        .await;
    let message = refused(&settings).await;
    assert!(
        message.contains("column read_states.untracked_until (bigint) is missing"),
        "{message}"
    );
    assert!(
        message.contains("column read_states.note (text) is not created by the migrations"),
        "{message}"
    );

    // A dropped table, and a table of someone else's.
    cluster.drop_keyspace(&settings).await;
    let settings = cluster.migrated().await;
    let keyspace = &settings.keyspace;
    cluster.query(format!("DROP TABLE {keyspace}.meta")).await;
    cluster
        .query(format!(
            "CREATE TABLE {keyspace}.theirs (id int PRIMARY KEY)"
        ))
        .await;
    let message = refused(&settings).await;
    assert!(message.contains("table meta is missing"), "{message}");
    assert!(message.contains("table theirs is not created"), "{message}");
    cluster.drop_keyspace(&settings).await;
}

// ---------------------------------------------------------------------------
// The store itself
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_user_with_many_channels_loads_across_pages() {
    let Some(cluster) = Cluster::from_env("a_user_with_many_channels_loads_across_pages").await
    else {
        return;
    };
    let settings = ScyllaConfig {
        page_size: 7,
        ..cluster.migrated().await
    };
    let store = open(&settings).await;
    let rows: Vec<RowWrite> = (1..=50)
        .map(|channel| write(3, state(channel, channel * 2, 100 + channel), false))
        .collect();
    put(store.as_ref(), rows).await;
    let loaded = load(store.as_ref(), 3).await;
    let channels: Vec<u64> = loaded.states.iter().map(|s| s.channel_id.get()).collect();
    assert_eq!(
        channels,
        (1..=50).collect::<Vec<_>>(),
        "every page, in channel order"
    );
    assert_eq!(loaded.version, 150);
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test]
async fn a_large_flush_of_many_users_lands_with_bounded_concurrency() {
    let Some(cluster) =
        Cluster::from_env("a_large_flush_of_many_users_lands_with_bounded_concurrency").await
    else {
        return;
    };
    let settings = ScyllaConfig {
        max_in_flight: 4,
        ..cluster.migrated().await
    };
    let store = open(&settings).await;
    let rows: Vec<RowWrite> = (1..=300)
        .flat_map(|user_id| {
            (1..=3).map(move |channel| write(user_id, state(channel, user_id, 5), false))
        })
        .collect();
    // Several flushes at once share the same cap.
    let (a, b) = rows.split_at(450);
    tokio::join!(
        put(store.as_ref(), a.to_vec()),
        put(store.as_ref(), b.to_vec())
    );
    for user_id in (1..=300).step_by(13) {
        let loaded = load(store.as_ref(), user_id).await;
        assert_eq!(loaded.states.len(), 3, "user {user_id}");
        assert_eq!(last_of(&loaded, 2), Some(user_id));
    }
    cluster.drop_keyspace(&settings).await;
}

// ---------------------------------------------------------------------------
// Through the service
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_section_2_semantic_holds_with_the_scylla_store() {
    let Some(cluster) =
        Cluster::from_env("every_section_2_semantic_holds_with_the_scylla_store").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = service_config(dir.path(), &settings);
    // One cached state: every step below reloads its user from the cluster.
    config.cache.capacity = 1;
    config.cache.partitions = 1;
    config.flush.delay_ms = 200;
    config.flush.tick_ms = 20;
    let mut server = TestServer::start(&config, open(&settings).await).await;
    let c = &mut server.client;

    // 1. Ack moves forward, clears mentions at or below it; a stale ack is a no-op.
    mention(c, 10, 105, vec![1]).await;
    mention(c, 10, 110, vec![1]).await;
    churn(c).await;
    let acked = ack(c, 1, 10, 106).await;
    assert_eq!((acked.last_message_id, acked.mention_count), (106, 1));
    churn(c).await;
    let stale = ack(c, 1, 10, 100).await;
    assert_eq!(
        (stale.last_message_id, stale.mention_count, stale.version),
        (106, 1, acked.version)
    );

    // 2. Manual ack sets the position backwards and the given count; later
    //    mentions add to it; the next forward ack clears it.
    churn(c).await;
    let manual = c
        .ack(AckRequest {
            user_id: 1,
            channel_id: 10,
            message_id: 50,
            manual: true,
            mention_count: Some(4),
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap();
    assert_eq!((manual.last_message_id, manual.mention_count), (50, 4));
    churn(c).await;
    mention(c, 10, 120, vec![1]).await;
    churn(c).await;
    assert_eq!(get(c, 1, 10).await.mention_count, 5);
    churn(c).await;
    let forward = ack(c, 1, 10, 200).await;
    assert_eq!((forward.last_message_id, forward.mention_count), (200, 0));

    // 3. AddMentions counts unread messages only, once, in any order.
    churn(c).await;
    mention(c, 20, 9, vec![2]).await;
    churn(c).await;
    mention(c, 20, 7, vec![2]).await;
    churn(c).await;
    mention(c, 20, 9, vec![2]).await; // a retry
    churn(c).await;
    assert_eq!(get(c, 2, 20).await.mention_count, 2);
    ack(c, 2, 20, 8).await;
    churn(c).await;
    mention(c, 20, 5, vec![2]).await; // already read
    churn(c).await;
    assert_eq!(get(c, 2, 20).await.mention_count, 1);

    // 4. RemoveMentions un-counts a counted mention only, never below zero.
    unmention(c, 20, 9, vec![2]).await;
    churn(c).await;
    unmention(c, 20, 9, vec![2]).await;
    unmention(c, 20, 3, vec![2]).await;
    churn(c).await;
    assert_eq!(get(c, 2, 20).await.mention_count, 0);

    // 5. AckPins keeps the newest pin.
    c.ack_pins(AckPinsRequest {
        user_id: 3,
        channel_id: 30,
        pin_timestamp_ms: 1_000,
    })
    .await
    .unwrap();
    churn(c).await;
    c.ack_pins(AckPinsRequest {
        user_id: 3,
        channel_id: 30,
        pin_timestamp_ms: 500,
    })
    .await
    .unwrap();
    churn(c).await;
    assert_eq!(get(c, 3, 30).await.last_pin_timestamp_ms, 1_000);

    // 6. Concurrent mentions of distinct messages are all counted.
    let mut tasks = Vec::new();
    for message in 0..200u64 {
        let mut client = c.clone();
        tasks.push(tokio::spawn(async move {
            mention(&mut client, 40, 1_000 + message, vec![4]).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    churn(c).await;
    assert_eq!(get(c, 4, 40).await.mention_count, 200);

    // BulkAck, deletes, and the user's state list with deltas.
    let bulk = c
        .bulk_ack(BulkAckRequest {
            user_id: 5,
            acks: (1..=3)
                .map(|channel_id| ChannelAck {
                    channel_id,
                    message_id: 10 * channel_id,
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .read_states;
    assert_eq!(bulk.len(), 3);
    churn(c).await;
    let (_, before_delete) = user_states(c, 5, None).await;
    c.delete_read_states(DeleteReadStatesRequest {
        user_id: 5,
        channel_ids: vec![2],
    })
    .await
    .unwrap();
    churn(c).await;
    let (states, version) = user_states(c, 5, None).await;
    let channels: Vec<u64> = states.iter().map(|state| state.channel_id).collect();
    assert_eq!(channels, [1, 3]);
    assert!(
        version > before_delete,
        "the deletion bumped the user's version"
    );
    assert_eq!(
        get(c, 5, 2).await.last_message_id,
        0,
        "a deleted pair reads as zeros"
    );
    ack(c, 5, 3, 99).await;
    churn(c).await;
    let (delta, _) = user_states(c, 5, Some(version)).await;
    let channels: Vec<u64> = delta.iter().map(|state| state.channel_id).collect();
    assert_eq!(channels, [3]);

    // 7. Validation does not depend on the store, but it still holds.
    let invalid = c.ack(ack_request(0, 1, 1)).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid.message().contains("user_id"),
        "{}",
        invalid.message()
    );

    server.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test]
async fn write_behind_and_eviction_writes_land() {
    let Some(cluster) = Cluster::from_env("write_behind_and_eviction_writes_land").await else {
        return;
    };
    let settings = cluster.migrated().await;
    let observer = open(&settings).await;
    let dir = tempfile::tempdir().unwrap();

    // Write-behind: a change lands within the flush delay.
    let mut config = service_config(dir.path(), &settings);
    config.flush.delay_ms = 500;
    config.flush.tick_ms = 50;
    let mut server = TestServer::start(&config, open(&settings).await).await;
    ack(&mut server.client, 1, 1, 42).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            last_of(&load(observer.as_ref(), 1).await, 1) == Some(42)
        })
        .await,
        "the timed flush never reached the cluster"
    );
    server.shutdown().await;

    // Eviction: with no timed flush, evicted dirty users are written at once.
    let mut config = service_config(dir.path(), &settings);
    config.cache.capacity = 20;
    config.cache.partitions = 2;
    config.flush.delay_ms = 600_000;
    let mut server = TestServer::start(&config, open(&settings).await).await;
    let users = 200u64;
    for user_id in 100..100 + users {
        ack(&mut server.client, user_id, 9, user_id * 10).await;
        mention(&mut server.client, 9, user_id * 10 + 1, vec![user_id]).await;
    }
    assert!(
        eventually(Duration::from_secs(30), async || {
            let mut landed = 0;
            for user_id in 100..100 + users {
                let rows = load(observer.as_ref(), user_id).await;
                if rows.states.iter().any(|state| {
                    state.last_message_id.get() == user_id * 10 && state.mention_count() == 1
                }) {
                    landed += 1;
                }
            }
            landed >= users - 20
        })
        .await,
        "evicted dirty states missing from the cluster"
    );
    for user_id in (100..100 + users).step_by(17) {
        let state = get(&mut server.client, user_id, 9).await;
        assert_eq!(
            (state.last_message_id, state.mention_count),
            (user_id * 10, 1)
        );
    }
    server.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test]
async fn a_restart_reads_everything_back_and_never_reuses_a_version() {
    let Some(cluster) =
        Cluster::from_env("a_restart_reads_everything_back_and_never_reuses_a_version").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = service_config(dir.path(), &settings);
    config.flush.delay_ms = 600_000; // only the graceful shutdown writes

    let mut server = TestServer::start(&config, open(&settings).await).await;
    let mut highest = 0;
    for channel in 1..=40 {
        highest = highest.max(
            ack(&mut server.client, 5, channel, channel * 3)
                .await
                .version,
        );
    }
    mention(&mut server.client, 40, 1_000, vec![5]).await;
    server
        .client
        .delete_read_states(DeleteReadStatesRequest {
            user_id: 5,
            channel_ids: vec![40],
        })
        .await
        .unwrap();
    let (_, version_before) = user_states(&mut server.client, 5, None).await;
    server.shutdown().await;

    let mut server = TestServer::start(&config, open(&settings).await).await;
    let (states, version) = user_states(&mut server.client, 5, None).await;
    assert_eq!(states.len(), 39);
    for state in &states {
        assert_eq!(state.last_message_id, state.channel_id * 3);
    }
    assert!(version >= highest);
    assert_eq!(
        version, version_before,
        "the deletion's version survived the restart"
    );
    let after = ack(&mut server.client, 5, 41, 1).await;
    assert!(
        after.version > version,
        "a restarted server reused a version"
    );
    server.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}

// ---------------------------------------------------------------------------
// An unreachable cluster
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_cluster_gives_unavailable_and_recovers() {
    let Some(cluster) =
        Cluster::from_env("an_unreachable_cluster_gives_unavailable_and_recovers").await
    else {
        return;
    };
    if !cluster.single_node("scylla::an_unreachable_cluster_gives_unavailable_and_recovers") {
        return;
    }
    let settings = cluster.migrated().await;
    let (proxy, proxied) = Proxy::to_node(&cluster, &settings).await;
    let store = ScyllaStore::open_with(&proxied, |builder| proxy.route(builder))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = service_config(dir.path(), &proxied);
    config.flush.delay_ms = 200;
    config.flush.tick_ms = 20;
    config.flush.max_dirty_states = 5;
    config.flush.retry_initial_ms = 50;
    config.flush.retry_max_ms = 500;
    let mut server = TestServer::start(&config, Arc::new(store)).await;
    let c = &mut server.client;
    ack(c, 1, 1, 1).await; // user 1 is cached

    proxy.set_up(false);
    // Cached states keep being served and updated.
    for channel in 1..=5 {
        ack(c, 1, channel, 100).await;
    }
    assert_eq!(get(c, 1, 3).await.last_message_id, 100);
    // Past the backlog limit, writes are refused rather than buffered.
    let refused = c.ack(ack_request(1, 6, 100)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // An uncached user cannot be loaded.
    let unavailable = c
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: 2,
            since_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    let dirty = server.running.cache.dirty_states();
    assert!(dirty > 0 && dirty <= 5, "{dirty} dirty states");

    // When the cluster is reachable again, everything recovers by itself.
    proxy.set_up(true);
    let cache = Arc::clone(&server.running.cache);
    assert!(
        eventually(Duration::from_secs(60), async || cache.dirty_states() == 0).await,
        "the backlog never drained"
    );
    let observer = open(&settings).await;
    for channel in 1..=5 {
        assert_eq!(
            last_of(&load(observer.as_ref(), 1).await, channel),
            Some(100)
        );
    }
    let c = &mut server.client;
    assert!(
        eventually(Duration::from_secs(30), async || {
            c.get_user_read_states(GetUserReadStatesRequest {
                user_id: 2,
                since_version: None,
            })
            .await
            .is_ok()
        })
        .await
    );
    ack(c, 1, 6, 100).await;
    server.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}

/// A restart taken while the cluster hangs (it keeps connections open and
/// answers nothing, as a node under SIGSTOP): the shutdown gives up at its
/// deadline and spills what the store did not take, and the next start,
/// with the cluster back, writes it. Every acknowledged change is there.
#[tokio::test]
async fn a_restart_during_a_hung_cluster_loses_nothing_acknowledged() {
    let Some(cluster) =
        Cluster::from_env("a_restart_during_a_hung_cluster_loses_nothing_acknowledged").await
    else {
        return;
    };
    if !cluster.single_node("scylla::a_restart_during_a_hung_cluster_loses_nothing_acknowledged") {
        return;
    }
    let settings = cluster.migrated().await;
    let (proxy, proxied) = Proxy::to_node(&cluster, &settings).await;
    let store = ScyllaStore::open_with(&proxied, |builder| proxy.route(builder))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let mut config = service_config(dir.path(), &proxied);
    config.store.spill_dir = Some(spill.path().to_owned());
    config.flush.delay_ms = 200;
    config.flush.tick_ms = 20;
    config.flush.retry_initial_ms = 50;
    config.flush.retry_max_ms = 500;
    config.server.drain_timeout_ms = 500;
    config.server.shutdown_timeout_ms = 2_000;
    let mut server = TestServer::start(&config, Arc::new(store)).await;
    let users = 1..=30u64;
    for user in users.clone() {
        ack(&mut server.client, user, 1, 10).await;
    }
    let cache = Arc::clone(&server.running.cache);
    assert!(eventually(Duration::from_secs(30), async || cache.dirty_states() == 0).await);

    proxy.set_hung(true);
    for user in users.clone() {
        for channel in 1..=3 {
            ack(&mut server.client, user, channel, 20).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.running.cache.dirty_states() > 0);
    let TestServer { running, client } = server;
    drop(client);
    tokio::time::timeout(Duration::from_secs(60), running.shutdown())
        .await
        .expect("the shutdown hung with the cluster")
        .expect("the unwritten states were spilled");
    assert_eq!(common::spill_files(spill.path()), 1);

    // The cluster comes back (and this instance restarts on it directly).
    proxy.set_hung(false);
    let restarted_dir = tempfile::tempdir().unwrap();
    let mut config = service_config(restarted_dir.path(), &settings);
    config.store.spill_dir = Some(spill.path().to_owned());
    let mut server = TestServer::start(&config, open(&settings).await).await;
    assert_eq!(common::spill_files(spill.path()), 0);
    let observer = open(&settings).await;
    for user in users {
        for channel in 1..=3 {
            assert_eq!(
                get(&mut server.client, user, channel).await.last_message_id,
                20
            );
            assert_eq!(
                last_of(&load(observer.as_ref(), user).await, channel),
                Some(20),
                "user {user} channel {channel} in the store"
            );
        }
    }
    server.shutdown().await;
    cluster.drop_keyspace(&settings).await;
}
