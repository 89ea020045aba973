//! Slot ownership against a real cluster: several ownership tasks in one
//! process over one keyspace, as several instances would run them, while
//! members join, one leaves gracefully and one stops dead. A watcher
//! samples every task's view of the slots it serves, and the lease table,
//! the whole time, and fails the test at the first slot two tasks serve at
//! once, or that a task serves while the table names another holder. Two
//! servers with the cluster on split the users between them; and a process
//! restarted under the same instance id waits out its predecessor's leases.
//! A member cut off from the cluster (through a proxy the test cuts: a
//! single-node cluster only) stops serving before another takes its slots.
//!
//! Gated like the Scylla suite (see `common::cluster`):
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test cluster`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster as ScyllaCluster, Proxy};
use common::{TestServer, ack_request, eventually, get, http_get, sample, test_config};
use parking_lot::Mutex;
use readstates::api::proto::AddMentionsRequest;
use readstates::cluster::placement::Members;
use readstates::cluster::{Cluster, ClusterError, ClusterMetrics, Ownership};
use readstates::config::{ClusterConfig, ScyllaConfig, StoreBackend};
use readstates::ids::UserId;
use readstates::server;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Few slots keep each run's Paxos rounds few on a one-node test cluster.
const SLOTS: u32 = 64;
/// Short leases, so a dead member's slots free themselves quickly.
const LEASE_MS: u64 = 3_000;

fn cluster_config(instance_id: &str) -> ClusterConfig {
    let config = ClusterConfig {
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
    config.validate(true).unwrap();
    config
}

/// Every task ever started, by instance id, with its view of its slots
/// (kept after the task stops: a dead task's view lapses by itself).
type Views = Arc<Mutex<Vec<(String, Arc<Ownership>)>>>;

/// Returns the slots `view` serves.
fn served(view: &Ownership) -> Vec<bool> {
    (0..SLOTS).map(|slot| view.owns_slot(slot)).collect()
}

/// Samples the views (and, every tenth sample, the lease table) until
/// `stop`; returns what it saw go wrong and how many samples it took.
async fn watch(
    cluster: Arc<ScyllaCluster>,
    settings: ScyllaConfig,
    views: Views,
    stop: CancellationToken,
) -> (Vec<String>, usize) {
    let mut violations = Vec::new();
    let mut samples = 0;
    while !stop.is_cancelled() {
        samples += 1;
        let views: Vec<(String, Arc<Ownership>)> = views.lock().clone();
        // A before B before A again: a reported overlap means B served
        // the slot at an instant between two at which A served it.
        for (a, view_a) in &views {
            for (b, view_b) in &views {
                if a == b {
                    continue;
                }
                for slot in 0..SLOTS {
                    if view_a.owns_slot(slot) && view_b.owns_slot(slot) && view_a.owns_slot(slot) {
                        violations.push(format!("slot {slot} served by {a} and {b} at once"));
                    }
                }
            }
        }
        if samples % 10 == 0 {
            let before: Vec<Vec<bool>> = views.iter().map(|(_, view)| served(view)).collect();
            let holders = cluster.lease_holders(&settings).await;
            let after: Vec<Vec<bool>> = views.iter().map(|(_, view)| served(view)).collect();
            for (index, (id, _)) in views.iter().enumerate() {
                for slot in 0..SLOTS as usize {
                    if before[index][slot]
                        && after[index][slot]
                        && holders.get(&(slot as u32)) != Some(id)
                    {
                        violations.push(format!(
                            "{id} served slot {slot} while the lease table named {:?}",
                            holders.get(&(slot as u32))
                        ));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (violations, samples)
}

/// Whether the tasks of `live` serve exactly their rendezvous targets over
/// `live`, every slot once, and the lease table agrees.
async fn settled(
    cluster: &ScyllaCluster,
    settings: &ScyllaConfig,
    views: &Views,
    live: &[&str],
) -> bool {
    let members = Members::new(live.iter().copied());
    let views: Vec<(String, Arc<Ownership>)> = views.lock().clone();
    for slot in 0..SLOTS {
        let target = members.owner_of(slot).unwrap();
        let servers: Vec<&str> = views
            .iter()
            .filter(|(_, view)| view.owns_slot(slot))
            .map(|(id, _)| id.as_str())
            .collect();
        if servers != [target] {
            return false;
        }
    }
    let holders = cluster.lease_holders(settings).await;
    (0..SLOTS).all(|slot| holders.get(&slot).map(String::as_str) == members.owner_of(slot))
}

async fn join(settings: &ScyllaConfig, views: &Views, id: &str) -> Cluster {
    let member = Cluster::start(settings, &cluster_config(id), ClusterMetrics::default())
        .await
        .unwrap();
    views.lock().push((id.to_owned(), member.ownership()));
    member
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_move_as_members_join_leave_and_die_and_none_is_ever_served_twice() {
    let Some(cluster) = ScyllaCluster::from_env(
        "slots_move_as_members_join_leave_and_die_and_none_is_ever_served_twice",
    )
    .await
    else {
        return;
    };
    let cluster = Arc::new(cluster);
    let settings = cluster.migrated().await;
    let views: Views = Arc::default();
    let stop_watching = CancellationToken::new();
    let watcher = tokio::spawn(watch(
        Arc::clone(&cluster),
        settings.clone(),
        Arc::clone(&views),
        stop_watching.clone(),
    ));
    let settles = async |live: &[&str], limit: Duration| {
        eventually(limit, async || {
            settled(&cluster, &settings, &views, live).await
        })
        .await
    };

    // One member takes every slot; a second and a third take their shares.
    let a = join(&settings, &views, "a").await;
    assert!(settles(&["a"], Duration::from_secs(15)).await, "a alone");
    let b = join(&settings, &views, "b").await;
    assert!(
        settles(&["a", "b"], Duration::from_secs(15)).await,
        "a and b"
    );
    let c = join(&settings, &views, "c").await;
    assert!(
        settles(&["a", "b", "c"], Duration::from_secs(15)).await,
        "a, b and c"
    );

    // A graceful leave releases its slots: the others take them at once,
    // well before the leases would have expired.
    let leaving = Instant::now();
    b.stop().await;
    assert!(
        settles(&["a", "c"], Duration::from_secs(10)).await,
        "after b left"
    );
    let handover = leaving.elapsed();
    assert!(
        handover < Duration::from_millis(LEASE_MS / 2),
        "a released slot waited {handover:?} for its new owner"
    );

    // A dead member's slots are taken once its leases run out.
    let dying = Instant::now();
    c.abandon();
    assert!(
        settles(&["a"], Duration::from_secs(15)).await,
        "after c died"
    );
    let takeover = dying.elapsed();
    assert!(
        takeover >= Duration::from_millis(LEASE_MS / 3),
        "c's slots were taken {takeover:?} after it died, before its leases could expire"
    );
    assert!(
        takeover <= Duration::from_millis(LEASE_MS * 3),
        "c's slots were taken only {takeover:?} after it died"
    );

    stop_watching.cancel();
    let (violations, samples) = watcher.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(samples > 100, "the watcher sampled only {samples} times");
    eprintln!(
        "cluster: {samples} samples, handover after a graceful leave {handover:?}, \
         takeover after a death {takeover:?}"
    );
    a.stop().await;
    assert!(
        cluster.lease_holders(&settings).await.is_empty(),
        "a released everything"
    );
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test]
async fn an_instance_configured_with_another_slot_count_refuses_to_start() {
    let Some(cluster) =
        ScyllaCluster::from_env("an_instance_configured_with_another_slot_count_refuses_to_start")
            .await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let first = Cluster::start(&settings, &cluster_config("a"), ClusterMetrics::default())
        .await
        .unwrap();
    let other = ClusterConfig {
        slots: SLOTS * 2,
        ..cluster_config("b")
    };
    let error = Cluster::start(&settings, &other, ClusterMetrics::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            error,
            ClusterError::SlotCount {
                configured: 128,
                recorded: 64,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("cluster.slots = 64"), "{error}");
    first.stop().await;
    // A restart with the recorded count is accepted.
    Cluster::start(&settings, &cluster_config("b"), ClusterMetrics::default())
        .await
        .unwrap()
        .stop()
        .await;
    cluster.drop_keyspace(&settings).await;
}

/// Returns a user whose slot `members` places on `id`.
fn user_of(members: &Members, id: &str) -> u64 {
    (1..)
        .find(|user| {
            let slot = readstates::cluster::slot_of(UserId::new(*user).unwrap(), SLOTS);
            members.owner_of(slot) == Some(id)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_serves_only_the_users_of_its_slots() {
    let Some(cluster) =
        ScyllaCluster::from_env("an_instance_serves_only_the_users_of_its_slots").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let mut config = test_config(dir.path());
        config.store.backend = StoreBackend::Scylla;
        config.scylla = settings.clone();
        config.cluster = cluster_config(id);
        config.validate().unwrap();
        let store = server::open_store(&config).await.unwrap();
        servers.push(TestServer::start(&config, store).await);
    }
    let views: Vec<Arc<Ownership>> = servers
        .iter()
        .map(|server| server.running.ownership.clone().unwrap())
        .collect();
    let members = Members::new(["a", "b"]);
    let all_placed = eventually(Duration::from_secs(15), async || {
        (0..SLOTS).all(|slot| {
            let target = usize::from(members.owner_of(slot) == Some("b"));
            views[target].owns_slot(slot) && !views[1 - target].owns_slot(slot)
        })
    })
    .await;
    assert!(all_placed, "the two servers split the slots");

    let user_a = user_of(&members, "a");
    let user_b = user_of(&members, "b");
    let slot_b = readstates::cluster::slot_of(UserId::new(user_b).unwrap(), SLOTS);
    let (first, second) = servers.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut second[0]);
    a.client.ack(ack_request(user_a, 10, 100)).await.unwrap();
    b.client.ack(ack_request(user_b, 10, 200)).await.unwrap();
    // The advertised addresses (`b.test`) lead nowhere: the forward to b
    // fails, naming the slot (`tests/cluster_routing.rs` forwards for real).
    let refused = a
        .client
        .ack(ack_request(user_b, 10, 300))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&format!("slot {slot_b}")),
        "{}",
        refused.message()
    );
    // Bad input is still INVALID_ARGUMENT, whoever serves the user.
    let invalid = a.client.ack(ack_request(user_b, 0, 300)).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    // So does a fan-out with a part for b.
    let mention = AddMentionsRequest {
        channel_id: 10,
        message_id: 400,
        user_ids: vec![user_a, user_b],
        omit_read_states: false,
    };
    let refused = a.client.add_mentions(mention).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(get(&mut b.client, user_b, 10).await.last_message_id, 200);

    let (_, text) = http_get(a.running.metrics_addr.unwrap(), "/metrics").await;
    let owned = sample(&text, "readstates_cluster_owned_slots").unwrap();
    assert!(owned > 0.0 && owned < f64::from(SLOTS), "{owned}");
    let renewals = eventually(Duration::from_secs(5), async || {
        let (_, text) = http_get(a.running.metrics_addr.unwrap(), "/metrics").await;
        sample(
            &text,
            "readstates_cluster_lease_renewals_total{result=\"renewed\"}",
        )
        .is_some_and(|renewed| renewed > 0.0)
    })
    .await;
    assert!(renewals, "renewals are counted");

    for server in servers {
        server.shutdown().await;
    }
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_instance_waits_out_its_predecessors_leases() {
    let Some(cluster) =
        ScyllaCluster::from_env("a_restarted_instance_waits_out_its_predecessors_leases").await
    else {
        return;
    };
    let settings = cluster.migrated().await;
    let views: Views = Arc::default();
    let first = join(&settings, &views, "a").await;
    let eventually_all = async |view: &Ownership| {
        eventually(Duration::from_secs(15), async || {
            view.owned_slots() == SLOTS as usize
        })
        .await
    };
    let old = first.ownership();
    assert!(
        eventually_all(&old).await,
        "the first process takes every slot"
    );

    // A crash and an immediate restart under the same instance id: the new
    // process (another incarnation) must not renew the old leases, only
    // take the slots once they expire.
    let crashed = Instant::now();
    first.abandon();
    let second = Cluster::start(&settings, &cluster_config("a"), ClusterMetrics::default())
        .await
        .unwrap();
    let new = second.ownership();
    let mut overlaps = Vec::new();
    let all_taken = eventually(Duration::from_secs(15), async || {
        for slot in 0..SLOTS {
            if old.owns_slot(slot) && new.owns_slot(slot) && old.owns_slot(slot) {
                overlaps.push(slot);
            }
        }
        new.owned_slots() == SLOTS as usize
    })
    .await;
    let waited = crashed.elapsed();
    assert!(all_taken, "the restarted process takes every slot");
    assert!(
        overlaps.is_empty(),
        "served by both processes: {overlaps:?}"
    );
    assert!(
        waited >= Duration::from_millis(LEASE_MS / 3),
        "the old leases were taken over after {waited:?}, before they could expire"
    );
    second.stop().await;
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_member_stops_serving_before_its_slots_are_taken() {
    const TEST: &str = "a_partitioned_member_stops_serving_before_its_slots_are_taken";
    let Some(cluster) = ScyllaCluster::from_env(TEST).await else {
        return;
    };
    let nodes = cluster.admin.get_cluster_state().get_nodes_info().len();
    if nodes != 1 {
        eprintln!("cluster::{TEST}: skipped: needs a single-node cluster, this one has {nodes}");
        return;
    }
    let cluster = Arc::new(cluster);
    let settings = cluster.migrated().await;
    let views: Views = Arc::default();
    let stop_watching = CancellationToken::new();
    let watcher = tokio::spawn(watch(
        Arc::clone(&cluster),
        settings.clone(),
        Arc::clone(&views),
        stop_watching.clone(),
    ));
    let settles = async |live: &[&str], limit: Duration| {
        eventually(limit, async || {
            settled(&cluster, &settings, &views, live).await
        })
        .await
    };

    // b reaches the cluster through a proxy the test can cut.
    let a = join(&settings, &views, "a").await;
    let (proxy, proxied) = Proxy::to_node(&cluster, &settings).await;
    let b = Cluster::start_with(
        &proxied,
        &cluster_config("b"),
        ClusterMetrics::default(),
        |builder| proxy.route(builder),
    )
    .await
    .unwrap();
    let b_view = b.ownership();
    views.lock().push(("b".to_owned(), Arc::clone(&b_view)));
    assert!(
        settles(&["a", "b"], Duration::from_secs(15)).await,
        "a and b"
    );
    let b_slots: Vec<u32> = (0..SLOTS).filter(|slot| b_view.owns_slot(*slot)).collect();

    // Cut off, b stops serving on its own clock; a takes b's slots only
    // after their leases expire, which is later.
    let cut = Instant::now();
    proxy.set_up(false);
    let mut b_stopped = None;
    let mut a_took = None;
    let a_view = a.ownership();
    let taken = eventually(Duration::from_secs(20), async || {
        if b_stopped.is_none() && b_view.owned_slots() == 0 {
            b_stopped = Some(cut.elapsed());
        }
        if a_took.is_none() && b_slots.iter().any(|slot| a_view.owns_slot(*slot)) {
            a_took = Some(cut.elapsed());
        }
        a_view.owned_slots() == SLOTS as usize
    })
    .await;
    assert!(taken, "a takes every slot while b is cut off");
    let (b_stopped, a_took) = (b_stopped.unwrap(), a_took.unwrap());
    assert!(
        b_stopped < a_took,
        "b stopped serving {b_stopped:?} after the cut, a took its first slot {a_took:?} after"
    );

    // Back in touch, b takes its share again.
    proxy.set_up(true);
    assert!(
        settles(&["a", "b"], Duration::from_secs(20)).await,
        "b rejoined"
    );

    stop_watching.cancel();
    let (violations, samples) = watcher.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    eprintln!(
        "cluster: partitioned b stopped serving {b_stopped:?} after the cut; a took its first \
         slot {a_took:?} after ({samples} samples)"
    );
    b.stop().await;
    a.stop().await;
    cluster.drop_keyspace(&settings).await;
}
