//! The crash loop: the server binary under a mixed load of every kind of
//! change, killed with SIGKILL at random moments, restarted on the same
//! data, and checked against a model of every call: whatever was
//! acknowledged more than the flush delay before a kill is read back
//! exactly after the restart (ARCHITECTURE.md §2.5, "Crash").
//!
//! `READSTATES_CRASH_LOOP_KILLS` sets the number of kills (default 10);
//! `READSTATES_CRASH_LOOP_SEED` replays a run's calls and kill moments (the
//! seed is printed); `READSTATES_CRASH_LOOP_BINARY` runs another build of
//! the server (e.g. a release build) instead of the one cargo built. The run prints the kills survived and the states
//! checked.

mod common;
#[path = "crash_loop/model.rs"]
mod model;
#[path = "crash_loop/process.rs"]
mod process;
#[path = "crash_loop/workload.rs"]
mod workload;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use readstates::api::proto::GetUserReadStatesRequest;
use tonic::Request;

use common::{connect, sample};
use model::{Observed, PairLog, Rng};
use process::{Process, Settings};
use workload::{Workload, observed};

const SETTINGS: Settings = Settings {
    flush_delay_ms: 300,
    flush_tick_ms: 50,
    // Well under the 120 pairs of the key space: users are evicted, and
    // their dirty states written at once, all through the run.
    cache_capacity: 48,
};
const CLIENTS: u64 = 4;
const USERS_PER_CLIENT: u64 = 6;
const CHANNELS: u64 = 5;
/// Added to the flush delay and one tick before a call must be stored. The
/// contract adds "the time of the write itself": a flush round starts a
/// tick after its states fall due and its batch commits with an fsync,
/// which takes milliseconds on an idle disk; the rest covers the scrape
/// interval of the write age (below) and scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_millis(500);
/// How often the age of the oldest store write is sampled.
const WRITE_AGE_SAMPLE: Duration = Duration::from_millis(100);
/// A hang guard per call; the server answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The load runs this long, at least, before a kill...
const MIN_LOAD: Duration = Duration::from_millis(1_500);
/// ...and this much longer at most.
const LOAD_SPREAD_MS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_at_random_moments() {
    let kills: usize = std::env::var("READSTATES_CRASH_LOOP_KILLS")
        .ok()
        .map(|kills| kills.parse().expect("READSTATES_CRASH_LOOP_KILLS"))
        .unwrap_or(10);
    let seed: u64 = std::env::var("READSTATES_CRASH_LOOP_SEED")
        .ok()
        .map(|seed| seed.parse().expect("READSTATES_CRASH_LOOP_SEED"))
        .unwrap_or_else(readstates::clock::unix_micros);
    println!("crash loop: seed {seed} (READSTATES_CRASH_LOOP_SEED replays it), {kills} kills");

    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let mut logs: HashMap<(u64, u64), PairLog> =
        all_pairs().map(|pair| (pair, PairLog::new())).collect();
    let mut clients: Vec<Workload> = (0..CLIENTS)
        .map(|index| Workload::new(index, seed))
        .collect();
    let mut server = Process::start(dir.path(), &SETTINGS);
    let mut totals = Totals::default();
    for round in 1..=kills {
        let run = Duration::from_millis(rng.below(LOAD_SPREAD_MS)) + MIN_LOAD;
        let (next_clients, killed_at, write_allowance) = tokio::time::timeout(
            Duration::from_secs(120),
            load_and_kill(server, clients, run),
        )
        .await
        .expect("a round hung");
        clients = next_clients;
        for client in &mut clients {
            for (pair, op, outcome) in client.calls.drain(..) {
                logs.get_mut(&pair).unwrap().record(op, outcome);
            }
        }
        let cutoff = killed_at
            .checked_sub(
                Duration::from_millis(SETTINGS.flush_delay_ms + SETTINGS.flush_tick_ms)
                    + MARGIN
                    + write_allowance,
            )
            .unwrap_or(killed_at);

        server = Process::start(dir.path(), &SETTINGS);
        let stored = tokio::time::timeout(Duration::from_secs(120), read_all(server.addr))
            .await
            .expect("reading back hung");
        for client in &mut clients {
            client.restarted(&stored);
        }
        let mut round_required = 0;
        for (pair, log) in logs.iter_mut() {
            round_required += log.acked_before(cutoff);
            let observed = stored
                .get(pair)
                .map(|(state, _)| *state)
                .unwrap_or_default();
            if let Err(error) = log.check(cutoff, observed) {
                panic!(
                    "kill {round} (seed {seed}): user {} channel {}: {error}",
                    pair.0, pair.1
                );
            }
        }
        totals.kills += 1;
        totals.states_checked += logs.len();
        totals.calls_required += round_required;
        totals.write_allowance = totals.write_allowance.max(write_allowance);
        println!(
            "kill {round}: after {} ms of load; {} pair calls acknowledged before the cutoff, \
             all present; store write time allowed {} ms",
            run.as_millis(),
            round_required,
            write_allowance.as_millis()
        );
    }
    drop(server);
    println!(
        "crash loop: {} kills survived, {} states checked, {} acknowledged pair calls \
         required and found, 0 lost; largest store write time allowed {} ms",
        totals.kills,
        totals.states_checked,
        totals.calls_required,
        totals.write_allowance.as_millis()
    );
}

/// After a SIGKILL the embedded database opens from the allocator state
/// its last commit saved, instead of walking the whole file to rebuild it:
/// the walk grows with the store (13 s at 100 million states, BENCHMARKS.md
/// "Cost as the work grows"), and a crashed instance would serve nothing
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_sigkill_opens_the_database_without_walking_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path(), &SETTINGS);
    let mut client = connect(server.addr).await;
    for user in 1..=20 {
        client
            .ack(common::ack_request(user, 1, 100 + user))
            .await
            .unwrap();
    }
    // Killed once everything is written (the flush lag counts writes in
    // flight), so the file's last commit is a write-back's.
    let written = common::eventually(Duration::from_secs(30), async || {
        scrape(server.metrics_addr).await.is_some_and(|text| {
            sample(&text, "readstates_dirty_read_states") == Some(0.0)
                && sample(&text, "readstates_flush_lag_seconds") == Some(0.0)
                && sample(&text, "readstates_flush_rows_written_total") >= Some(20.0)
        })
    })
    .await;
    assert!(written, "the acks were not written back");
    server.kill();

    let walked = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&walked);
    let path = dir
        .path()
        .join("data")
        .join(readstates::store::DATABASE_FILE);
    let db = redb::Database::builder()
        .set_repair_callback(move |_| seen.store(true, Ordering::Relaxed))
        .open(&path)
        .unwrap();
    drop(db);
    assert!(
        !walked.load(Ordering::Relaxed),
        "opening the database after a SIGKILL walked the whole file"
    );

    let server = Process::start(dir.path(), &SETTINGS);
    let mut client = connect(server.addr).await;
    for user in 1..=20 {
        let states = client
            .get_user_read_states(GetUserReadStatesRequest {
                user_id: user,
                since_version: None,
            })
            .await
            .unwrap()
            .into_inner()
            .read_states;
        assert_eq!(states.len(), 1, "user {user}'s written ack is gone");
        assert_eq!(states[0].last_message_id, 100 + user);
    }
}

#[derive(Default)]
struct Totals {
    kills: usize,
    states_checked: usize,
    calls_required: usize,
    write_allowance: Duration,
}

fn all_pairs() -> impl Iterator<Item = (u64, u64)> {
    (0..CLIENTS).flat_map(|client| {
        users_of(client).flat_map(|user| (1..=CHANNELS).map(move |channel| (user, channel)))
    })
}

/// The users one client owns: every call on a pair comes from one client.
fn users_of(client: u64) -> impl Iterator<Item = u64> {
    (1..=USERS_PER_CLIENT).map(move |user| client * 100 + user)
}

/// Runs the clients against `server` for `run`, then kills it. Returns the
/// clients (their calls recorded), the moment of the kill, and the time
/// allowed for store writes in the round.
async fn load_and_kill(
    server: Process,
    clients: Vec<Workload>,
    run: Duration,
) -> (Vec<Workload>, Instant, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let write_ages = WriteAgeSampler::start(server.metrics_addr, Arc::clone(&stop));
    let mut tasks = Vec::new();
    for mut client in clients {
        let stop = Arc::clone(&stop);
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut connection = connect(addr).await;
            while !stop.load(Ordering::SeqCst) && client.step(&mut connection).await {}
            client
        }));
    }
    tokio::time::sleep(run).await;
    let killed_at = Instant::now();
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.unwrap());
    }
    let write_allowance = write_ages.write_allowance().await;
    (clients, killed_at, write_allowance)
}

/// Reads every state of the key space over gRPC, with its version.
async fn read_all(addr: std::net::SocketAddr) -> HashMap<(u64, u64), (Observed, u64)> {
    let mut client = connect(addr).await;
    let mut stored = HashMap::new();
    for user in (0..CLIENTS).flat_map(users_of) {
        let mut request = Request::new(GetUserReadStatesRequest {
            user_id: user,
            since_version: None,
        });
        request.set_timeout(CALL_TIMEOUT);
        let response = client.get_user_read_states(request).await.unwrap();
        for state in response.into_inner().read_states {
            stored.insert((user, state.channel_id), (observed(&state), state.version));
        }
    }
    stored
}

/// Samples the age of the server's oldest unfinished store write, so the
/// check allows for the contract's "plus the time of the write itself": a
/// store writer starved of CPU by other work on the machine is slow, not
/// lossy. Only the store's part of the flush lag is allowed for; a flusher
/// that writes late on its own is not excused.
struct WriteAgeSampler {
    samples: Arc<Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WriteAgeSampler {
    fn start(metrics_addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(Some(body)) = tokio::time::timeout(CALL_TIMEOUT, scrape(metrics_addr)).await
                else {
                    return; // the server is gone
                };
                let age = sample(&body, "readstates_flush_write_age_seconds")
                    .expect("the server reports readstates_flush_write_age_seconds");
                sink.lock().push(Duration::from_secs_f64(age));
                tokio::time::sleep(WRITE_AGE_SAMPLE).await;
            }
        });
        Self { samples, task }
    }

    /// Returns the time allowed for writes in this round: twice the oldest
    /// write age seen, once for the write a state was in and once for the
    /// writes its batch waited behind for a concurrency permit. A write
    /// shorter than the sampling interval may go unseen; [`MARGIN`] covers
    /// it.
    async fn write_allowance(self) -> Duration {
        self.task.abort();
        if let Err(error) = self.task.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
        2 * self
            .samples
            .lock()
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
    }
}

/// Fetches `/metrics`, or None once the server is gone.
async fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
