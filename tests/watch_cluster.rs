//! The change stream across a cluster (ARCHITECTURE.md §1.3, Ownership,
//! Shutdown and Crashes; §3): server processes with the cluster on, over
//! one keyspace of a real cluster, a writer changing users through any
//! instance, and a watcher that follows them the way the README's gateway
//! recipe says: each user subscribed at its owner (`GetRouting`) with the
//! last version it holds, and again, wherever the owner now is, after an
//! `ended` (MOVED, NOT_SERVED, SHUTTING_DOWN, UNAVAILABLE) or a broken
//! stream. Its copies are built only from the events it receives, and
//! every event is checked for its place in the user's order.
//!
//! - Handoff: b joins while a serves everyone (a hands b's share off),
//!   then a leaves with SIGTERM. Every moved subscription ends with MOVED;
//!   at the leave, a's with SHUTTING_DOWN and then a's stream with
//!   UNAVAILABLE; every resume is a plain delta (nothing was lost), and at
//!   the end every copy equals `GetUserReadStates` in every field.
//! - SIGKILL: b, started after a (so its versions run ahead of the clock,
//!   on a's version lease), is killed with its last flush delay of changes
//!   unwritten, among them changes the watcher has seen for certain. Once
//!   a takes b's slots, each resume is a reset exactly where the watcher
//!   held a change the crash lost (its version above the user's stored
//!   version right after the kill), a plain delta otherwise, also for a
//!   session that comes back only after a's own versions have passed the
//!   lost one; and every copy ends equal to the truth.
//!
//! Gated like the Scylla suite (see `common::cluster`):
//! `READSTATES_TEST_SCYLLA=127.0.0.1:9042 cargo test --test watch_cluster --
//! --test-threads=1 --nocapture`. `READSTATES_WATCH_CLUSTER_SEED` replays
//! the writer's calls (the seed is printed; the timing still varies).

mod common;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::Client;
use common::binary::{Spawned, spawn};
use common::cluster::Cluster;
use common::routing::{routing_map, settle, users_of};
use parking_lot::Mutex;
use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::watch_ended::Reason;
use readstates::api::proto::watch_event::Event;
use readstates::api::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetRoutingRequest, GetUserReadStatesRequest,
    GetUserReadStatesResponse, ReadState, WatchRequest, WatchResponse, WatchSubscription,
};
use readstates::cluster::placement::Members;
use readstates::config::ScyllaConfig;
use readstates::ids::UserId;
use readstates::store::{LoadPriority, ScyllaStore, Store};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// The slot count `common::routing` computes placement with.
const SLOTS: u32 = common::routing::SLOTS;
const LEASE_MS: u64 = 3_000;
/// Users the writer changes and the watcher follows, per instance's share.
const USERS_PER_SHARE: usize = 15;
/// Channels per user: few, so that changes often land on the same state.
const CHANNELS: u64 = 4;
/// A hang guard per call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the watcher waits before subscribing a user again after a
/// NOT_SERVED (ownership settling) or an unreachable owner.
const RETRY: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// Server processes

/// The write-behind and version settings of an instance.
#[derive(Clone, Copy)]
struct Timing {
    flush_delay_ms: u64,
    /// `flush.version_lease_ms`: how far ahead of the wall clock an
    /// instance records its version lease, and so how far ahead of the
    /// clock the versions of an instance started after it may run.
    version_lease_ms: u64,
}

/// One server process with the cluster on.
struct Instance {
    id: String,
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    /// Starts instance `id` on a port of its own (its advertised address)
    /// and waits until it listens.
    async fn start(id: &str, dir: &Path, settings: &ScyllaConfig, timing: Timing) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, config_text(id, port, settings, timing)).unwrap();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let binary = Path::new(env!("CARGO_BIN_EXE_readstates"));
            let Spawned { child, addr, .. } = spawn(binary, &config, Duration::from_secs(60));
            Self { id, child, addr }
        })
        .await
        .unwrap()
    }

    /// Sends SIGTERM and waits for a clean exit: streams ended, calls
    /// drained, dirty states written, leases released.
    async fn terminate(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            assert!(status.success(), "{} exited with {status}", self.id);
        })
        .await
        .unwrap();
    }

    /// Kills the process with SIGKILL and reaps it.
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

fn config_text(id: &str, port: u16, settings: &ScyllaConfig, timing: Timing) -> String {
    let Timing {
        flush_delay_ms,
        version_lease_ms,
    } = timing;
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
         [flush]\ndelay_ms = {flush_delay_ms}\ntick_ms = 50\nversion_lease_ms = {version_lease_ms}\n\
         [scylla]\ncontact_points = [{contact_points}]\nlocal_datacenter = \"{}\"\n\
         keyspace = \"{}\"\nreplication = \"{}\"\nrequest_timeout_ms = 10000\n\
         migrate_on_start = false\n\
         [cluster]\nenabled = true\ninstance_id = \"{id}\"\n\
         advertise_addr = \"127.0.0.1:{port}\"\nslots = {SLOTS}\nlease_ms = {LEASE_MS}\n\
         safety_margin_ms = 1000\nheartbeat_ms = 200\nhandoff_timeout_ms = 500\n",
        settings.local_datacenter, settings.keyspace, settings.replication,
    )
}

/// A client of `addr` that connects on first use.
fn lazy_client(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    ReadStatesClient::new(channel)
}

/// The instances the writer and the watcher may call, shared with the
/// conductor, which takes an instance out before it stops it.
#[derive(Default)]
struct Live(Mutex<Vec<SocketAddr>>);

impl Live {
    fn set(&self, addrs: &[SocketAddr]) {
        *self.0.lock() = addrs.to_vec();
    }

    fn get(&self) -> Vec<SocketAddr> {
        self.0.lock().clone()
    }
}

// ---------------------------------------------------------------------------
// The writer

/// SplitMix64: the writer's calls, from a printed seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What the writer did, in numbers.
#[derive(Debug, Default)]
struct Written {
    calls: AtomicU64,
    failed: AtomicU64,
}

/// Changes the users `users` names (the conductor may change the list) at
/// random through random live instances until `stop`:
/// acks (forward, manual with a mention count, bulk), mentions, pins and
/// deletions. A failed call (no instance serves the user for a moment) is
/// counted and not retried: the truth is what the service ends with.
async fn write(
    live: Arc<Live>,
    users: Arc<Mutex<Vec<u64>>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    written: Arc<Written>,
) {
    let mut rng = Rng(seed);
    let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
    // Message ids and pin times only grow, so most acks move forward and
    // most mentions count.
    let mut next_message = 1_000;
    while !stop.load(Ordering::SeqCst) {
        let addrs = live.get();
        let addr = addrs[rng.below(addrs.len() as u64) as usize];
        let client = clients.entry(addr).or_insert_with(|| lazy_client(addr));
        let users = users.lock().clone();
        let user = users[rng.below(users.len() as u64) as usize];
        let channel = 1 + rng.below(CHANNELS);
        next_message += 1 + rng.below(5);
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            change(client, &mut rng, &users, user, channel, next_message),
        )
        .await;
        written.calls.fetch_add(1, Ordering::Relaxed);
        if !matches!(result, Ok(Ok(()))) {
            written.failed.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// One random change of `user` (a fan-out may name other users too).
async fn change(
    client: &mut Client,
    rng: &mut Rng,
    users: &[u64],
    user: u64,
    channel: u64,
    message: u64,
) -> Result<(), tonic::Status> {
    match rng.below(100) {
        0..35 => {
            client.ack(ack(user, channel, message)).await?;
        }
        35..45 => {
            let back = message.saturating_sub(rng.below(50));
            let request = AckRequest {
                manual: true,
                mention_count: Some(rng.below(4) as u32),
                ..ack(user, channel, back)
            };
            client.ack(request).await?;
        }
        45..65 => {
            let mut user_ids = vec![user];
            for _ in 0..rng.below(3) {
                let other = users[rng.below(users.len() as u64) as usize];
                if !user_ids.contains(&other) {
                    user_ids.push(other);
                }
            }
            let request = AddMentionsRequest {
                channel_id: channel,
                message_id: message,
                user_ids,
                omit_read_states: rng.below(2) == 0,
            };
            client.add_mentions(request).await?;
        }
        65..75 => {
            let request = AckPinsRequest {
                user_id: user,
                channel_id: channel,
                pin_timestamp_ms: message,
            };
            client.ack_pins(request).await?;
        }
        75..90 => {
            let mut channel_ids = vec![channel];
            if rng.below(3) == 0 {
                channel_ids.push(1 + (channel % CHANNELS));
            }
            let request = DeleteReadStatesRequest {
                user_id: user,
                channel_ids,
            };
            client.delete_read_states(request).await?;
        }
        _ => {
            let other = 1 + (channel % CHANNELS);
            let request = BulkAckRequest {
                user_id: user,
                acks: vec![
                    ChannelAck {
                        channel_id: channel,
                        message_id: message,
                    },
                    ChannelAck {
                        channel_id: other,
                        message_id: message,
                    },
                ],
            };
            client.bulk_ack(request).await?;
        }
    }
    Ok(())
}

fn ack(user_id: u64, channel_id: u64, message_id: u64) -> AckRequest {
    AckRequest {
        user_id,
        channel_id,
        message_id,
        manual: false,
        mention_count: None,
    }
}

// ---------------------------------------------------------------------------
// The watcher

/// Why a user is (re)subscribed: how its last subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// Its first subscription.
    Start,
    Moved,
    ShuttingDown,
    Unavailable,
    /// Its stream failed or closed without ending the subscription.
    Broken,
    /// A catch-up again on the same stream: it fell behind the outbox.
    Behind,
}

/// Where a followed user stands.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// To be subscribed at its owner, not before `at`.
    Pending { cause: Cause, at: Instant },
    /// Subscribed on stream `stream`; no catch-up yet.
    Subscribing { stream: u64, cause: Cause },
    /// Caught up on stream `stream`; `set_by`: the message whose change
    /// last set the copy's version (only it may repeat the version).
    Following { stream: u64, set_by: Option<u64> },
}

impl Place {
    fn stream(&self) -> Option<u64> {
        match *self {
            Place::Pending { .. } => None,
            Place::Subscribing { stream, .. } | Place::Following { stream, .. } => Some(stream),
        }
    }
}

/// A copy of one user's states, exact at `version`, built from events.
#[derive(Debug, Default)]
struct UserCopy {
    states: BTreeMap<u64, ReadState>,
    version: u64,
}

/// One catch-up the watcher received.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // Read through Debug, in failure messages.
struct CatchUpRecord {
    at: Instant,
    user: u64,
    addr: SocketAddr,
    cause: Cause,
    since: u64,
    version: u64,
    reset: bool,
    /// Whether the catch-up holds a live state at `since`: the change the
    /// subscriber resumed from is still the state of its channel (a reset
    /// where it is not may be the service failing to tell an exact copy
    /// from one that saw a lost change, once that state changed again).
    since_still_live: bool,
}

/// How a stream closed.
#[derive(Debug, Clone)]
struct Closed {
    addr: SocketAddr,
    /// `None`: the server ended the stream without a status.
    code: Option<Code>,
    /// Users caught up on it and not ended when it closed.
    still_following: Vec<u64>,
}

/// What the watcher received, in numbers.
#[derive(Debug, Default)]
struct Counts {
    messages: u64,
    events: u64,
    changed: u64,
    deleted: u64,
    catch_ups: BTreeMap<Cause, u64>,
    resets: BTreeMap<Cause, u64>,
    ended: BTreeMap<&'static str, u64>,
    subscribes: u64,
}

/// A stream the watcher keeps open to one instance.
struct OpenStream {
    id: u64,
    requests: mpsc::Sender<WatchRequest>,
}

/// What a stream's reader passes on.
enum Incoming {
    Message(WatchResponse),
    Closed(Option<tonic::Status>),
}

/// The watcher's state: the copies, where each user stands, what it
/// received, and every broken rule.
struct Watcher {
    copies: BTreeMap<u64, UserCopy>,
    places: BTreeMap<u64, Place>,
    /// Stream id → the instance it is open to.
    stream_addrs: HashMap<u64, SocketAddr>,
    catch_ups: Vec<CatchUpRecord>,
    closed: Vec<Closed>,
    counts: Counts,
    violations: Vec<String>,
    /// Messages received, all streams together: each one's index.
    message_index: u64,
    /// Users not to subscribe again for now: a session that comes back
    /// later.
    held_back: BTreeSet<u64>,
}

impl Watcher {
    fn new(users: &[u64]) -> Self {
        let now = Instant::now();
        Self {
            copies: users
                .iter()
                .map(|&user| (user, UserCopy::default()))
                .collect(),
            places: users
                .iter()
                .map(|&user| {
                    let place = Place::Pending {
                        cause: Cause::Start,
                        at: now,
                    };
                    (user, place)
                })
                .collect(),
            stream_addrs: HashMap::new(),
            catch_ups: Vec::new(),
            closed: Vec::new(),
            counts: Counts::default(),
            violations: Vec::new(),
            message_index: 0,
            held_back: BTreeSet::new(),
        }
    }

    fn violation(&mut self, text: String) {
        if self.violations.len() < 50 {
            self.violations.push(text);
        }
    }

    /// Users to subscribe now, with the version to resume from.
    fn due(&self, now: Instant) -> Vec<(u64, u64)> {
        self.places
            .iter()
            .filter(|(_, place)| matches!(place, Place::Pending { at, .. } if *at <= now))
            .filter(|(user, _)| !self.held_back.contains(user))
            .map(|(&user, _)| (user, self.copies[&user].version))
            .collect()
    }

    /// Delays the next subscription of `users`.
    fn retry_later(&mut self, users: &[u64]) {
        let at = Instant::now() + RETRY;
        for user in users {
            if let Some(Place::Pending { at: when, .. }) = self.places.get_mut(user) {
                *when = at;
            }
        }
    }

    fn subscribed(&mut self, users: &[u64], stream: u64) {
        for user in users {
            let place = self.places.get_mut(user).unwrap();
            if let Place::Pending { cause, .. } = *place {
                *place = Place::Subscribing { stream, cause };
                self.counts.subscribes += 1;
            }
        }
    }

    /// Applies one message of stream `stream`.
    fn receive(&mut self, stream: u64, message: &WatchResponse) {
        self.counts.messages += 1;
        self.message_index += 1;
        let index = self.message_index;
        let addr = self.stream_addrs[&stream];
        for event in &message.events {
            self.counts.events += 1;
            let user = event.user_id;
            let Some(place) = self.places.get(&user).copied() else {
                self.violation(format!("an event of user {user}, never subscribed"));
                continue;
            };
            if place.stream() != Some(stream) {
                self.violation(format!(
                    "user {user}: {:?} on stream {stream} ({addr}) where the user is {place:?}",
                    event.event
                ));
                continue;
            }
            match &event.event {
                Some(Event::CatchUp(delta)) => self.catch_up(user, addr, stream, place, delta),
                Some(Event::Changed(state)) => {
                    self.counts.changed += 1;
                    if state.user_id != user {
                        self.violation(format!("user {user}: a change of {state:?}"));
                    }
                    if self.in_order(user, place, state.version, index) {
                        let copy = self.copies.get_mut(&user).unwrap();
                        copy.states.insert(state.channel_id, *state);
                        copy.version = state.version;
                    }
                }
                Some(Event::Deleted(deleted)) => {
                    self.counts.deleted += 1;
                    if self.in_order(user, place, deleted.version, index) {
                        let copy = self.copies.get_mut(&user).unwrap();
                        let held = copy.states.remove(&deleted.channel_id).is_some();
                        copy.version = deleted.version;
                        if !held {
                            self.violation(format!(
                                "user {user}: deletion of channel {} the copy did not hold",
                                deleted.channel_id
                            ));
                        }
                    }
                }
                Some(Event::Ended(end)) => {
                    let reason = Reason::try_from(end.reason).unwrap_or(Reason::Unspecified);
                    *self.counts.ended.entry(reason.as_str_name()).or_default() += 1;
                    let version = self.copies[&user].version;
                    if end.resume_version != version {
                        self.violation(format!(
                            "user {user}: {reason:?} with resume version {} where the last \
                             version held is {version} ({place:?})",
                            end.resume_version
                        ));
                    }
                    let (cause, at) = match (reason, place) {
                        // Not subscribed: the reason it was subscribing for stands.
                        (Reason::NotServed, Place::Subscribing { cause, .. }) => {
                            (cause, Instant::now() + RETRY)
                        }
                        (Reason::NotServed, _) => {
                            self.violation(format!(
                                "user {user}: NOT_SERVED after a catch-up on the stream"
                            ));
                            (Cause::Broken, Instant::now())
                        }
                        (Reason::Moved, _) => (Cause::Moved, Instant::now()),
                        (Reason::ShuttingDown, _) => (Cause::ShuttingDown, Instant::now()),
                        (Reason::Unavailable, _) => (Cause::Unavailable, Instant::now() + RETRY),
                        (Reason::Unspecified, _) => {
                            self.violation(format!("user {user}: ended without a reason"));
                            (Cause::Broken, Instant::now())
                        }
                    };
                    self.places.insert(user, Place::Pending { cause, at });
                }
                None => self.violation(format!("user {user}: an empty event")),
            }
        }
    }

    fn catch_up(
        &mut self,
        user: u64,
        addr: SocketAddr,
        stream: u64,
        place: Place,
        delta: &GetUserReadStatesResponse,
    ) {
        let cause = match place {
            Place::Subscribing { cause, .. } => cause,
            _ => Cause::Behind,
        };
        *self.counts.catch_ups.entry(cause).or_default() += 1;
        if delta.reset {
            *self.counts.resets.entry(cause).or_default() += 1;
        }
        let since = self.copies[&user].version;
        if !delta.reset {
            if delta.version < since {
                self.violation(format!(
                    "user {user}: a delta since {since} to the older version {}",
                    delta.version
                ));
            }
            let newer = |version: u64| version > since && version <= delta.version;
            if !delta.read_states.iter().all(|state| newer(state.version))
                || !delta.deleted.iter().all(|deleted| newer(deleted.version))
            {
                self.violation(format!(
                    "user {user}: a delta since {since} holds changes outside it: {delta:?}"
                ));
            }
        } else if !delta.deleted.is_empty() {
            self.violation(format!("user {user}: a reset with deletions: {delta:?}"));
        }
        if delta.read_states.iter().any(|state| state.user_id != user) {
            self.violation(format!(
                "user {user}: a catch-up of another user: {delta:?}"
            ));
        }
        self.catch_ups.push(CatchUpRecord {
            at: Instant::now(),
            user,
            addr,
            cause,
            since,
            version: delta.version,
            reset: delta.reset,
            since_still_live: delta.read_states.iter().any(|state| state.version == since),
        });
        let copy = self.copies.get_mut(&user).unwrap();
        if delta.reset {
            copy.states.clear();
        }
        for state in &delta.read_states {
            copy.states.insert(state.channel_id, *state);
        }
        for deleted in &delta.deleted {
            copy.states.remove(&deleted.channel_id);
        }
        copy.version = delta.version;
        self.places.insert(
            user,
            Place::Following {
                stream,
                set_by: None,
            },
        );
    }

    /// Checks a change's place in the user's order; returns whether to
    /// apply it. The changes of one call share a version and one message.
    fn in_order(&mut self, user: u64, place: Place, version: u64, index: u64) -> bool {
        let Place::Following { stream, set_by } = place else {
            self.violation(format!(
                "user {user}: a change at {version} before its catch-up"
            ));
            return false;
        };
        let held = self.copies[&user].version;
        if version < held || (version == held && set_by != Some(index)) {
            self.violation(format!(
                "user {user}: a change at {version} after {held} (a duplicate or out of order)"
            ));
            return false;
        }
        self.places.insert(
            user,
            Place::Following {
                stream,
                set_by: Some(index),
            },
        );
        true
    }

    /// Stream `stream` closed: its users are subscribed again elsewhere.
    fn stream_closed(&mut self, stream: u64, status: Option<tonic::Status>) {
        let addr = self.stream_addrs[&stream];
        let mut still_following = Vec::new();
        for (&user, place) in &mut self.places {
            if place.stream() != Some(stream) {
                continue;
            }
            if matches!(place, Place::Following { .. }) {
                still_following.push(user);
            }
            let cause = match *place {
                Place::Subscribing { cause, .. } => cause,
                _ => Cause::Broken,
            };
            *place = Place::Pending {
                cause,
                at: Instant::now(),
            };
        }
        self.closed.push(Closed {
            addr,
            code: status.map(|status| status.code()),
            still_following,
        });
    }

    /// Every user followed: caught up on an open stream.
    fn all_following(&self) -> bool {
        self.places
            .values()
            .all(|place| matches!(place, Place::Following { .. }))
    }

    /// The first catch-up of each user received from `addr` after `after`.
    fn first_catch_ups_at(&self, addr: SocketAddr, after: Instant) -> BTreeMap<u64, CatchUpRecord> {
        let mut first = BTreeMap::new();
        let records = self.catch_ups.iter();
        for record in records.filter(|record| record.addr == addr && record.at > after) {
            first.entry(record.user).or_insert(*record);
        }
        first
    }

    fn summary(&self) -> String {
        let counts = &self.counts;
        format!(
            "{} messages, {} events ({} changed, {} deleted), {} subscriptions sent, \
             catch-ups by cause {:?}, resets by cause {:?}, ends {:?}, streams closed {:?}",
            counts.messages,
            counts.events,
            counts.changed,
            counts.deleted,
            counts.subscribes,
            counts.catch_ups,
            counts.resets,
            counts.ended,
            self.closed
                .iter()
                .map(|closed| (closed.addr, closed.code, closed.still_following.len()))
                .collect::<Vec<_>>(),
        )
    }
}

/// The task that drives a [`Watcher`]: subscribes pending users at their
/// owners, reads every stream, and stops at `stop`.
struct Watching {
    state: Arc<Mutex<Watcher>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watching {
    fn start(users: &[u64], live: Arc<Live>) -> Self {
        let state = Arc::new(Mutex::new(Watcher::new(users)));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(drive(Arc::clone(&state), live, Arc::clone(&stop)));
        Self { state, stop, task }
    }

    /// Stops the watcher; returns what it holds.
    async fn stop(self) -> Watcher {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let state = Arc::try_unwrap(self.state);
        state.ok().expect("the watcher's task is over").into_inner()
    }
}

async fn drive(state: Arc<Mutex<Watcher>>, live: Arc<Live>, stop: Arc<AtomicBool>) {
    let (incoming, mut received) = mpsc::unbounded_channel::<(u64, Incoming)>();
    let mut streams: HashMap<SocketAddr, OpenStream> = HashMap::new();
    let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
    let mut next_stream = 0;
    let mut routed_at = Instant::now() - RETRY;
    while !stop.load(Ordering::SeqCst) {
        tokio::select! {
            Some((stream, event)) = received.recv() => {
                handle(&state, &mut streams, stream, event);
                while let Ok((stream, event)) = received.try_recv() {
                    handle(&state, &mut streams, stream, event);
                }
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let due = state.lock().due(Instant::now());
        if due.is_empty() || routed_at.elapsed() < RETRY {
            continue;
        }
        routed_at = Instant::now();
        let Some(map) = routing(&live, &mut clients).await else {
            let users: Vec<u64> = due.iter().map(|(user, _)| *user).collect();
            state.lock().retry_later(&users);
            continue;
        };
        // The owners' addresses, from the slot map.
        let owners = routing_map(&map);
        let mut by_owner: BTreeMap<SocketAddr, Vec<(u64, u64)>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for (user, version) in due {
            let slot = readstates::cluster::slot_of(UserId::new(user).unwrap(), map.slot_count);
            match owners.get(&slot).and_then(|(_, addr)| addr.parse().ok()) {
                Some(addr) => by_owner.entry(addr).or_default().push((user, version)),
                None => unknown.push(user),
            }
        }
        state.lock().retry_later(&unknown);
        for (addr, subscriptions) in by_owner {
            let users: Vec<u64> = subscriptions.iter().map(|(user, _)| *user).collect();
            let open = match streams.entry(addr) {
                Entry::Occupied(open) => open.into_mut(),
                Entry::Vacant(vacant) => {
                    match open_stream(addr, next_stream, incoming.clone()).await {
                        Some(open) => {
                            state.lock().stream_addrs.insert(next_stream, addr);
                            next_stream += 1;
                            vacant.insert(open)
                        }
                        None => {
                            state.lock().retry_later(&users);
                            continue;
                        }
                    }
                }
            };
            let request = WatchRequest {
                subscribe: subscriptions
                    .iter()
                    .map(|&(user_id, since_version)| WatchSubscription {
                        user_id,
                        since_version,
                    })
                    .collect(),
                unsubscribe: Vec::new(),
            };
            if open.requests.send(request).await.is_ok() {
                state.lock().subscribed(&users, open.id);
            } else {
                // The stream is gone; its close is on its way.
                state.lock().retry_later(&users);
            }
        }
    }
}

fn handle(
    state: &Mutex<Watcher>,
    streams: &mut HashMap<SocketAddr, OpenStream>,
    stream: u64,
    event: Incoming,
) {
    let mut state = state.lock();
    match event {
        Incoming::Message(message) => state.receive(stream, &message),
        Incoming::Closed(status) => {
            streams.retain(|_, open| open.id != stream);
            state.stream_closed(stream, status);
        }
    }
}

/// The slot map, from the first live instance that answers.
async fn routing(
    live: &Live,
    clients: &mut HashMap<SocketAddr, Client>,
) -> Option<readstates::api::proto::GetRoutingResponse> {
    for addr in live.get() {
        let client = clients.entry(addr).or_insert_with(|| lazy_client(addr));
        let answer = tokio::time::timeout(CALL_TIMEOUT, client.get_routing(GetRoutingRequest {}));
        if let Ok(Ok(map)) = answer.await {
            return Some(map.into_inner());
        }
    }
    None
}

/// Opens a stream to `addr` whose reader passes its messages, and its
/// close, to `incoming` under `id`.
async fn open_stream(
    addr: SocketAddr,
    id: u64,
    incoming: mpsc::UnboundedSender<(u64, Incoming)>,
) -> Option<OpenStream> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1));
    let channel = tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
        .await
        .ok()?
        .ok()?;
    let mut client = ReadStatesClient::new(channel);
    let (requests, receiver) = mpsc::channel(64);
    let opened = client.watch_read_states(ReceiverStream::new(receiver));
    let mut responses = tokio::time::timeout(CALL_TIMEOUT, opened)
        .await
        .ok()?
        .ok()?
        .into_inner();
    tokio::spawn(async move {
        loop {
            match responses.message().await {
                Ok(Some(message)) => {
                    if incoming.send((id, Incoming::Message(message))).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = incoming.send((id, Incoming::Closed(None)));
                    return;
                }
                Err(status) => {
                    let _ = incoming.send((id, Incoming::Closed(Some(status))));
                    return;
                }
            }
        }
    });
    Some(OpenStream { id, requests })
}

// ---------------------------------------------------------------------------
// Checks

/// Waits until every user is followed and its copy equals what
/// `GetUserReadStates` answers at `addr` (every field of every live state,
/// and the version); returns the differences left after 15 s.
async fn converge(state: &Mutex<Watcher>, addr: SocketAddr, users: &[u64]) -> Vec<String> {
    let mut client = lazy_client(addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut differences = Vec::new();
        let following = state.lock().all_following();
        if !following {
            differences.push("not every user is followed yet".to_owned());
        }
        for &user in users {
            let truth = client
                .get_user_read_states(GetUserReadStatesRequest {
                    user_id: user,
                    since_version: None,
                })
                .await
                .unwrap_or_else(|status| panic!("GetUserReadStates of user {user}: {status}"))
                .into_inner();
            let watcher = state.lock();
            if let Some(difference) = differences_of(&watcher.copies[&user], &truth) {
                differences.push(format!("user {user}: {difference}"));
            }
        }
        if differences.is_empty() || Instant::now() >= deadline {
            return differences;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How `copy` differs from `truth`, a full `GetUserReadStates` answer.
fn differences_of(copy: &UserCopy, truth: &GetUserReadStatesResponse) -> Option<String> {
    let mut differences = Vec::new();
    if copy.version != truth.version {
        differences.push(format!(
            "version {} where the service has {}",
            copy.version, truth.version
        ));
    }
    let truth_states: BTreeMap<u64, ReadState> = truth
        .read_states
        .iter()
        .map(|state| (state.channel_id, *state))
        .collect();
    for channel in copy.states.keys().chain(truth_states.keys()) {
        let (held, true_state) = (copy.states.get(channel), truth_states.get(channel));
        if held != true_state {
            differences.push(format!(
                "channel {channel}: {held:?} where the service has {true_state:?}"
            ));
        }
    }
    differences.dedup();
    (!differences.is_empty()).then(|| differences.join("; "))
}

fn assert_converged(watcher: &Watcher, differences: &[String]) {
    assert!(
        differences.is_empty(),
        "the copies never equalled the truth: {differences:#?}\n{}",
        watcher.summary()
    );
}

fn assert_no_violations(watcher: &Watcher) {
    assert!(
        watcher.violations.is_empty(),
        "the streams broke the protocol: {:#?}\n{}",
        watcher.violations,
        watcher.summary()
    );
}

/// Waits until every slot is held, in the lease table, by `id`s.
async fn wait_held_by(cluster: &Cluster, settings: &ScyllaConfig, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
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

/// Gives every user a first state on each channel through `addr`.
async fn populate(addr: SocketAddr, users: &[u64]) {
    let mut client = lazy_client(addr);
    for &user in users {
        let acks = (1..=CHANNELS)
            .map(|channel_id| ChannelAck {
                channel_id,
                message_id: 100 + channel_id,
            })
            .collect();
        client
            .bulk_ack(BulkAckRequest {
                user_id: user,
                acks,
            })
            .await
            .unwrap_or_else(|status| panic!("populating user {user}: {status}"));
    }
}

/// Waits (at most `limit`) until every user is followed.
async fn all_following(state: &Mutex<Watcher>, limit: Duration) -> bool {
    common::eventually(limit, async || state.lock().all_following()).await
}

fn seed() -> u64 {
    std::env::var("READSTATES_WATCH_CLUSTER_SEED")
        .ok()
        .map(|seed| seed.parse().expect("READSTATES_WATCH_CLUSTER_SEED"))
        .unwrap_or_else(readstates::clock::unix_micros)
}

// ---------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_their_users_through_a_handoff_and_a_leave() {
    const TEST: &str = "subscriptions_follow_their_users_through_a_handoff_and_a_leave";
    let Some(cluster) = Cluster::from_env(TEST).await else {
        return;
    };
    let began = Instant::now();
    let seed = seed();
    println!("{TEST}: seed {seed} (READSTATES_WATCH_CLUSTER_SEED replays the writer's calls)");
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();

    let timing = Timing {
        flush_delay_ms: 200,
        version_lease_ms: 120_000,
    };
    let a = Instance::start("a", dir.path(), &settings, timing).await;
    wait_held_by(&cluster, &settings, &["a"]).await;
    settle(&[lazy_client(a.addr)], &["a"], &[a.addr]).await;
    let members = Members::new(["a", "b"]);
    let moving = users_of(&members, "b", USERS_PER_SHARE);
    let staying = users_of(&members, "a", USERS_PER_SHARE);
    let users = [moving.clone(), staying.clone()].concat();
    populate(a.addr, &users).await;

    let live = Arc::new(Live::default());
    live.set(&[a.addr]);
    let watching = Watching::start(&users, Arc::clone(&live));
    assert!(
        all_following(&watching.state, Duration::from_secs(10)).await,
        "the watcher followed everyone at a: {}",
        watching.state.lock().summary()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Written::default());
    let writing = Arc::new(Mutex::new(users.clone()));
    let writer = tokio::spawn(write(
        Arc::clone(&live),
        Arc::clone(&writing),
        seed,
        Arc::clone(&stop),
        Arc::clone(&written),
    ));
    let pause = || tokio::time::sleep(Duration::from_secs(2));

    pause().await;
    println!("{TEST}: b joins");
    let b = Instance::start("b", dir.path(), &settings, timing).await;
    live.set(&[a.addr, b.addr]);
    settle(
        &[lazy_client(a.addr), lazy_client(b.addr)],
        &["a", "b"],
        &[a.addr, b.addr],
    )
    .await;
    pause().await;
    let moved_at_join = watching.state.lock().counts.ended.get("MOVED").copied();

    println!("{TEST}: a leaves (SIGTERM)");
    live.set(&[b.addr]);
    let a_addr = a.addr;
    a.terminate().await;
    wait_held_by(&cluster, &settings, &["b"]).await;
    settle(&[lazy_client(b.addr)], &["b"], &[b.addr]).await;
    pause().await;

    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let differences = converge(&watching.state, b.addr, &users).await;
    let watcher = watching.stop().await;
    println!(
        "{TEST}: the writer made {} calls ({} failed or refused while slots moved); the \
         watcher: {}",
        written.calls.load(Ordering::Relaxed),
        written.failed.load(Ordering::Relaxed),
        watcher.summary()
    );
    assert_no_violations(&watcher);
    assert_converged(&watcher, &differences);

    // B's share moved with the handoff: each of its subscriptions ended
    // with MOVED, and resumed at b with a delta.
    let moved = moved_at_join.unwrap_or(0);
    assert!(
        moved >= USERS_PER_SHARE as u64,
        "{moved} MOVED ends at b's join, for {USERS_PER_SHARE} users moving: {}",
        watcher.summary()
    );
    // A's share: its subscriptions ended with SHUTTING_DOWN, and then a's
    // stream with UNAVAILABLE, none left following on it.
    let shutting_down = watcher.counts.ended.get("SHUTTING_DOWN").copied();
    assert!(
        shutting_down.unwrap_or(0) >= USERS_PER_SHARE as u64,
        "{shutting_down:?} SHUTTING_DOWN ends for {USERS_PER_SHARE} users at a: {}",
        watcher.summary()
    );
    let a_closed: Vec<&Closed> = watcher
        .closed
        .iter()
        .filter(|closed| closed.addr == a_addr)
        .collect();
    assert!(!a_closed.is_empty(), "a's stream closed");
    for closed in &a_closed {
        assert_eq!(closed.code, Some(Code::Unavailable), "{closed:?}");
        assert!(
            closed.still_following.is_empty(),
            "a's stream closed before ending these subscriptions: {closed:?}"
        );
    }
    let resets: Vec<&CatchUpRecord> = watcher
        .catch_ups
        .iter()
        .filter(|record| record.reset)
        .collect();
    println!(
        "{TEST}: {} MOVED ends (at the join: {moved}), {} catch-ups after MOVED, {} after \
         SHUTTING_DOWN, {} resets; {:?} wall",
        watcher.counts.ended.get("MOVED").copied().unwrap_or(0),
        watcher
            .counts
            .catch_ups
            .get(&Cause::Moved)
            .copied()
            .unwrap_or(0),
        watcher
            .counts
            .catch_ups
            .get(&Cause::ShuttingDown)
            .copied()
            .unwrap_or(0),
        resets.len(),
        began.elapsed()
    );
    // Nothing was lost (a handoff and a final flush write everything
    // before the lease is released): every resume is a plain delta.
    assert!(
        resets.is_empty(),
        "resumes after a handoff or a leave answered resets, though nothing was lost and \
         every copy was exact ({} of them resumed from a change whose state had changed \
         again since): {resets:#?}",
        resets
            .iter()
            .filter(|record| !record.since_still_live)
            .count()
    );
    b.terminate().await;
    cluster.drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owners_subscribers_resume_at_the_next_with_a_reset_only_where_changes_were_lost()
{
    const TEST: &str =
        "a_killed_owners_subscribers_resume_at_the_next_with_a_reset_only_where_changes_were_lost";
    let Some(cluster) = Cluster::from_env(TEST).await else {
        return;
    };
    let began = Instant::now();
    let seed = seed();
    println!("{TEST}: seed {seed} (READSTATES_WATCH_CLUSTER_SEED replays the writer's calls)");
    let settings = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    // Two seconds of changes are unwritten at any moment. The version lease
    // is short so that the survivor's own versions pass the killed
    // instance's within the test: b starts after a, with a's lease as its
    // version floor, and for its first seconds hands out versions up to a
    // lease ahead of the wall clock (as any instance started less than
    // `version_lease_ms` before it dies does), while a's follow the clock.
    let timing = Timing {
        flush_delay_ms: 2_000,
        version_lease_ms: 15_000,
    };
    let a = Instance::start("a", dir.path(), &settings, timing).await;
    wait_held_by(&cluster, &settings, &["a"]).await;
    let members = Members::new(["a", "b"]);
    let on_b = users_of(&members, "b", USERS_PER_SHARE + 2);
    // The canary and the straggler: changed once more right before the
    // kill, after the watcher has seen it, and by nobody else. The
    // straggler's session comes back only once a has changed it again,
    // with a version above the one the crash lost.
    let (canary, straggler) = (on_b[USERS_PER_SHARE], on_b[USERS_PER_SHARE + 1]);
    let on_b = on_b[..USERS_PER_SHARE].to_vec();
    // A third of b's users are never changed at b: the watcher holds
    // nothing of theirs that the crash can lose.
    let quiet = on_b[..USERS_PER_SHARE / 3].to_vec();
    let on_a = users_of(&members, "a", USERS_PER_SHARE);
    let users = [on_a.clone(), on_b.clone()].concat();
    let watched = [users.clone(), vec![canary, straggler]].concat();
    // Written by a's handoff when b joins.
    populate(a.addr, &watched).await;
    let b = Instance::start("b", dir.path(), &settings, timing).await;
    wait_held_by(&cluster, &settings, &["a", "b"]).await;
    settle(
        &[lazy_client(a.addr), lazy_client(b.addr)],
        &["a", "b"],
        &[a.addr, b.addr],
    )
    .await;

    let live = Arc::new(Live::default());
    live.set(&[a.addr, b.addr]);
    let watching = Watching::start(&watched, Arc::clone(&live));
    assert!(
        all_following(&watching.state, Duration::from_secs(10)).await,
        "the watcher followed everyone: {}",
        watching.state.lock().summary()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Written::default());
    let changing: Vec<u64> = users
        .iter()
        .copied()
        .filter(|user| !quiet.contains(user))
        .collect();
    let writing = Arc::new(Mutex::new(changing));
    let writer = tokio::spawn(write(
        Arc::clone(&live),
        Arc::clone(&writing),
        seed,
        Arc::clone(&stop),
        Arc::clone(&written),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The canary and the straggler change (through a, forwarded to b);
    // once the watcher holds the changes, b dies before writing them (its
    // flush is due a delay later).
    let mut client = lazy_client(a.addr);
    let mut lost = BTreeMap::new();
    for user in [canary, straggler] {
        let answer = client.ack(ack(user, 1, 1_000_000)).await.unwrap();
        lost.insert(user, answer.into_inner().read_state.unwrap().version);
    }
    let seen = common::eventually(Duration::from_secs(2), async || {
        let watcher = watching.state.lock();
        lost.iter()
            .all(|(user, version)| watcher.copies[user].version == *version)
    })
    .await;
    assert!(
        seen,
        "the watcher received the canary's and the straggler's changes"
    );
    watching.state.lock().held_back.insert(straggler);
    live.set(&[a.addr]);
    let b_addr = b.addr;
    let killed_at = Instant::now();
    b.kill();
    let ahead_ms = (lost[&straggler] as i64 - readstates::clock::unix_micros() as i64) / 1_000;
    println!("{TEST}: b killed (SIGKILL); its last versions ran {ahead_ms} ms ahead of the clock");
    // From now on every user changes (at a, once it serves them).
    *writing.lock() = users.clone();

    // Right after the kill, before a can take b's slots (b's leases run
    // for another second at least): which versions the store holds, and
    // which the watcher holds, once b's stream broke.
    let store = ScyllaStore::open(&settings).await.unwrap();
    let broke = common::eventually(Duration::from_secs(2), async || {
        let watcher = watching.state.lock();
        watcher.closed.iter().any(|closed| closed.addr == b_addr)
    })
    .await;
    assert!(broke, "b's stream broke");
    let mut stored = BTreeMap::new();
    for &user in on_b.iter().chain([&canary, &straggler]) {
        let rows = store
            .load_user(UserId::new(user).unwrap(), LoadPriority::Urgent)
            .await
            .unwrap();
        stored.insert(user, rows.version);
    }
    let read_in = killed_at.elapsed();
    let held: BTreeMap<u64, u64> = {
        let watcher = watching.state.lock();
        stored
            .keys()
            .map(|user| (*user, watcher.copies[user].version))
            .collect()
    };
    assert!(
        read_in < Duration::from_millis(LEASE_MS - 1_000),
        "the store was read {read_in:?} after the kill: a may have served b's users"
    );
    for user in [canary, straggler] {
        assert!(held[&user] > stored[&user], "user {user}'s change was lost");
    }
    for user in &quiet {
        assert!(
            held[user] <= stored[user],
            "quiet user {user}: held {} where the store has {}",
            held[user],
            stored[user]
        );
    }

    wait_held_by(&cluster, &settings, &["a"]).await;
    println!(
        "{TEST}: a holds every slot {:?} after the kill",
        killed_at.elapsed()
    );
    settle(&[lazy_client(a.addr)], &["a"], &[a.addr]).await;
    // The straggler changes at a once a's versions (the clock) have passed
    // the one the crash lost; then its session comes back.
    let wait =
        Duration::from_micros(lost[&straggler].saturating_sub(readstates::clock::unix_micros()));
    tokio::time::sleep(wait + Duration::from_millis(10)).await;
    let answer = client.ack(ack(straggler, 2, 2_000_000)).await.unwrap();
    let changed = answer.into_inner().read_state.unwrap().version;
    assert!(
        changed > lost[&straggler],
        "{changed} after {}",
        lost[&straggler]
    );
    watching.state.lock().held_back.remove(&straggler);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let differences = converge(&watching.state, a.addr, &watched).await;
    let watcher = watching.stop().await;
    println!(
        "{TEST}: the writer made {} calls ({} failed or refused while slots moved); the \
         straggler came back {wait:?} after a took over; the watcher: {}",
        written.calls.load(Ordering::Relaxed),
        written.failed.load(Ordering::Relaxed),
        watcher.summary()
    );

    // Each of b's users resumed at a: a reset where the watcher held a
    // change the crash lost (the canary and the straggler at least), a
    // plain delta otherwise (the quiet users at least).
    let resumed = watcher.first_catch_ups_at(a.addr, killed_at);
    let mut wrong = Vec::new();
    let (mut lost_seen, mut resets) = (0, 0);
    for (&user, &stored_version) in &stored {
        let Some(&record) = resumed.get(&user) else {
            wrong.push(format!("user {user}: never resumed at a"));
            continue;
        };
        let saw_lost = held[&user] > stored_version;
        lost_seen += u64::from(saw_lost);
        resets += u64::from(record.reset);
        if record.reset != saw_lost || record.since != held[&user] {
            wrong.push(format!(
                "user {user}: held {} with {stored_version} stored; resumed {record:?}",
                held[&user]
            ));
        }
    }
    println!(
        "{TEST}: of b's {} users, the watcher held a lost change of {lost_seen}; {resets} \
         resumed with a reset; the resets in all: {:?}; {} copies differ from the truth; \
         {:?} wall",
        stored.len(),
        watcher.counts.resets,
        differences.len(),
        began.elapsed()
    );
    assert_no_violations(&watcher);
    // b's streams broke; a's never did.
    assert!(
        watcher.closed.iter().all(|closed| closed.addr == b_addr),
        "{:?}",
        watcher.closed
    );
    for user in [canary, straggler] {
        let record = resumed.get(&user);
        assert!(
            record.is_some_and(|record| record.reset),
            "user {user}, which the watcher saw changed at {} before the crash lost it, \
             resumed without a reset: {record:?}",
            lost[&user]
        );
    }
    assert!(
        wrong.is_empty(),
        "resumes at a after the kill: a reset is expected exactly where the watcher held a \
         change the store lacked after the kill ({} of the wrong ones resumed from a change \
         whose state had changed again since): {wrong:#?}\n{}",
        resumed
            .values()
            .filter(|record| record.reset && !record.since_still_live)
            .filter(|record| held[&record.user] <= stored[&record.user])
            .count(),
        watcher.summary()
    );
    // a's own users never moved: none of them needed a catch-up again.
    let a_resets: Vec<&CatchUpRecord> = watcher
        .catch_ups
        .iter()
        .filter(|record| record.reset && on_a.contains(&record.user))
        .collect();
    assert!(a_resets.is_empty(), "a's users were reset: {a_resets:#?}");
    assert_converged(&watcher, &differences);
    a.terminate().await;
    cluster.drop_keyspace(&settings).await;
}
