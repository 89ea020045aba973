//! The multi-instance model run: server processes with the cluster on, over
//! one keyspace of a real cluster, under a mixed load of every kind of
//! change, each call sent to a random live instance (and sent again, to
//! another, while no instance serves it). Meanwhile an instance joins, one
//! leaves gracefully (SIGTERM), another joins, and one is killed with
//! SIGKILL. Every call is checked against the crash loop's model of
//! ARCHITECTURE.md §1.2, and at the end every state is read from the store:
//! every acknowledged change is there and every mention count is exact,
//! except that changes the killed instance acknowledged in its last flush
//! delay (plus a write margin) may be lost. The run prints how many such
//! calls there were.
//!
//! Gated like the Scylla suite (see `common::cluster`):
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test cluster_model`.
//! `READSTATES_MODEL_RUN_SEED` replays a run's calls (the seed is
//! printed; the moments of the membership changes still vary);
//! `READSTATES_MODEL_RUN_BINARY` runs another build of the server.

mod common;
#[path = "crash_loop/model.rs"]
mod model;
#[path = "crash_loop/workload.rs"]
mod workload;

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Client;
use common::binary::{Spawned, spawn};
use common::cluster::Cluster;
use model::{PairLog, Rng};
use parking_lot::Mutex;
use readstates::api::proto::ReadState as ProtoState;
use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::cluster::slot_of;
use readstates::config::ScyllaConfig;
use readstates::ids::UserId;
use readstates::store::{LoadPriority, ScyllaStore, Store};
use tonic::Code;
use tonic::transport::Channel;
use workload::{Call, Workload};

const CLIENTS: u64 = 4;
const USERS_PER_CLIENT: u64 = 8;
const CHANNELS: u64 = 4;
/// A hang guard per call; the servers answer in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call may go unserved by every instance (a slot is unserved
/// from its release, or its owner's death plus the lease, until its next
/// owner's first round).
const UNSERVED_LIMIT: Duration = Duration::from_secs(30);
const SLOTS: u32 = 64;
const LEASE_MS: u64 = 3_000;
const FLUSH_DELAY_MS: u64 = 500;
const FLUSH_TICK_MS: u64 = 50;
/// Added to the flush delay and a tick before a change must be stored: the
/// time of the write itself, on a small machine that also runs the cluster.
const WRITE_MARGIN: Duration = Duration::from_millis(2_000);

/// The users one client owns: every call on a pair comes from one client.
fn users_of(client: u64) -> impl Iterator<Item = u64> {
    (1..=USERS_PER_CLIENT).map(move |user| client * 100 + user)
}

fn all_pairs() -> impl Iterator<Item = (u64, u64)> {
    (0..CLIENTS).flat_map(|client| {
        users_of(client).flat_map(|user| (1..=CHANNELS).map(move |channel| (user, channel)))
    })
}

/// One server process with the cluster on.
struct Instance {
    id: String,
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    /// Starts instance `id` on its own port (its advertised address) and
    /// waits until it listens.
    fn start(id: &str, dir: &Path, settings: &ScyllaConfig) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, config_text(id, port, settings)).unwrap();
        let binary = std::env::var_os("READSTATES_MODEL_RUN_BINARY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_readstates").into());
        let Spawned { child, addr, .. } =
            spawn(Path::new(&binary), &config, Duration::from_secs(60));
        Self {
            id: id.to_owned(),
            child,
            addr,
        }
    }

    /// Sends SIGTERM and waits for a clean exit: calls drained, dirty
    /// states written, leases released.
    fn terminate(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{} exited with {status}", self.id);
    }

    /// Kills the process with SIGKILL.
    fn kill(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(id: &str, port: u16, settings: &ScyllaConfig) -> String {
    let contact_points = settings
        .contact_points
        .iter()
        .map(|point| format!("\"{point}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[server]\nlisten_addr = \"127.0.0.1:{port}\"\n\
         [metrics]\nlisten_addr = \"127.0.0.1:0\"\n\
         [store]\nbackend = \"scylla\"\n\
         [cache]\ncapacity = 64\npartitions = 4\n\
         [flush]\ndelay_ms = {FLUSH_DELAY_MS}\ntick_ms = {FLUSH_TICK_MS}\n\
         [scylla]\ncontact_points = [{contact_points}]\nlocal_datacenter = \"{}\"\n\
         keyspace = \"{}\"\nreplication = \"{}\"\nrequest_timeout_ms = 10000\n\
         migrate_on_start = false\n\
         [cluster]\nenabled = true\ninstance_id = \"{id}\"\n\
         advertise_addr = \"127.0.0.1:{port}\"\nslots = {SLOTS}\nlease_ms = {LEASE_MS}\n\
         safety_margin_ms = 1000\nheartbeat_ms = 200\nhandoff_timeout_ms = 500\n",
        settings.local_datacenter, settings.keyspace, settings.replication,
    )
}

/// What the clients and the conductor share.
#[derive(Default)]
struct Shared {
    /// The instances calls may go to.
    live: Mutex<Vec<SocketAddr>>,
    /// Held for reading by each call, and for writing around a kill, so
    /// that no call is in flight when the kill is marked in the logs.
    gate: tokio::sync::RwLock<()>,
    logs: Mutex<HashMap<(u64, u64), PairLog>>,
    /// Bumped at each kill; `forgotten` names the pairs it may have hit.
    kills: AtomicU64,
    forgotten: Mutex<Vec<(u64, u64)>>,
    stop: AtomicBool,
    calls: AtomicU64,
    /// Acknowledged changes, one per pair a call named.
    pair_calls: AtomicU64,
    resent: AtomicU64,
}

/// Waits until every slot is held by one of `ids`.
async fn wait_all_held(cluster: &Cluster, settings: &ScyllaConfig, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holders = cluster.lease_holders(settings).await;
        let held = holders
            .values()
            .filter(|owner| ids.contains(&owner.as_str()))
            .count();
        if held == SLOTS as usize {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {held} of {SLOTS} slots held by {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client: draws calls, sends each to random live instances until one
/// serves it, and records it in the pair logs.
async fn client(shared: Arc<Shared>, index: u64, seed: u64) {
    let mut workload = Workload::new(index, seed);
    let mut rng = Rng::new(seed ^ (index + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut channels: HashMap<SocketAddr, Client> = HashMap::new();
    let mut kills_seen = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let _gate = shared.gate.read().await;
        let kills = shared.kills.load(Ordering::SeqCst);
        if kills != kills_seen {
            workload.forget(shared.forgotten.lock().iter().copied());
            kills_seen = kills;
        }
        let call = workload.next_call();
        let states = send_anywhere(&shared, &mut channels, &mut rng, &call).await;
        assert!(workload.record(call, Ok(states)));
        let mut logs = shared.logs.lock();
        shared
            .pair_calls
            .fetch_add(workload.calls.len() as u64, Ordering::Relaxed);
        for (pair, op, outcome) in workload.calls.drain(..) {
            logs.get_mut(&pair).unwrap().record(op, outcome);
        }
    }
}

/// Sends `call` to random live instances until one serves it. Every change
/// is idempotent, so a call whose answer was lost may be sent again.
async fn send_anywhere(
    shared: &Shared,
    channels: &mut HashMap<SocketAddr, Client>,
    rng: &mut Rng,
    call: &Call,
) -> Vec<ProtoState> {
    let unserved_since = Instant::now();
    shared.calls.fetch_add(1, Ordering::Relaxed);
    loop {
        let addr = {
            let live = shared.live.lock();
            live[rng.below(live.len() as u64) as usize]
        };
        let client = channels.entry(addr).or_insert_with(|| {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
            ReadStatesClient::new(channel)
        });
        let status = match call.send(client).await {
            Ok(states) => return states,
            Err(status) => status,
        };
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
            ),
            "{addr} refused {:?}: {status}",
            call.ops
        );
        assert!(
            unserved_since.elapsed() < UNSERVED_LIMIT,
            "no instance served {:?} on {:?} for {UNSERVED_LIMIT:?}; last: {status}",
            call.ops,
            call.pairs
        );
        shared.resent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn set_live(shared: &Shared, instances: &[&Instance]) {
    *shared.live.lock() = instances.iter().map(|instance| instance.addr).collect();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_survive_joins_leaves_and_a_kill_across_instances() {
    let Some(cluster) =
        Cluster::from_env("changes_survive_joins_leaves_and_a_kill_across_instances").await
    else {
        return;
    };
    let seed: u64 = std::env::var("READSTATES_MODEL_RUN_SEED")
        .ok()
        .map(|seed| seed.parse().expect("READSTATES_MODEL_RUN_SEED"))
        .unwrap_or_else(readstates::clock::unix_micros);
    println!("cluster model: seed {seed} (READSTATES_MODEL_RUN_SEED replays its calls)");
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();

    let a = Instance::start("a", dir.path(), &settings);
    let b = Instance::start("b", dir.path(), &settings);
    wait_all_held(&cluster, &settings, &["a", "b"]).await;
    let shared = Arc::new(Shared::default());
    *shared.logs.lock() = all_pairs().map(|pair| (pair, PairLog::new())).collect();
    set_live(&shared, &[&a, &b]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| tokio::spawn(client(Arc::clone(&shared), index, seed)))
        .collect();
    let pause = || tokio::time::sleep(Duration::from_secs(3));

    pause().await;
    println!("c joins");
    let c = Instance::start("c", dir.path(), &settings);
    set_live(&shared, &[&a, &b, &c]);
    pause().await;
    println!("a leaves (SIGTERM)");
    set_live(&shared, &[&b, &c]);
    tokio::task::spawn_blocking(move || a.terminate())
        .await
        .unwrap();
    pause().await;
    println!("d joins");
    let d = Instance::start("d", dir.path(), &settings);
    set_live(&shared, &[&b, &c, &d]);
    pause().await;

    // The kill: no call in flight, so each pair's log has every call
    // answered before it, and none after.
    let (killed_at, slots_of_b) = {
        let _gate = shared.gate.write().await;
        set_live(&shared, &[&c, &d]);
        let killed_at = Instant::now();
        b.kill();
        let holders = cluster.lease_holders(&settings).await;
        let slots_of_b: BTreeSet<u32> = holders
            .into_iter()
            .filter(|(_, owner)| owner == "b")
            .map(|(slot, _)| slot)
            .collect();
        (killed_at, slots_of_b)
    };
    let cutoff = killed_at
        .checked_sub(Duration::from_millis(FLUSH_DELAY_MS + FLUSH_TICK_MS) + WRITE_MARGIN)
        .unwrap_or(killed_at);
    let mut window = 0;
    {
        let mut logs = shared.logs.lock();
        let mut forgotten = shared.forgotten.lock();
        for (pair, log) in logs.iter_mut() {
            let user = UserId::new(pair.0).unwrap();
            if slots_of_b.contains(&slot_of(user, SLOTS)) {
                window += log.crash(cutoff).unwrap_or_else(|error| {
                    panic!("seed {seed}: {pair:?} before the kill: {error}")
                });
                forgotten.push(*pair);
            }
        }
        shared.kills.fetch_add(1, Ordering::SeqCst);
    }
    println!(
        "b killed (SIGKILL) holding {} slots: {} pairs, {window} calls acknowledged in its last \
         flush delay + margin may be lost",
        slots_of_b.len(),
        shared.forgotten.lock().len()
    );
    // The dead owner's slots free themselves after the lease.
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;

    shared.stop.store(true, Ordering::SeqCst);
    for task in clients {
        task.await.unwrap();
    }
    let (calls, resent) = (
        shared.calls.load(Ordering::Relaxed),
        shared.resent.load(Ordering::Relaxed),
    );
    tokio::task::spawn_blocking(move || {
        for instance in [c, d] {
            instance.terminate();
        }
    })
    .await
    .unwrap();

    let store = ScyllaStore::open(&settings).await.unwrap();
    let mut stored: HashMap<(u64, u64), model::Observed> = HashMap::new();
    for user in (0..CLIENTS).flat_map(users_of) {
        let rows = store
            .load_user(UserId::new(user).unwrap(), LoadPriority::Urgent)
            .await
            .unwrap();
        for state in rows.states {
            stored.insert(
                (user, state.channel_id.get()),
                model::Observed {
                    last_message_id: state.last_message_id.get(),
                    mention_count: state.mentions.count(),
                    last_pin_timestamp_ms: state.last_pin_timestamp_ms,
                },
            );
        }
    }
    let end = Instant::now();
    for (pair, log) in shared.logs.lock().iter_mut() {
        let observed = stored.get(pair).copied().unwrap_or_default();
        if let Err(error) = log.check(end, observed) {
            panic!("seed {seed}: user {} channel {}: {error}", pair.0, pair.1);
        }
    }
    println!(
        "cluster model: {calls} calls through random instances ({resent} sends refused or failed, \
         then sent again), {} changes acknowledged: all present and exact, except that {window} \
         acknowledged by the killed instance in its last flush delay + {WRITE_MARGIN:?} were \
         allowed to be lost",
        shared.pair_calls.load(Ordering::Relaxed)
    );
    cluster.drop_keyspace(&settings).await;
}
