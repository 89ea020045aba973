//! The suite's harness: server processes with the cluster on (started,
//! stopped with SIGTERM or SIGKILL, restarted on the same port), their
//! metrics summed over instances, the wait for the slots to settle, the
//! client under test, a tally of its retries read from its own logs, and a
//! seeded random source.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use readstates::api::proto::GetRoutingRequest;
use readstates::api::proto::read_states_client::ReadStatesClient as GrpcClient;
use readstates::cluster::placement::Members;
use readstates::config::ScyllaConfig;
use readstates_client::{ReadStatesClient, RetryPolicy, SlotMap};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::common::cluster::Cluster;
use crate::common::routing::{SLOTS, lease_table, routing_map};
use crate::common::{Client, http_get};

pub const LEASE_MS: u64 = 3_000;
pub const FLUSH_DELAY_MS: u64 = 200;

// ---------------------------------------------------------------------------
// Server processes

/// One server process with the cluster on, serving and advertising a
/// loopback port of its own, which it keeps across restarts.
pub struct Instance {
    pub id: String,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    config: PathBuf,
    /// `None` once stopped.
    child: Option<Child>,
}

impl Instance {
    /// Starts instance `id` over `settings` on a free port, and waits until
    /// it listens.
    pub async fn start(id: &str, dir: &Path, settings: &ScyllaConfig) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, config_text(id, port, settings)).unwrap();
        let (child, addr, metrics_addr) = launch(config.clone()).await;
        Self {
            id: id.to_owned(),
            addr,
            metrics_addr,
            config,
            child: Some(child),
        }
    }

    /// Sends SIGTERM and waits for a clean exit (calls drained, dirty
    /// states written, leases released); returns how long it took.
    pub async fn terminate(&mut self) -> Duration {
        let began = Instant::now();
        let mut child = self.child.take().expect("a running instance");
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            assert!(status.success(), "{id} exited with {status}");
        })
        .await
        .unwrap();
        began.elapsed()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("a running instance");
        signal(&child, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }

    /// Starts the stopped instance again, with the same id, config and
    /// port (its metrics port is new).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "{} still runs", self.id);
        let (child, addr, metrics_addr) = launch(self.config.clone()).await;
        assert_eq!(addr, self.addr, "{} came back on its port", self.id);
        self.child = Some(child);
        self.metrics_addr = metrics_addr;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// Starts the server with `config` and waits (at most a minute) until it
/// logs its metrics and gRPC addresses. Its log (stdout and stderr) goes
/// to `<config>.log` beside the config, or to the folder
/// `READSTATES_CLIENT_CLUSTER_LOGS` names, and a start that fails shows
/// its end.
async fn launch(config: PathBuf) -> (Child, SocketAddr, SocketAddr) {
    tokio::task::spawn_blocking(move || {
        let log_path = match std::env::var_os("READSTATES_CLIENT_CLUSTER_LOGS") {
            Some(dir) => Path::new(&dir).join(config.with_extension("log").file_name().unwrap()),
            None => config.with_extension("log"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_readstates"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                for key in ["metrics_addr=", "grpc_addr="] {
                    if let Some(addr) = line.split(key).nth(1) {
                        let addr = addr.split_whitespace().next().unwrap_or_default();
                        let _ = sender.send(addr.to_owned());
                    }
                }
            }
        });
        let mut next_addr = || -> SocketAddr {
            match receiver.recv_timeout(Duration::from_secs(60)) {
                Ok(addr) => addr.parse().unwrap(),
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                    panic!(
                        "{config:?} never logged its addresses ({error}); its log ends:\n{tail}"
                    );
                }
            }
        };
        // The metrics address is logged first.
        let metrics_addr = next_addr();
        let addr = next_addr();
        (child, addr, metrics_addr)
    })
    .await
    .unwrap()
}

/// The other cluster suites' settings: short leases, a 200 ms heartbeat,
/// a short flush delay.
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
         [cache]\ncapacity = 1000\npartitions = 4\n\
         [flush]\ndelay_ms = {FLUSH_DELAY_MS}\ntick_ms = 50\n\
         [scylla]\ncontact_points = [{contact_points}]\nlocal_datacenter = \"{}\"\n\
         keyspace = \"{}\"\nreplication = \"{}\"\nrequest_timeout_ms = 10000\n\
         migrate_on_start = false\n\
         [cluster]\nenabled = true\ninstance_id = \"{id}\"\n\
         advertise_addr = \"127.0.0.1:{port}\"\nslots = {SLOTS}\nlease_ms = {LEASE_MS}\n\
         safety_margin_ms = 1000\nheartbeat_ms = 200\nhandoff_timeout_ms = 500\n\
         forward_timeout_ms = 1000\n",
        settings.local_datacenter, settings.keyspace, settings.replication,
    )
}

// ---------------------------------------------------------------------------
// Metrics

/// Returns the sum of every sample of `name` (any labels) at `metrics_addr`.
async fn metric_sum(metrics_addr: SocketAddr, name: &str, labels: &str) -> f64 {
    let (status, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics at {metrics_addr}");
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Returns `readstates_cluster_forwards_total`, every result, summed over
/// `instances`.
pub async fn forwards(instances: &[&Instance]) -> u64 {
    let mut total = 0.0;
    for instance in instances {
        total += metric_sum(
            instance.metrics_addr,
            "readstates_cluster_forwards_total",
            "",
        )
        .await;
    }
    total as u64
}

/// Returns how many calls of `method` the instances answered `OK`.
pub async fn answered_ok(instances: &[&Instance], method: &str) -> u64 {
    let labels = format!("method=\"{method}\",code=\"OK\"");
    let mut total = 0.0;
    for instance in instances {
        total += metric_sum(
            instance.metrics_addr,
            "readstates_rpc_duration_seconds_count",
            &labels,
        )
        .await;
    }
    total as u64
}

// ---------------------------------------------------------------------------
// Slots

/// A generated client of `addr` that connects on first use.
pub fn lazy_client(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    GrpcClient::new(channel)
}

/// Returns each slot's `(holder, address)` as placement over `instances`
/// puts them.
pub fn placed(instances: &[&Instance]) -> BTreeMap<u32, (String, String)> {
    let members = Members::new(instances.iter().map(|instance| instance.id.as_str()));
    (0..SLOTS)
        .map(|slot| {
            let owner = members.owner_of(slot).unwrap();
            let instance = instances.iter().find(|i| i.id == owner).unwrap();
            (slot, (owner.to_owned(), instance.addr.to_string()))
        })
        .collect()
}

/// Returns whether every instance's `GetRouting` names each slot's holder
/// as placement over `instances` puts it.
pub async fn settled(instances: &[&Instance]) -> bool {
    let expected = placed(instances);
    for instance in instances {
        let map = lazy_client(instance.addr)
            .get_routing(GetRoutingRequest {})
            .await;
        if map.map(|map| routing_map(map.get_ref())).ok().as_ref() != Some(&expected) {
            return false;
        }
    }
    true
}

/// Waits (at most 45 s: a killed owner's leases run out first) until the
/// slots settle on `instances`, and the lease table agrees; returns how
/// long it took.
pub async fn wait_settled(
    cluster: &Cluster,
    settings: &ScyllaConfig,
    instances: &[&Instance],
) -> Duration {
    let began = Instant::now();
    let limit = Duration::from_secs(45);
    while !settled(instances).await {
        assert!(
            began.elapsed() < limit,
            "the slots did not settle on {:?} in {limit:?}",
            ids(instances)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        lease_table(cluster, settings).await,
        placed(instances),
        "the lease table agrees with every instance's GetRouting"
    );
    began.elapsed()
}

pub fn ids(instances: &[&Instance]) -> Vec<String> {
    instances
        .iter()
        .map(|instance| instance.id.clone())
        .collect()
}

/// Returns each slot's `(holder, address)` in `map`.
pub fn client_map(map: &SlotMap) -> BTreeMap<u32, (String, String)> {
    (0..map.slot_count())
        .filter_map(|slot| {
            let owner = &map.owners()[map.owner_index_of_slot(slot)?];
            Some((slot, (owner.instance_id.clone(), owner.address.clone())))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The client under test

/// Builds a client over `instances` with a 2 s deadline, the slot map read
/// again every `refresh`, and `policy`.
pub async fn client(
    instances: &[&Instance],
    refresh: Duration,
    policy: RetryPolicy,
) -> ReadStatesClient {
    ReadStatesClient::builder()
        .addresses(instances.iter().map(|instance| instance.addr.to_string()))
        .deadline(Duration::from_secs(2))
        .refresh_interval(refresh)
        .retry(policy)
        .connect()
        .await
        .unwrap()
}

/// Returns whether `status` is a connection lost under a call that the
/// client does not retry: a status whose source is the transport (tonic's
/// `transport::Error`, or hyper's error) but whose code is neither
/// `UNAVAILABLE` nor `DEADLINE_EXCEEDED`. As an instance stops, tonic
/// reports such a call as `UNKNOWN` "transport error" (a broken pipe, a
/// reset connection), `CANCELLED` "operation was canceled" (hyper's
/// "connection closed" before the request went out), or `INTERNAL` "h2
/// protocol error" (the instance's GOAWAY). The client's docs say a lost
/// connection is retried (safe calls), but `retry::classify` takes these
/// codes as final, so such a call fails at its first attempt. The suite
/// counts these apart and fails on them at its end ([`check_unretried`]),
/// after its figures are printed.
fn lost_connection(status: &tonic::Status) -> bool {
    if matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    ) {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<hyper::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Returns whether `status` is an instance's answer that the call's
/// `grpc-timeout` ran out there: tonic's server says `CANCELLED` "Timeout
/// expired" (the gRPC spec says `DEADLINE_EXCEEDED`). It reaches the client
/// before its own timer when the client is slow to wake (a busy machine);
/// the client retries its own timeouts and `DEADLINE_EXCEEDED`, but takes
/// this `CANCELLED` as final. Counted apart, as a lost connection is.
fn server_timeout(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled
        && status.message() == "Timeout expired"
        && std::error::Error::source(status).is_none()
}

/// Returns whether `status` is a failure the client should have retried
/// (its docs say so) but returned at once: a lost connection, or an
/// instance's answer that the deadline ran out.
pub fn unretried(status: &tonic::Status) -> bool {
    lost_connection(status) || server_timeout(status)
}

/// Fails `test` if calls failed without the retries they should have had
/// (`unretried` of them, as the test saw them; the client's own log, since
/// `since`, must agree that none was returned at once), after its figures
/// are printed.
pub fn check_unretried(test: &str, unretried: u64, since: Retries) {
    let returned_at_once = Retries::since(since).gave_up_other;
    if unretried == 0 && returned_at_once == 0 {
        return;
    }
    let message = format!(
        "{test}: {unretried} calls failed at once ({returned_at_once} RPCs returned without \
         retries, in the client's log) on a lost connection (UNKNOWN \"transport error\", \
         CANCELLED \"operation was canceled\", INTERNAL \"h2 protocol error\") or on an \
         instance's CANCELLED \"Timeout expired\", which the client retries as UNAVAILABLE and \
         DEADLINE_EXCEEDED (see support::unretried)"
    );
    panic!("{message}");
}

// ---------------------------------------------------------------------------
// The client's retries, from its own logs

static RETRIES: AtomicU64 = AtomicU64::new(0);
static GAVE_UP_ATTEMPTS: AtomicU64 = AtomicU64::new(0);
static GAVE_UP_BUDGET: AtomicU64 = AtomicU64::new(0);
static GAVE_UP_OTHER: AtomicU64 = AtomicU64::new(0);

/// The client's retry decisions, per RPC attempt (a fan-out's parts each
/// count), as it logs them. Process-wide: exact with `--test-threads=1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    /// Failed attempts sent again.
    pub retried: u64,
    /// Failures returned after the last attempt.
    pub gave_up_attempts: u64,
    /// Failures returned because the retry budget was spent.
    pub gave_up_budget: u64,
    /// Failures returned at once: a final status, or an unsafe call.
    pub gave_up_other: u64,
}

impl Retries {
    /// Starts the count (once per process) and returns it as it is now.
    pub fn now() -> Self {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::registry().with(RetryLog);
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this suite");
        });
        Self {
            retried: RETRIES.load(Ordering::SeqCst),
            gave_up_attempts: GAVE_UP_ATTEMPTS.load(Ordering::SeqCst),
            gave_up_budget: GAVE_UP_BUDGET.load(Ordering::SeqCst),
            gave_up_other: GAVE_UP_OTHER.load(Ordering::SeqCst),
        }
    }

    /// Returns what was counted since `earlier`.
    pub fn since(earlier: Self) -> Self {
        let now = Self::now();
        Self {
            retried: now.retried - earlier.retried,
            gave_up_attempts: now.gave_up_attempts - earlier.gave_up_attempts,
            gave_up_budget: now.gave_up_budget - earlier.gave_up_budget,
            gave_up_other: now.gave_up_other - earlier.gave_up_other,
        }
    }
}

/// Counts the client's "retrying a failed call" and "returning a failed
/// call" events (`readstates_client::call`), by reason.
struct RetryLog;

const CLIENT_TARGET: &str = "readstates_client";

impl<S: Subscriber> Layer<S> for RetryLog {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target().starts_with(CLIENT_TARGET) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target().starts_with(CLIENT_TARGET)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let counter = match (fields.message.as_str(), fields.reason.as_str()) {
            ("retrying a failed call", _) => &RETRIES,
            ("returning a failed call", "Attempts") => &GAVE_UP_ATTEMPTS,
            ("returning a failed call", "Budget") => &GAVE_UP_BUDGET,
            ("returning a failed call", _) => &GAVE_UP_OTHER,
            _ => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    reason: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "reason" => self.reason = format!("{value:?}"),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Randomness

/// SplitMix64: a small seeded source, so a run's calls can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        readstates_client::routing::mix64(self.0)
    }

    /// Returns a number below `n` (at least 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Returns true `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Returns a non-empty random subset of `items`, in random order.
    pub fn subset(&mut self, items: &[u64]) -> Vec<u64> {
        let mut chosen: Vec<u64> = items.iter().copied().filter(|_| self.chance(50)).collect();
        if chosen.is_empty() {
            chosen.push(items[self.below(items.len() as u64) as usize]);
        }
        for index in (1..chosen.len()).rev() {
            let other = self.below(index as u64 + 1) as usize;
            chosen.swap(index, other);
        }
        chosen
    }
}

/// The run's seed: `READSTATES_CLIENT_CLUSTER_SEED`, or the clock.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("READSTATES_CLIENT_CLUSTER_SEED")
        .ok()
        .map(|seed| seed.parse().expect("READSTATES_CLIENT_CLUSTER_SEED"))
        .unwrap_or_else(readstates::clock::unix_micros);
    println!("{test}: seed {seed} (READSTATES_CLIENT_CLUSTER_SEED replays its calls)");
    seed
}
