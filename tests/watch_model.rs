//! The change stream and complete deltas against a model
//! (ARCHITECTURE.md §1.3; README, "Following changes"). One client makes a
//! seeded mix of every call over 6 users × 5 channels, so that pairs are
//! deleted and created again all the time, each answer checked against a
//! reference model; meanwhile three watchers subscribe, unsubscribe and
//! reconnect at random, each keeping copies built only from its streams'
//! events, and a delta client keeps copies of every user from
//! `GetUserReadStates(since_version)`. At the end every watcher follows
//! every user, and every copy must equal what the server answers, field
//! for field, at the same version; on the way, no event may come out of
//! its user's version order.
//!
//! Each mode stresses one way a copy could drift: `tiny_cache` evicts and
//! reloads users all the time (a reload must bring back its deletions),
//! `restart` restarts the server in the middle (streams end, watchers
//! resume on the new server from their versions), `purged_deletions`
//! purges deletion markers soon after they are written, so that a watcher
//! that comes back after a while gets a reset.
//!
//! `READSTATES_WATCH_MODEL_SEED` replays a run's calls and draws (the seed
//! is printed; the interleaving with the followers is the machine's).

mod common;
#[path = "watch_model/followers.rs"]
mod followers;
#[path = "watch_model/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use readstates::api::proto::watch_ended::Reason;
use readstates::api::proto::{DeleteReadStatesRequest, GetUserReadStatesRequest};
use readstates::config::Config;
use tokio::sync::watch;
use tokio::time::Instant;

use common::watch::truth;
use common::{InstrumentedStore, TestServer, eventually, http_get, sample, test_config};
use followers::{DeltaClient, Phase, Watcher, WatcherState};
use workload::Workload;

/// The key space: small, so that each pair is changed, deleted and
/// created again many times in a run.
const USERS: u64 = 6;
const CHANNELS: u64 = 5;
const WATCHERS: usize = 3;
/// How long the watchers have, once the calls stop, to reach the
/// server's versions.
const SETTLE: Duration = Duration::from_secs(10);

fn all_users() -> impl Iterator<Item = u64> {
    1..=USERS
}

/// One way to run the model.
struct Mode {
    name: &'static str,
    /// Calls the workload makes.
    calls: usize,
    configure: fn(&mut Config),
    /// Restart the server gracefully halfway, on the same data.
    restart: bool,
    /// Send watcher 0 away this long in the middle of the run.
    away: Option<Duration>,
}

impl Mode {
    /// Whether a reset may take a copy to an older version: only where
    /// deletion markers are purged (see `Follower::allow_backward_resets`).
    fn purges(&self) -> bool {
        self.away.is_some()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_cache() {
    run(Mode {
        name: "tiny_cache",
        calls: 4_000,
        configure: |config| {
            // Fewer states than one user may hold: every call on another
            // user evicts, and every call reloads, deletions included.
            config.cache.capacity = 3;
            config.cache.partitions = 1;
            config.flush.delay_ms = 200;
            config.flush.tick_ms = 50;
        },
        restart: false,
        away: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart() {
    run(Mode {
        name: "restart",
        calls: 4_000,
        configure: |config| {
            config.cache.capacity = 12;
            config.cache.partitions = 2;
            config.flush.delay_ms = 200;
            config.flush.tick_ms = 50;
        },
        restart: true,
        away: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_deletions() {
    run(Mode {
        name: "purged_deletions",
        calls: 4_000,
        configure: |config| {
            config.cache.capacity = 8;
            config.cache.partitions = 1;
            config.flush.delay_ms = 100;
            config.flush.tick_ms = 20;
            // Deletion markers go 300 ms after their write: a copy older
            // than that cannot be given a complete delta.
            config.flush.tombstone_grace_ms = 300;
            config.flush.purge_interval_ms = 50;
        },
        restart: false,
        // Well past the grace, a purge round and the flush delay.
        away: Some(Duration::from_millis(1_000)),
    })
    .await;
}

/// A user outside the model's, changed only to see where the deletion
/// horizon stands.
const PROBE_USER: u64 = 1_000;

/// Waits until the deletion horizon has passed every version issued so far
/// (so every version watcher 0 held when it left, and the users changed
/// since it left are resumed with a reset): a probe user is changed now,
/// and asked for its difference since then until that is a reset, which
/// it is once a purge has passed it. A slow machine delays purges (they
/// wait for the write-back's batches in flight), so the time is not fixed.
async fn wait_for_the_horizon(client: &mut common::Client) {
    let acked = client
        .ack(common::ack_request(PROBE_USER, 1, 1))
        .await
        .unwrap()
        .into_inner();
    let since = acked.read_state.map_or(0, |state| state.version);
    client
        .delete_read_states(DeleteReadStatesRequest {
            user_id: PROBE_USER,
            channel_ids: vec![1],
        })
        .await
        .unwrap();
    let passed = eventually(HORIZON_WAIT, async || {
        client
            .get_user_read_states(GetUserReadStatesRequest {
                user_id: PROBE_USER,
                since_version: Some(since),
            })
            .await
            .is_ok_and(|answer| answer.into_inner().reset)
    })
    .await;
    assert!(
        passed,
        "the deletion horizon did not pass version {since} within {HORIZON_WAIT:?}"
    );
}

/// How long the deletion horizon may take to pass a version.
const HORIZON_WAIT: Duration = Duration::from_secs(60);

async fn run(mode: Mode) {
    let seed: u64 = std::env::var("READSTATES_WATCH_MODEL_SEED")
        .ok()
        .map(|seed| seed.parse().expect("READSTATES_WATCH_MODEL_SEED"))
        .unwrap_or_else(readstates::clock::unix_micros);
    println!(
        "watch model {}: seed {seed} (READSTATES_WATCH_MODEL_SEED replays it)",
        mode.name
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    (mode.configure)(&mut config);
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;

    let (address_sender, address) = watch::channel(server.running.addr);
    let mut phases = Vec::new();
    let mut watchers: Vec<Arc<Mutex<WatcherState>>> = Vec::new();
    let mut tasks = Vec::new();
    for index in 0..WATCHERS as u64 {
        let (phase_sender, phase) = watch::channel(Phase::Run);
        let watcher = Watcher::new(
            seed ^ (index + 1).wrapping_mul(0xA076_1D64_78BD_642F),
            address.clone(),
            phase,
            mode.purges(),
        );
        watchers.push(Arc::clone(&watcher.state));
        tasks.push(tokio::spawn(watcher.run()));
        phases.push(phase_sender);
    }
    let (delta_phase_sender, delta_phase) = watch::channel(Phase::Run);
    let delta_task = tokio::spawn(DeltaClient::new(mode.purges()).run(
        seed ^ 0xE703_7ED1_A0B4_28DB,
        address.clone(),
        delta_phase,
    ));

    let mut workload = Workload::new(seed);
    if mode.restart {
        let first_half = mode.calls / 2;
        workload.run(&mut server.client, first_half).await;
        server.shutdown().await;
        server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
        address_sender.send(server.running.addr).unwrap();
        workload
            .run(&mut server.client, mode.calls - first_half)
            .await;
    } else if let Some(away) = mode.away {
        let third = mode.calls / 3;
        workload.run(&mut server.client, third).await;
        phases[0].send(Phase::Away).unwrap();
        let away_since = Instant::now();
        workload.run(&mut server.client, third).await;
        tokio::time::sleep_until(away_since + away).await;
        wait_for_the_horizon(&mut server.client).await;
        phases[0].send(Phase::Run).unwrap();
        workload
            .run(&mut server.client, mode.calls - 2 * third)
            .await;
    } else {
        workload.run(&mut server.client, mode.calls).await;
    }
    let workload_done = started.elapsed();

    // The calls are over. Every watcher follows every user from here on,
    // resuming those it had left from the versions it holds, and no longer
    // reconnects.
    for phase in &phases {
        phase.send(Phase::FollowAll).unwrap();
    }
    let following_all = eventually(SETTLE, async || {
        watchers.iter().all(|watcher| {
            let watcher = watcher.lock();
            all_users().all(|user| watcher.follower.is_caught_up(user))
        })
    })
    .await;
    // One more change of every user: each watcher must see it, and a
    // stream a watcher dropped learns that its subscriber is gone when it
    // tries to send it (see the leak check below).
    workload.touch_every_user(&mut server.client).await;
    // A read loads each user, which merges its deferred mentions first
    // (the pin acks above did too); the next read is the truth, which
    // nothing changes any more.
    for user in all_users() {
        truth(&mut server.client, user).await;
    }
    let mut truths = BTreeMap::new();
    for user in all_users() {
        let answer = truth(&mut server.client, user).await;
        workload.check_user(user, &answer);
        truths.insert(user, answer);
    }
    let settled = eventually(SETTLE, async || {
        watchers.iter().all(|watcher| {
            let watcher = watcher.lock();
            truths.iter().all(|(&user, answer)| {
                watcher.follower.is_caught_up(user)
                    && watcher.follower.version_of(user) >= answer.version
            })
        })
    })
    .await;
    let mut differences = Vec::new();
    for (index, watcher) in watchers.iter().enumerate() {
        let watcher = watcher.lock();
        for (&user, answer) in &truths {
            let copy = watcher.follower.copies.get(&user).cloned();
            if let Some(difference) = copy.unwrap_or_default().differences(answer) {
                differences.push(format!("watcher {index}, user {user}: {difference}"));
            }
        }
    }
    // The subscriptions of the streams the watchers dropped are gone from
    // the server: only the watchers' current ones are left. (A dropped
    // stream that follows no one may linger: see watch_backpressure.rs,
    // `a_stream_dropped_by_its_subscriber_gives_its_room_back`.)
    let metrics_addr = server.running.metrics_addr.expect("metrics are served");
    let mut metrics = String::new();
    let no_leak = eventually(SETTLE, async || {
        metrics = http_get(metrics_addr, "/metrics").await.1;
        sample(&metrics, "readstates_watch_subscriptions") == Some((WATCHERS as u64 * USERS) as f64)
    })
    .await;
    let streams_open = sample(&metrics, "readstates_watch_streams").unwrap_or(0.0);
    let evictions = [r#"{dirty="false"}"#, r#"{dirty="true"}"#]
        .iter()
        .filter_map(|dirty| {
            sample(
                &metrics,
                &format!("readstates_cache_evictions_total{dirty}"),
            )
        })
        .sum::<f64>();
    for phase in &phases {
        phase.send(Phase::Stop).unwrap();
    }
    delta_phase_sender.send(Phase::Stop).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let mut delta = delta_task.await.unwrap();
    for user in all_users() {
        delta
            .sync(&mut server.client, user)
            .await
            .unwrap_or_else(|failure| panic!("the delta client's last sync: {failure}"));
        let copy = delta.copies.get(&user).cloned().unwrap_or_default();
        if let Some(difference) = copy.differences(&truths[&user]) {
            differences.push(format!("delta client, user {user}: {difference}"));
        }
    }

    let report = Report::gather(&watchers, &delta);
    println!(
        "watch model {}: {} calls in {:.1} s ({:?}), then {} watcher copies and {} delta copies \
         checked in {:.1} s in all",
        mode.name,
        workload.counts.total(),
        workload_done.as_secs_f64(),
        workload.counts,
        WATCHERS as u64 * USERS,
        USERS,
        started.elapsed().as_secs_f64(),
    );
    report.print(mode.name);
    println!(
        "watch model {}: {evictions} users evicted (by the last server); {streams_open} streams \
         open on the server at the end, for {WATCHERS} watchers",
        mode.name
    );

    assert!(
        report.violations.is_empty(),
        "seed {seed}: {} broken rules, first ones:\n{}",
        report.violation_count,
        report.violations.join("\n")
    );
    assert!(
        following_all,
        "seed {seed}: the watchers were not caught up on every user within {SETTLE:?}"
    );
    assert!(
        settled,
        "seed {seed}: the watchers did not reach the server's versions within {SETTLE:?}"
    );
    assert!(
        differences.is_empty(),
        "seed {seed}: copies differ from the server:\n{}",
        differences.join("\n")
    );
    assert!(
        no_leak,
        "seed {seed}: subscriptions left on the server after reconnects:\n{}",
        metrics
            .lines()
            .filter(|line| line.starts_with("readstates_watch_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let shutting_down = report.ended(Reason::ShuttingDown);
    if mode.restart {
        assert!(
            shutting_down > 0,
            "seed {seed}: no subscription ended with SHUTTING_DOWN at the restart"
        );
        assert_eq!(
            report.ended_total(),
            shutting_down,
            "seed {seed}: subscriptions ended for another reason: {:?}",
            report.ended
        );
        for failure in &report.stream_failures {
            assert!(
                failure.contains("Unavailable") || failure.contains("cannot connect"),
                "seed {seed}: a stream ended otherwise than UNAVAILABLE at the restart: {failure}"
            );
        }
        // A graceful stop loses nothing: no version of it is suspect after
        // the restart, so no resume is a reset (the horizon is far).
        assert_eq!(
            report.resets + delta.resets,
            0,
            "seed {seed}: resets after a graceful restart"
        );
    } else {
        assert_eq!(
            report.ended_total(),
            0,
            "seed {seed}: subscriptions ended on a server that kept running: {:?}",
            report.ended
        );
        assert!(
            report.stream_failures.is_empty() && delta.failures.is_empty(),
            "seed {seed}: calls or streams failed on a server that kept running: {:?} {:?}",
            report.stream_failures,
            delta.failures
        );
    }
    if mode.purges() {
        assert!(
            report.resets + delta.resets > 0,
            "seed {seed}: no reset, though watcher 0 came back after its deletions were purged"
        );
    }
    server.shutdown().await;
}

/// The followers' figures, summed.
#[derive(Debug, Default)]
struct Report {
    messages: u64,
    events: u64,
    catch_ups: u64,
    resets: u64,
    backward_resets: u64,
    changed: u64,
    deleted: u64,
    subscribes: u64,
    unsubscribes: u64,
    resubscribes: u64,
    reconnects: u64,
    ended: BTreeMap<i32, u64>,
    stream_failures: Vec<String>,
    delta_syncs: u64,
    delta_resets: u64,
    delta_failures: usize,
    violations: Vec<String>,
    violation_count: usize,
}

impl Report {
    fn gather(watchers: &[Arc<Mutex<WatcherState>>], delta: &DeltaClient) -> Self {
        let mut report = Self::default();
        for (index, watcher) in watchers.iter().enumerate() {
            let watcher = watcher.lock();
            let counts = &watcher.follower.counts;
            report.messages += counts.messages;
            report.events += counts.events;
            report.catch_ups += counts.catch_ups;
            report.resets += counts.resets;
            report.backward_resets += counts.backward_resets;
            report.changed += counts.changed;
            report.deleted += counts.deleted;
            for (&reason, &count) in &counts.ended {
                *report.ended.entry(reason).or_default() += count;
            }
            report.subscribes += watcher.subscribes;
            report.unsubscribes += watcher.unsubscribes;
            report.resubscribes += watcher.resubscribes;
            report.reconnects += watcher.reconnects;
            report.stream_failures.extend(
                watcher
                    .stream_failures
                    .iter()
                    .map(|failure| format!("watcher {index}: {failure}")),
            );
            report.violation_count += watcher.follower.violation_count;
            report.violations.extend(
                watcher
                    .follower
                    .violations
                    .iter()
                    .map(|violation| format!("watcher {index}: {violation}")),
            );
        }
        report.delta_syncs = delta.syncs;
        report.delta_resets = delta.resets;
        report.delta_failures = delta.failures.len();
        report.violation_count += delta.violations.len();
        report.violations.extend(
            delta
                .violations
                .iter()
                .map(|violation| format!("delta client: {violation}")),
        );
        report
    }

    fn ended(&self, reason: Reason) -> u64 {
        self.ended.get(&(reason as i32)).copied().unwrap_or(0)
    }

    fn ended_total(&self) -> u64 {
        self.ended.values().sum()
    }

    fn print(&self, mode: &str) {
        println!(
            "watch model {mode}: watchers received {} messages, {} events ({} catch-ups, {} \
             resets ({} to an older version), {} changed, {} deleted, {} ended: {:?}); {} \
             subscribes, {} unsubscribes, {} resubscribes, {} reconnects, {} stream failures; \
             delta client: {} syncs, {} resets, {} failed calls",
            self.messages,
            self.events,
            self.catch_ups,
            self.resets,
            self.backward_resets,
            self.changed,
            self.deleted,
            self.ended_total(),
            self.ended,
            self.subscribes,
            self.unsubscribes,
            self.resubscribes,
            self.reconnects,
            self.stream_failures.len(),
            self.delta_syncs,
            self.delta_resets,
            self.delta_failures,
        );
        for failure in self.stream_failures.iter().take(5) {
            println!("watch model {mode}: {failure}");
        }
    }
}
