//! The project's client (`readstates-client`) against a real cluster:
//! server processes with the cluster on, over one keyspace, their slots
//! moving as instances join, leave, die and restart.
//!
//! - Routing: with three instances, then after a join, a graceful leave
//!   (SIGTERM) and a kill (SIGKILL, its slots taken after its lease runs
//!   out), rounds of every kind of call keep succeeding while the slots
//!   move (a call failing once the client gave up, with a status it
//!   retries, is counted and sent again); once the slots settle and the
//!   client has read the map again, its map is the lease table, and a
//!   round of a few hundred calls over users of every owner makes no
//!   forward at any instance, no retry and no failure.
//! - Retries and mentions: random AddMentions, RemoveMentions and Acks
//!   with per-attempt deadlines of a few milliseconds, so attempts expire
//!   at the client after the instance applied them and are sent again
//!   (the instances' OK counts show how many); every answer and every
//!   final count equals a model that counts each (channel, message, user)
//!   once.
//! - Rolling restart: a steady load of safe calls from two clients (the
//!   builder's defaults, and one made for restarts) while each instance in
//!   turn is stopped (SIGTERM) and started again with the same id and
//!   address; only calls that ran out of retries fail, only during a
//!   restart, few of them (bounds and reasons in the test), and the final
//!   state equals the model, through the client and in the store.
//!
//! Every test also fails, at its end, if the client returned at once a
//! failure it should have retried (a lost connection, an instance's
//! timeout: see `support::unretried`).
//!
//! Gated like the other cluster suites (see `common::cluster`):
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test client_cluster
//! -- --test-threads=1 --nocapture`. The retry counts come from the
//! client's logs, process-wide: exact with `--test-threads=1`.
//! `READSTATES_CLIENT_CLUSTER_SEED` replays a run's calls;
//! `READSTATES_CLIENT_CLUSTER_LOGS` names a folder to keep the servers'
//! logs in.

#[path = "client_cluster/batch.rs"]
mod batch;
mod common;
#[path = "client_cluster/load.rs"]
mod load;
#[path = "client_cluster/mentions.rs"]
mod mentions;
#[path = "client_cluster/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use batch::Tally;
use common::cluster::Cluster;
use common::routing::{lease_table, slot_of};
use readstates::cluster::placement::Members;
use readstates::ids::UserId;
use readstates::store::{LoadPriority, ScyllaStore, Store};
use readstates_client::proto::GetUserReadStatesRequest;
use readstates_client::{Code, ReadStatesClient, RetryPolicy};
use support::{Instance, Retries, client, client_map, forwards, wait_settled};
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// Routing follows the cluster

/// Returns each of `instances`.
fn all(instances: &[Instance]) -> Vec<&Instance> {
    instances.iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_their_owners_through_a_join_a_leave_and_a_kill() {
    const TEST: &str = "calls_go_to_their_owners_through_a_join_a_leave_and_a_kill";
    let Some(cluster) = Cluster::from_env(TEST).await else {
        return;
    };
    let began = Instant::now();
    let retries_at_start = Retries::now();
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let a = Instance::start("a", dir.path(), &settings).await;
    let mut b = Instance::start("b", dir.path(), &settings).await;
    let mut c = Instance::start("c", dir.path(), &settings).await;
    wait_settled(&cluster, &settings, &[&a, &b, &c]).await;
    // The map is read again every second, and at once on a refusal that
    // names a slot; the retry policy is the default one.
    let client = client(
        &[&a, &b, &c],
        Duration::from_secs(1),
        RetryPolicy::default(),
    )
    .await;
    let users: Vec<u64> = (1..=48).collect();
    let tally = Tally::default();
    let mut round = 0;

    batch::steady_round(
        &cluster,
        &settings,
        &client,
        &[&a, &b, &c],
        &users,
        &mut round,
        &tally,
        "a b c",
    )
    .await;

    println!("{TEST}: d joins");
    let d = Instance::start("d", dir.path(), &settings).await;
    let live = [&a, &b, &c, &d];
    let forwarded = forwards(&[&a, &b, &c]).await;
    batch::moving_rounds(&client, &live, &users, &mut round, &tally, "d joins").await;
    println!(
        "d joins: {} forwards while the map was stale",
        forwards(&live).await - forwarded
    );
    wait_settled(&cluster, &settings, &live).await;
    batch::steady_round(
        &cluster, &settings, &client, &live, &users, &mut round, &tally, "a b c d",
    )
    .await;

    println!("{TEST}: c leaves (SIGTERM)");
    let live = [&a, &b, &d];
    let (stopped_in, ()) = tokio::join!(
        c.terminate(),
        batch::moving_rounds(&client, &live, &users, &mut round, &tally, "c leaves")
    );
    println!("c leaves: c exited {stopped_in:?} after SIGTERM");
    wait_settled(&cluster, &settings, &live).await;
    batch::steady_round(
        &cluster, &settings, &client, &live, &users, &mut round, &tally, "a b d",
    )
    .await;

    // Everything b acknowledged is written first (a flush delay and a
    // margin): what a kill loses is the model run's concern, not this one.
    tokio::time::sleep(Duration::from_millis(support::FLUSH_DELAY_MS + 1_000)).await;
    println!("{TEST}: b killed (SIGKILL)");
    let killed_at = Instant::now();
    b.kill();
    let live = [&a, &d];
    batch::moving_rounds(&client, &live, &users, &mut round, &tally, "b killed").await;
    wait_settled(&cluster, &settings, &live).await;
    println!(
        "b killed: its slots settled on a and d within {:?} (its leases ran out first)",
        killed_at.elapsed()
    );
    batch::steady_round(
        &cluster, &settings, &client, &live, &users, &mut round, &tally, "a d",
    )
    .await;

    println!(
        "{TEST}: {} calls in {round} rounds, {} sends failed once the client gave up, {} \
         without the retries they should have had (all while slots moved); {:?} wall",
        tally.calls(),
        tally.failed(),
        tally.unretried(),
        began.elapsed()
    );
    drop(client);
    let (mut a, mut d) = (a, d);
    a.terminate().await;
    d.terminate().await;
    cluster.drop_keyspace(&settings).await;
    support::check_unretried(TEST, tally.unretried(), retries_at_start);
}

// ---------------------------------------------------------------------------
// Retries never double a mention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_mentions_count_once_under_injected_timeouts() {
    const TEST: &str = "retried_mentions_count_once_under_injected_timeouts";
    let Some(cluster) = Cluster::from_env(TEST).await else {
        return;
    };
    let began = Instant::now();
    let seed = support::seed(TEST);
    let retries_at_start = Retries::now();
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Instance::start("a", dir.path(), &settings).await;
    let mut b = Instance::start("b", dir.path(), &settings).await;
    let live = [&a, &b];
    wait_settled(&cluster, &settings, &live).await;
    // Up to 4 attempts, 1 ms backoff ceilings doubling to 8 ms, and a
    // budget that the timeouts cannot spend.
    let policy = RetryPolicy::default()
        .max_attempts(4)
        .backoff(Duration::from_millis(1), Duration::from_millis(8))
        .budget(100_000, 1);
    let client = client(&live, Duration::from_secs(10), policy).await;
    const TASKS: u64 = 3;
    const USERS_PER_TASK: u64 = 8;
    const CALLS_PER_TASK: u64 = 500;
    let users: Vec<u64> = (1..=TASKS * USERS_PER_TASK).collect();
    // Loaded first, so that a short deadline does not meet a load.
    for &user in &users {
        client
            .with_deadline(mentions::LONG)
            .get_user_read_states(GetUserReadStatesRequest {
                user_id: user,
                since_version: None,
            })
            .await
            .unwrap();
    }

    let methods = ["AddMentions", "RemoveMentions", "Ack"];
    let mut ok_before = BTreeMap::new();
    for method in methods {
        ok_before.insert(method, support::answered_ok(&live, method).await);
    }
    let forwarded = forwards(&live).await;
    let retries = Retries::now();
    let tasks: Vec<_> = users
        .chunks(USERS_PER_TASK as usize)
        .enumerate()
        .map(|(index, users)| {
            let index = index as u64;
            tokio::spawn(mentions::run(
                client.clone(),
                users.to_vec(),
                seed ^ (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                CALLS_PER_TASK,
                (index + 1) * 1_000_000_000,
            ))
        })
        .collect();
    let mut outcome = mentions::Outcome::default();
    for task in tasks {
        outcome.absorb(task.await.unwrap());
    }
    let retries = Retries::since(retries);
    assert_eq!(
        forwards(&live).await - forwarded,
        0,
        "every call went to its owner"
    );
    // Each OK the instances answered is one the client saw (one per call,
    // per part of a split fan-out), or an attempt applied whose answer
    // came too late, after which the call was sent again.
    let mut unseen = BTreeMap::new();
    for method in methods {
        let ok = support::answered_ok(&live, method).await - ok_before[method];
        let seen = outcome.answered.get(method).copied().unwrap_or(0);
        assert!(
            ok >= seen,
            "{method}: the instances answered {ok} OK, the client saw {seen}"
        );
        unseen.insert(method, ok - seen);
    }
    let applied_unseen: u64 = unseen.values().sum();
    let counted = outcome.check_final(&client).await;
    println!(
        "{TEST}: {} calls ({} with a deadline of 1 to 5 ms): {} attempts retried, {} calls \
         failed once the client gave up ({} out of attempts, {} out of budget) and {} without \
         the retries they should have had, all sent again; attempts applied but answered too \
         late, then sent again: {unseen:?}; every answer and all {counted} final mention \
         counts equal the model; {:?} wall",
        outcome.calls,
        outcome.short,
        retries.retried,
        outcome.failed,
        retries.gave_up_attempts,
        retries.gave_up_budget,
        outcome.unretried,
        began.elapsed()
    );
    assert!(
        retries.retried > 0 && applied_unseen > 0,
        "timeouts were injected: some attempts must have been applied, answered too late and \
         sent again"
    );
    drop(client);
    a.terminate().await;
    b.terminate().await;
    cluster.drop_keyspace(&settings).await;
    support::check_unretried(TEST, outcome.unretried, retries_at_start);
}

// ---------------------------------------------------------------------------
// Rolling restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_only_calls_that_ran_out_of_retries() {
    const TEST: &str = "a_rolling_restart_fails_only_calls_that_ran_out_of_retries";
    let Some(cluster) = Cluster::from_env(TEST).await else {
        return;
    };
    let began = Instant::now();
    let seed = support::seed(TEST);
    let retries_at_start = Retries::now();
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let mut instances = Vec::new();
    for id in ["a", "b", "c"] {
        instances.push(Instance::start(id, dir.path(), &settings).await);
    }
    wait_settled(&cluster, &settings, &all(&instances)).await;
    // Two clients: the builder's defaults (3 attempts, backoff ceilings of
    // 25 and 50 ms, the map read every 10 s), and one made for restarts
    // (10 attempts, ceilings from 50 ms doubling to 1 s: on average some
    // 2.8 s of retries, more than an instance takes to come back; the map
    // read every second).
    let default = ReadStatesClient::builder()
        .addresses(instances.iter().map(|instance| instance.addr.to_string()))
        .connect()
        .await
        .unwrap();
    let patient_policy = RetryPolicy::default()
        .max_attempts(10)
        .backoff(Duration::from_millis(50), Duration::from_secs(1));
    let patient = client(&all(&instances), Duration::from_secs(1), patient_policy).await;
    let clients = [("default", default), ("patient", patient)];
    const TASKS_PER_CLIENT: u64 = 2;
    const USERS_PER_TASK: u64 = 8;
    let shared = Arc::new(load::Shared::default());
    let retries = Retries::now();
    let mut tasks = Vec::new();
    for (label, (_, client)) in clients.iter().enumerate() {
        for task in 0..TASKS_PER_CLIENT {
            let index = label as u64 * TASKS_PER_CLIENT + task;
            let users = (1..=USERS_PER_TASK)
                .map(|user| index * USERS_PER_TASK + user)
                .collect();
            tasks.push(tokio::spawn(load::task(
                client.clone(),
                label,
                users,
                seed ^ (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                (index + 1) * 1_000_000_000,
                Arc::clone(&shared),
            )));
        }
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut restarts = Vec::new();
    for index in 0..instances.len() {
        let id = instances[index].id.clone();
        let from = Instant::now();
        let stopped_in = instances[index].terminate().await;
        instances[index].start_again().await;
        let back_in = from.elapsed();
        wait_settled(&cluster, &settings, &all(&instances)).await;
        let to = Instant::now();
        println!(
            "{TEST}: {id} restarted: exited {stopped_in:?} after SIGTERM, listening again \
             {back_in:?} after it, slots settled {:?} after it",
            to - from
        );
        restarts.push(load::Restart { id, from, to });
        // More than the patient client's map refresh interval.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut models = Vec::new();
    for task in tasks {
        models.push(task.await.unwrap());
    }
    let retries = Retries::since(retries);

    // Placement puts each user on the same instance before and after a
    // restart (same ids): only the restarting instance's users move.
    let members = Members::new(["a", "b", "c"]);
    let owner_of = |user: u64| members.owner_of(slot_of(user)).unwrap().to_owned();
    // How stale each client's map is now, the slots settled for 1.5 s:
    // slots it names another holder for than the lease table (or none).
    let table = lease_table(&cluster, &settings).await;
    let stale = |client: &ReadStatesClient| -> usize {
        let map = client_map(&client.slot_map().expect("the cluster's slot map"));
        (0..common::routing::SLOTS)
            .filter(|slot| map.get(slot) != table.get(slot))
            .count()
    };
    let log = shared.log.lock().clone();
    let mut unretried = 0;
    for (label, (name, client)) in clients.iter().enumerate() {
        // A call's first attempt may precede the SIGTERM by a little (a
        // call in flight is drained, but its retry is not), and the last
        // may follow the settling by a refresh.
        let slack = Duration::from_secs(1);
        let fared = load::fared(&log, label, &restarts, slack, owner_of);
        let stale = stale(client);
        println!(
            "{TEST}: {name} client: {} calls, {} failed once the client gave up ({} of them \
             without the retries they should have had, {} naming no user of the restarting \
             instance): per restart (failed, calls naming its users in its window) {:?}; {:?}; \
             its map after the restarts: {stale} of {} slots stale",
            fared.calls,
            fared.failed,
            fared.unretried,
            fared.elsewhere.len(),
            fared.per_restart,
            fared.by_kind,
            common::routing::SLOTS,
        );
        assert!(
            fared.outside.is_empty(),
            "{name}: calls failed outside every restart:\n{}",
            load::describe(&fared.outside, &restarts, owner_of)
        );
        for failed in &log {
            if failed.client == label && !failed.unretried {
                assert!(
                    matches!(
                        failed.failed,
                        None | Some(Code::Unavailable | Code::DeadlineExceeded)
                    ),
                    "{name}: only calls that ran out of retries fail: {failed:?}"
                );
            }
        }
        let (failed, exposed) = fared
            .per_restart
            .iter()
            .fold((0, 0), |sum, (f, e)| (sum.0 + f, sum.1 + e));
        let failed = failed - fared.unretried;
        if *name == "patient" {
            // It reads the map every second, so the map it meets a restart
            // with is the settled one: only the restarting instance's users
            // are at stake; and its retries (some 2.8 s on average) outlast
            // an instance's absence (well under 1 s here) but for a rare
            // draw of short backoffs: at most 1 in 100 of the calls naming
            // the restarting instance's users may fail.
            assert!(
                fared.elsewhere.is_empty(),
                "{name}: calls failed naming no user of the restarting instance:\n{}",
                load::describe(&fared.elsewhere, &restarts, owner_of)
            );
            assert!(
                failed * 100 <= exposed,
                "{name}: {failed} of {exposed} calls naming a restarting instance's users failed"
            );
            assert_eq!(stale, 0, "{name}: its map is the lease table");
        } else {
            // Its retries end within 75 ms, so what fails is what is sent
            // while its target is away: the restarting instance, or one
            // its map, read only on a refusal naming a slot (often while
            // slots move) or every 10 s, still names for another's users
            // (they are forwarded while it lives). Instances are away well
            // under 1 s of each restart's ~3 s window, and windows are
            // under half the run: at most 1 call in 10 may fail.
            assert!(
                (fared.failed - fared.unretried) * 10 <= fared.calls,
                "{name}: {} of {} calls failed",
                fared.failed,
                fared.calls
            );
        }
        unretried += fared.unretried;
    }
    println!(
        "{TEST}: {} attempts retried; {} calls gave up out of attempts, {} out of budget, {} at \
         once",
        retries.retried, retries.gave_up_attempts, retries.gave_up_budget, retries.gave_up_other,
    );

    let long = clients[1].1.with_deadline(Duration::from_secs(5));
    let mut resent = 0;
    for model in &mut models {
        resent += model.resolve(&long).await;
    }
    for model in &models {
        model
            .check_final(async |user| load::states_via(&long, user).await)
            .await;
    }
    drop((clients, long));
    for instance in &mut instances {
        instance.terminate().await;
    }
    // And as the store has it, every instance stopped.
    let store = ScyllaStore::open(&settings).await.unwrap();
    for model in &models {
        model
            .check_final(async |user| {
                let rows = store
                    .load_user(UserId::new(user).unwrap(), LoadPriority::Urgent)
                    .await
                    .unwrap();
                rows.states
                    .iter()
                    .map(|state| {
                        let state_tuple = (
                            state.last_message_id.get(),
                            state.mentions.count(),
                            state.last_pin_timestamp_ms,
                        );
                        (state.channel_id.get(), state_tuple)
                    })
                    .collect()
            })
            .await;
    }
    println!(
        "{TEST}: {resent} failed calls sent again after the load; the final state equals the \
         model, through the client and in the store; {:?} wall",
        began.elapsed()
    );
    cluster.drop_keyspace(&settings).await;
    support::check_unretried(TEST, unretried as u64, retries_at_start);
}
