//! Concurrent calls never lose an update (ARCHITECTURE.md §1.2, rule 7):
//! through real gRPC, many tasks sharing one multiplexed connection, against
//! a running server with the embedded store.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Client, InstrumentedStore, TestServer, get, test_config};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use readstates::api::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetUserReadStatesRequest, ReadState, RemoveMentionsRequest,
};
use readstates::config::Config;
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn start_with(
    adjust: impl FnOnce(&mut Config),
) -> (
    tempfile::TempDir,
    Config,
    Arc<InstrumentedStore>,
    TestServer,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let store = InstrumentedStore::open(dir.path());
    let server = TestServer::start(&config, store.clone()).await;
    (dir, config, store, server)
}

async fn add(c: &mut Client, channel: u64, message: u64, users: Vec<u64>) -> Vec<ReadState> {
    add_with(c, channel, message, users, false).await
}

async fn add_with(
    c: &mut Client,
    channel: u64,
    message: u64,
    users: Vec<u64>,
    omit: bool,
) -> Vec<ReadState> {
    c.add_mentions(AddMentionsRequest {
        channel_id: channel,
        message_id: message,
        user_ids: users,
        omit_read_states: omit,
    })
    .await
    .unwrap()
    .into_inner()
    .read_states
}

async fn user_states(c: &mut Client, user: u64) -> (Vec<ReadState>, u64) {
    let response = c
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: user,
            since_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    (response.read_states, response.version)
}

// ---------------------------------------------------------------------------
// 1,000 concurrent AddMentions on one state
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_distinct_mentions_count_a_thousand() {
    const USER: u64 = 7;
    const CHANNEL: u64 = 70;
    let (_dir, _config, _store, mut server) = start_with(|_| {}).await;

    // The user is not cached yet: the first calls also race on its load.
    let mut tasks = JoinSet::new();
    for message in 1..=1_000u64 {
        let mut c = server.client.clone();
        tasks.spawn(async move { add(&mut c, CHANNEL, message, vec![USER]).await });
    }
    let mut counts = Vec::new();
    let mut versions = Vec::new();
    while let Some(states) = tasks.join_next().await {
        let states = states.unwrap();
        assert_eq!(states.len(), 1);
        counts.push(states[0].mention_count);
        versions.push(states[0].version);
    }
    // Each call saw the state right after its own change: the counts it
    // returned are exactly 1..=1000, each once, and no two changes share a
    // version.
    counts.sort_unstable();
    assert_eq!(counts, (1..=1_000).collect::<Vec<u32>>());
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 1_000, "versions must be distinct");

    let c = &mut server.client;
    assert_eq!(get(c, USER, CHANNEL).await.mention_count, 1_000);

    // Concurrent retries of all of them count nothing more.
    let mut tasks = JoinSet::new();
    for message in 1..=1_000u64 {
        let mut c = server.client.clone();
        tasks.spawn(async move { add(&mut c, CHANNEL, message, vec![USER]).await });
    }
    while let Some(states) = tasks.join_next().await {
        assert_eq!(states.unwrap()[0].mention_count, 1_000);
    }
    let c = &mut server.client;
    let state = get(c, USER, CHANNEL).await;
    assert_eq!(state.mention_count, 1_000);
    assert_eq!(
        state.version,
        *versions.last().unwrap(),
        "retries changed nothing"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Model-based property test
// ---------------------------------------------------------------------------
//
// Workload design: the final state must not depend on how the tasks
// interleave, or the model could not predict it. Acks, manual acks and
// RemoveMentions do not commute with AddMentions (a mention arriving before
// an ack is cleared by it; one arriving after is not counted at all if the
// ack passed it, or is counted if the ack did not...), so:
// - task `t` alone touches channel `OWN_BASE + t` (of every user) and does
//   every kind of operation there (Ack, manual Ack, BulkAck, AddMentions,
//   RemoveMentions, AckPins, DeleteReadStates), sequentially: its pairs'
//   final states are those of its own sequence, whatever the others do;
// - every task also writes to one shared channel, but only with operations
//   that commute: AddMentions (never acked there, so a set union of message
//   ids, idempotent) and AckPins (a max).
// The tasks still contend on the same users (all of a user's channels share
// one cache entry and one version sequence) and run truly concurrently.

const USERS: [u64; 3] = [1, 2, 3];
const TASKS: u64 = 3;
const OWN_BASE: u64 = 100;
const SHARED: u64 = 999;

#[derive(Debug, Clone)]
enum Op {
    Ack {
        user: u64,
        message: u64,
    },
    Manual {
        user: u64,
        message: u64,
        count: Option<u32>,
    },
    /// With `omit`, AddMentions asks for no states back, so mentions of
    /// users not cached wait for the users' next load.
    Add {
        message: u64,
        users: Vec<u64>,
        omit: bool,
    },
    Remove {
        message: u64,
        users: Vec<u64>,
    },
    Pins {
        user: u64,
        ts: u64,
    },
    /// A BulkAck of the task's own channel, the same channel repeated.
    BulkAck {
        user: u64,
        messages: Vec<u64>,
    },
    Delete {
        user: u64,
    },
    SharedAdd {
        message: u64,
        users: Vec<u64>,
        omit: bool,
    },
    SharedPins {
        user: u64,
        ts: u64,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let user = || proptest::sample::select(USERS.to_vec());
    // Duplicates allowed: a user listed twice in one call is counted once.
    let users = || proptest::collection::vec(proptest::sample::select(USERS.to_vec()), 1..=4);
    prop_oneof![
        3 => (user(), 0u64..40).prop_map(|(user, message)| Op::Ack { user, message }),
        1 => (user(), 0u64..40, proptest::option::of(0u32..4))
            .prop_map(|(user, message, count)| Op::Manual { user, message, count }),
        4 => (1u64..40, users(), any::<bool>())
            .prop_map(|(message, users, omit)| Op::Add { message, users, omit }),
        2 => (1u64..40, users()).prop_map(|(message, users)| Op::Remove { message, users }),
        1 => (user(), 1u64..1_000).prop_map(|(user, ts)| Op::Pins { user, ts }),
        1 => (user(), proptest::collection::vec(0u64..40, 1..=3))
            .prop_map(|(user, messages)| Op::BulkAck { user, messages }),
        1 => user().prop_map(|user| Op::Delete { user }),
        3 => (1u64..200, users(), any::<bool>())
            .prop_map(|(message, users, omit)| Op::SharedAdd { message, users, omit }),
        1 => (user(), 1u64..1_000).prop_map(|(user, ts)| Op::SharedPins { user, ts }),
    ]
}

/// The reference model of one pair: the set of counted message ids plus the
/// count a manual ack gave.
#[derive(Debug, Clone, Default, PartialEq)]
struct PairModel {
    last: u64,
    counted: BTreeSet<u64>,
    given: u32,
    pins: u64,
}

impl PairModel {
    fn count(&self) -> u32 {
        self.counted.len() as u32 + self.given
    }
}

/// The model of every pair, and which pairs exist: those some operation
/// changed since they were last deleted (a pair no operation changed stays
/// never written: all zeros, not listed).
#[derive(Debug, Default)]
struct Model {
    pairs: BTreeMap<(u64, u64), PairModel>,
    written: BTreeSet<(u64, u64)>,
}

impl Model {
    fn change(&mut self, user: u64, channel: u64, f: impl FnOnce(&mut PairModel)) {
        let pair = self.pairs.entry((user, channel)).or_default();
        let before = pair.clone();
        f(pair);
        if *pair != before {
            self.written.insert((user, channel));
        }
    }

    fn ack(&mut self, user: u64, channel: u64, message: u64) {
        self.change(user, channel, |p| {
            if message > p.last {
                p.last = message;
                p.counted.retain(|&m| m > message);
                p.given = 0;
            }
        });
    }

    /// Applies task `task`'s operation.
    fn apply(&mut self, task: u64, op: &Op) {
        let own = OWN_BASE + task;
        match op.clone() {
            Op::Ack { user, message } => self.ack(user, own, message),
            Op::BulkAck { user, messages } => {
                for message in messages {
                    self.ack(user, own, message);
                }
            }
            Op::Delete { user } => {
                // Gone: reads as zeros, listed no more, recreated from zeros.
                self.pairs.remove(&(user, own));
                self.written.remove(&(user, own));
            }
            Op::Manual {
                user,
                message,
                count,
            } => self.change(user, own, |p| {
                p.last = message;
                p.counted.clear();
                p.given = count.unwrap_or(0);
            }),
            Op::Add { message, users, .. } => {
                for user in users {
                    self.change(user, own, |p| {
                        if message > p.last {
                            p.counted.insert(message);
                        }
                    });
                }
            }
            Op::Remove { message, users } => {
                for user in users {
                    self.change(user, own, |p| {
                        p.counted.remove(&message);
                    });
                }
            }
            Op::Pins { user, ts } => self.change(user, own, |p| p.pins = p.pins.max(ts)),
            Op::SharedAdd { message, users, .. } => {
                for user in users {
                    self.change(user, SHARED, |p| {
                        p.counted.insert(message);
                    });
                }
            }
            Op::SharedPins { user, ts } => self.change(user, SHARED, |p| p.pins = p.pins.max(ts)),
        }
    }
}

async fn send(c: &mut Client, task: u64, op: Op) {
    let own = OWN_BASE + task;
    match op {
        Op::Ack { user, message } => {
            c.ack(AckRequest {
                user_id: user,
                channel_id: own,
                message_id: message,
                manual: false,
                mention_count: None,
            })
            .await
            .unwrap();
        }
        Op::Manual {
            user,
            message,
            count,
        } => {
            c.ack(AckRequest {
                user_id: user,
                channel_id: own,
                message_id: message,
                manual: true,
                mention_count: count,
            })
            .await
            .unwrap();
        }
        Op::Add {
            message,
            users,
            omit,
        } => {
            add_with(c, own, message, users, omit).await;
        }
        Op::Remove { message, users } => {
            c.remove_mentions(RemoveMentionsRequest {
                channel_id: own,
                message_id: message,
                user_ids: users,
            })
            .await
            .unwrap();
        }
        Op::Pins { user, ts } | Op::SharedPins { user, ts } => {
            let channel = if matches!(op, Op::Pins { .. }) {
                own
            } else {
                SHARED
            };
            c.ack_pins(AckPinsRequest {
                user_id: user,
                channel_id: channel,
                pin_timestamp_ms: ts,
            })
            .await
            .unwrap();
        }
        Op::BulkAck { user, messages } => {
            let acks = messages
                .iter()
                .map(|&message_id| ChannelAck {
                    channel_id: own,
                    message_id,
                })
                .collect();
            let states = c
                .bulk_ack(BulkAckRequest {
                    user_id: user,
                    acks,
                })
                .await
                .unwrap()
                .into_inner()
                .read_states;
            assert_eq!(states.len(), messages.len(), "one result per ack");
        }
        Op::Delete { user } => {
            c.delete_read_states(DeleteReadStatesRequest {
                user_id: user,
                channel_ids: vec![own],
            })
            .await
            .unwrap();
        }
        Op::SharedAdd {
            message,
            users,
            omit,
        } => {
            add_with(c, SHARED, message, users, omit).await;
        }
    }
}

/// Compares every user's states with the model.
async fn check_against(c: &mut Client, model: &Model) -> Result<(), TestCaseError> {
    for user in USERS {
        let (states, version) = user_states(c, user).await;
        let actual: BTreeMap<u64, (u64, u32, u64)> = states
            .iter()
            .map(|s| {
                (
                    s.channel_id,
                    (s.last_message_id, s.mention_count, s.last_pin_timestamp_ms),
                )
            })
            .collect();
        let expected: BTreeMap<u64, (u64, u32, u64)> = model
            .written
            .iter()
            .filter(|(u, _)| *u == user)
            .map(|&(u, channel)| {
                let p = &model.pairs[&(u, channel)];
                (channel, (p.last, p.count(), p.pins))
            })
            .collect();
        prop_assert_eq!(&actual, &expected, "user {} states", user);
        prop_assert_eq!(states.len(), actual.len(), "one state per channel");

        // Every change of a user has its own version, the user's version is
        // at least that of its newest state (a delete is a change too, and
        // may be newer), and GetReadState agrees with the listing.
        let versions: BTreeSet<u64> = states.iter().map(|s| s.version).collect();
        prop_assert_eq!(versions.len(), states.len(), "distinct versions");
        prop_assert!(states.iter().all(|s| s.version > 0));
        prop_assert!(version >= versions.last().copied().unwrap_or(0));
        for state in &states {
            prop_assert_eq!(state.user_id, user);
            let read = get(c, user, state.channel_id).await;
            prop_assert_eq!(&read, state);
        }
        // Pairs never written read as zeros.
        for channel in (0..TASKS).map(|t| OWN_BASE + t).chain([SHARED]) {
            if !model.written.contains(&(user, channel)) {
                let read = get(c, user, channel).await;
                prop_assert_eq!(
                    (read.last_message_id, read.mention_count, read.version),
                    (0, 0, 0)
                );
            }
        }
    }
    Ok(())
}

/// Runs one case: the tasks' operations concurrently, then compares with
/// the model, through the server and again after a restart over its store.
/// With `tiny_cache`, the cache holds fewer states than the case writes, so
/// users are evicted and reloaded while the tasks run.
async fn run_case(tiny_cache: bool, tasks: Vec<Vec<Op>>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for (task, ops) in tasks.iter().enumerate() {
        for op in ops {
            model.apply(task as u64, op);
        }
    }

    let (_dir, config, store, server) = start_with(|config| {
        if tiny_cache {
            config.cache.capacity = 4;
            config.cache.partitions = 2;
            config.flush.delay_ms = 200;
            config.flush.tick_ms = 50;
        }
    })
    .await;
    let mut running = JoinSet::new();
    for (task, ops) in tasks.into_iter().enumerate() {
        let mut c = server.client.clone();
        running.spawn(async move {
            for op in ops {
                send(&mut c, task as u64, op).await;
            }
        });
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
    let mut c = server.client.clone();
    let served = check_against(&mut c, &model).await;
    drop(c);
    server.shutdown().await;
    served?;

    // Everything reached the store: a fresh server over it reads the same.
    let mut server = TestServer::start(&config, store).await;
    let reloaded = check_against(&mut server.client, &model).await;
    server.shutdown().await;
    reloaded
}

#[test]
fn concurrent_operations_match_a_reference_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 16,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let workload = (
        any::<bool>(),
        proptest::collection::vec(
            proptest::collection::vec(op_strategy(), 0..40),
            TASKS as usize,
        ),
    );
    let result = runner.run(&workload, |(tiny_cache, tasks)| {
        runtime.block_on(run_case(tiny_cache, tasks))
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

// ---------------------------------------------------------------------------
// A tiny cache under concurrent load
// ---------------------------------------------------------------------------

const HAMMER_USERS: u64 = 300;
const HAMMER_WRITERS: u64 = 8;
const HAMMER_CALLS: u64 = 40;
const HAMMER_CHANNELS: [u64; 2] = [10, 20];

/// The call `k` of writer `t`: a distinct message in one of the channels,
/// mentioning about a tenth of the users.
fn hammer_call(t: u64, k: u64) -> (u64, u64, Vec<u64>) {
    let channel = HAMMER_CHANNELS[(k % 2) as usize];
    let message = t * 1_000 + k + 1;
    let users = (1..=HAMMER_USERS)
        .filter(|u| (u * 7 + t * 13 + k * 31).is_multiple_of(10))
        .collect();
    (channel, message, users)
}

/// The mention counts, by (user, channel), of every writer's calls `calls`.
fn hammer_counts(calls: std::ops::Range<u64>) -> BTreeMap<(u64, u64), u32> {
    let mut counts = BTreeMap::new();
    for t in 0..HAMMER_WRITERS {
        for k in calls.clone() {
            let (channel, _, users) = hammer_call(t, k);
            for user in users {
                *counts.entry((user, channel)).or_default() += 1;
            }
        }
    }
    counts
}

/// One phase of the hammer: every writer makes its calls `calls` (each
/// followed by a retry of its call three before, which must not count
/// again), while two readers each read every user once, loading users and
/// pushing others out of the tiny cache.
async fn hammer_phase(server: &TestServer, calls: std::ops::Range<u64>) {
    let mut tasks = JoinSet::new();
    for t in 0..HAMMER_WRITERS {
        let mut c = server.client.clone();
        let calls = calls.clone();
        tasks.spawn(async move {
            // Odd writers ask for no states back: mentions of users not
            // cached then wait for the users' next load.
            let omit = t % 2 == 1;
            for k in calls {
                let (channel, message, users) = hammer_call(t, k);
                let states = add_with(&mut c, channel, message, users.clone(), omit).await;
                assert_eq!(states.len(), if omit { 0 } else { users.len() });
                // A retry of an earlier call (after timeouts, say) must not
                // count again, even when that user was evicted since, nor
                // when it waits deferred.
                if k >= 3 {
                    let (channel, message, users) = hammer_call(t, k - 3);
                    add_with(&mut c, channel, message, users, k % 2 == 0).await;
                }
            }
        });
    }
    for r in 0..2u64 {
        let mut c = server.client.clone();
        tasks.spawn(async move {
            // 37 is prime to HAMMER_USERS: every user once, in an order of
            // the reader's own.
            for i in 0..HAMMER_USERS {
                let user = (i * 37 + r * 101) % HAMMER_USERS + 1;
                let (states, _) = user_states(&mut c, user).await;
                assert!(states.len() <= HAMMER_CHANNELS.len());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Constant eviction loses no update: a cache of 50 states for 300 users,
/// mentioned by concurrent writers while readers push users out, so dirty
/// users are evicted, written, taken back before their write lands, and
/// reloaded while mentions for them arrive.
///
/// The run has two phases with a pause between them. A user evicted dirty
/// is held (and served from memory) until its write lands, so under
/// constant load a user may never be reloaded at all: a single phase left
/// that to timing (half the runs loaded no user twice). The pause waits
/// until every write has landed; then every user not cached must be
/// loaded again when the second phase comes back to it, which makes the
/// reloads under concurrent mentions certain rather than likely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_cache_evicting_all_the_time_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cache.capacity = 50;
    config.cache.partitions = 2;
    config.flush.delay_ms = 200;
    config.flush.tick_ms = 50;
    // Simulated I/O latency keeps eviction writes and loads in flight long
    // enough for requests of the same users to arrive meanwhile.
    let store = InstrumentedStore::open(dir.path());
    store.load_delay_ms.store(1, Ordering::SeqCst);
    store.write_delay_ms.store(10, Ordering::SeqCst);
    let server = TestServer::start(&config, store.clone()).await;
    let cache = server.running.cache.clone();
    const PAUSE_AT: u64 = HAMMER_CALLS / 2;

    hammer_phase(&server, 0..PAUSE_AT).await;
    // The first calls alone dirty more than the cache's 50 states within
    // milliseconds, long before a timer write (200 ms) could clean any, so
    // users are evicted dirty (the phase makes some 4,800 mentions).
    assert!(
        cache.stats().evictions_dirty > 0,
        "dirty users were evicted"
    );

    // The pause: every write lands (evicted users' and the timer's, the
    // flush delay being 200 ms) and every deferred mention is merged.
    let settled = common::eventually(Duration::from_secs(10), async || {
        let stats = cache.stats();
        stats.dirty_states == 0 && stats.evicting_users == 0 && stats.waiting_mentions == 0
    })
    .await;
    assert!(settled, "writes landed in the pause: {:?}", cache.stats());
    // Nothing was lost on the way to the store (read past the counting
    // wrapper, so these reads are not counted as the server's loads).
    let first_counts = hammer_counts(0..PAUSE_AT);
    for user in 1..=HAMMER_USERS {
        let stored = common::stored(&store.inner, user).await;
        for channel in HAMMER_CHANNELS {
            let want = first_counts.get(&(user, channel)).copied().unwrap_or(0);
            let count = stored
                .iter()
                .find(|s| s.channel_id.get() == channel)
                .map_or(0, |s| s.mention_count());
            assert_eq!(
                count, want,
                "stored in the pause: user {user} channel {channel}"
            );
        }
    }
    // Now a user is either cached or only in the store: each of the
    // users not cached must be loaded again when the readers come back.
    let cached_in_pause = cache.stats().resident_users as u64;
    let loads_in_pause = store.loads.load(Ordering::SeqCst);

    hammer_phase(&server, PAUSE_AT..HAMMER_CALLS).await;
    let reloads = (store.loads.load(Ordering::SeqCst) - loads_in_pause) as u64;
    assert!(
        reloads >= HAMMER_USERS - cached_in_pause,
        "every user not cached in the pause ({} of {HAMMER_USERS}) was reloaded ({reloads} loads)",
        HAMMER_USERS - cached_in_pause
    );

    let expected = hammer_counts(0..HAMMER_CALLS);
    let check = async |c: &mut Client| {
        for user in 1..=HAMMER_USERS {
            for channel in HAMMER_CHANNELS {
                let want = expected.get(&(user, channel)).copied().unwrap_or(0);
                let state = get(c, user, channel).await;
                assert_eq!(state.mention_count, want, "user {user} channel {channel}");
            }
        }
    };
    let mut c = server.client.clone();
    check(&mut c).await;
    drop(c);
    server.shutdown().await;

    // Every count reached the store.
    for user in 1..=HAMMER_USERS {
        let stored = common::stored(store.as_ref(), user).await;
        for channel in HAMMER_CHANNELS {
            let want = expected.get(&(user, channel)).copied().unwrap_or(0);
            let count = stored
                .iter()
                .find(|s| s.channel_id.get() == channel)
                .map_or(0, |s| s.mention_count());
            assert_eq!(count, want, "stored user {user} channel {channel}");
        }
    }
    let mut server = TestServer::start(&config, store.clone()).await;
    check(&mut server.client).await;
    server.shutdown().await;
}
