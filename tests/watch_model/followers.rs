//! The watch model's followers. Watchers each keep one `WatchReadStates`
//! stream, subscribe and unsubscribe users at random, and drop their
//! stream and open a new one at random, resubscribing their users with the
//! version each copy holds; their copies are built only from events. The
//! delta client keeps a copy of every user from
//! `GetUserReadStates(since_version)` alone. Both follow the server's
//! current address, which a restart changes.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use readstates::api::proto::{GetUserReadStatesRequest, WatchRequest};
use tokio::sync::watch;

use super::common::Client;
use super::common::watch::{
    Follower, UserCopy, WatchStream, delta_violations, open_watch, subscribe, try_connect,
    unsubscribe,
};
use super::workload::Rng;
use super::{USERS, all_users};

/// How often a watcher acts (subscribes, unsubscribes, reconnects).
const ACT_EVERY: Duration = Duration::from_millis(10);
/// How often the delta client syncs one user.
const SYNC_EVERY: Duration = Duration::from_millis(5);
/// The pause before trying a server again (it may be restarting).
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// What the test asks of its followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Act at random.
    Run,
    /// Unsubscribe every user and stay away (then `Run` resubscribes every
    /// user ever followed, from the version held before going away).
    Away,
    /// Stop acting and follow every user.
    FollowAll,
    /// Stop.
    Stop,
}

/// A watcher's copies and figures, shared with the test.
#[derive(Debug, Default)]
pub struct WatcherState {
    pub follower: Follower,
    /// Users subscribed (or to be subscribed on the next stream).
    pub following: BTreeSet<u64>,
    pub subscribes: u64,
    pub unsubscribes: u64,
    pub resubscribes: u64,
    /// Streams opened after the first.
    pub reconnects: u64,
    /// How streams ended, or failed to open, other than by the watcher's
    /// own choice.
    pub stream_failures: Vec<String>,
}

/// How a stream was left.
enum Left {
    /// The watcher chose to reconnect.
    Reconnect,
    /// The stream ended or failed; the description says how.
    Failed(String),
    Stop,
}

/// One watcher's task.
pub struct Watcher {
    rng: Rng,
    address: watch::Receiver<SocketAddr>,
    phase: watch::Receiver<Phase>,
    pub state: Arc<Mutex<WatcherState>>,
    client: Option<(SocketAddr, Client)>,
    /// The users followed before going away.
    away: Vec<u64>,
    streams_opened: u64,
}

impl Watcher {
    pub fn new(
        seed: u64,
        address: watch::Receiver<SocketAddr>,
        phase: watch::Receiver<Phase>,
        allow_backward_resets: bool,
    ) -> Self {
        let mut state = WatcherState::default();
        state.follower.allow_backward_resets = allow_backward_resets;
        Self {
            rng: Rng::new(seed),
            address,
            phase,
            state: Arc::new(Mutex::new(state)),
            client: None,
            away: Vec::new(),
            streams_opened: 0,
        }
    }

    /// Follows until told to stop.
    pub async fn run(mut self) {
        loop {
            let phase = *self.phase.borrow_and_update();
            if phase == Phase::Stop {
                return;
            }
            let stream = match self.open().await {
                Ok(stream) => stream,
                Err(failure) => {
                    self.state.lock().stream_failures.push(failure);
                    if !self.pause().await {
                        return;
                    }
                    continue;
                }
            };
            match self.serve(stream).await {
                Left::Reconnect => {}
                Left::Failed(failure) => {
                    self.state.lock().stream_failures.push(failure);
                    if !self.pause().await {
                        return;
                    }
                }
                Left::Stop => return,
            }
        }
    }

    /// Waits before trying again, applying any phase change meanwhile;
    /// returns false when told to stop.
    async fn pause(&mut self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(RETRY_AFTER) => true,
            changed = self.phase.changed() => {
                let phase = *self.phase.borrow_and_update();
                // With no stream, a phase changes only the users to follow.
                let _ = self.enter(phase);
                changed.is_ok() && phase != Phase::Stop
            }
        }
    }

    /// Opens a stream at the server's current address and subscribes the
    /// users followed, each from its copy's version.
    async fn open(&mut self) -> Result<WatchStream, String> {
        let address = *self.address.borrow();
        if self.client.as_ref().is_none_or(|(at, _)| *at != address) {
            let client = try_connect(address)
                .await
                .ok_or_else(|| format!("cannot connect to {address}"))?;
            self.client = Some((address, client));
        }
        let (_, client) = self.client.as_mut().expect("connected above");
        let stream = match open_watch(client).await {
            Ok(stream) => stream,
            Err(status) => {
                self.client = None;
                return Err(format!(
                    "opening a stream: {:?}: {}",
                    status.code(),
                    status.message()
                ));
            }
        };
        let request = {
            let mut state = self.state.lock();
            state.follower.new_stream();
            if self.streams_opened > 0 {
                state.reconnects += 1;
            }
            subscribe(
                state
                    .following
                    .iter()
                    .map(|&user| (user, state.follower.version_of(user)))
                    .collect::<Vec<_>>(),
            )
        };
        self.streams_opened += 1;
        if !request.subscribe.is_empty() {
            // A failed send shows as the stream's end, read next.
            let _ = stream.requests.send(request).await;
        }
        Ok(stream)
    }

    /// Reads the stream and acts on it until it ends or the watcher leaves.
    async fn serve(&mut self, mut stream: WatchStream) -> Left {
        let mut act = tokio::time::interval(ACT_EVERY);
        act.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let running = *self.phase.borrow() == Phase::Run;
            tokio::select! {
                biased;
                changed = self.phase.changed() => {
                    let phase = *self.phase.borrow_and_update();
                    if changed.is_err() || phase == Phase::Stop {
                        return Left::Stop;
                    }
                    for request in self.enter(phase) {
                        if !request.subscribe.is_empty() || !request.unsubscribe.is_empty() {
                            let _ = stream.requests.send(request).await;
                        }
                    }
                }
                message = stream.responses.message() => match message {
                    Ok(Some(message)) => {
                        self.state.lock().follower.receive(&message);
                    }
                    Ok(None) => return Left::Failed("the stream ended with no status".to_owned()),
                    Err(status) => {
                        return Left::Failed(format!(
                            "the stream ended: {:?}: {}",
                            status.code(),
                            status.message()
                        ));
                    }
                },
                _ = act.tick(), if running => {
                    match self.act() {
                        Some(request) => {
                            let _ = stream.requests.send(request).await;
                        }
                        None if self.rng.below(100) < 3 => return Left::Reconnect,
                        None => {}
                    }
                }
            }
        }
    }

    /// Draws one action: subscribe a user, unsubscribe one, or subscribe
    /// one again (alone, or with its unsubscription in the same request).
    fn act(&mut self) -> Option<WatchRequest> {
        let user = self.rng.user();
        let roll = self.rng.below(100);
        let mut state = self.state.lock();
        let version = state.follower.version_of(user);
        let followed = state.following.contains(&user);
        match roll {
            0..30 if !followed => {
                state.following.insert(user);
                state.subscribes += 1;
                Some(subscribe([(user, version)]))
            }
            30..50 if followed => {
                state.following.remove(&user);
                state.unsubscribes += 1;
                Some(unsubscribe([user]))
            }
            50..60 if followed => {
                state.resubscribes += 1;
                let mut request = subscribe([(user, version)]);
                if roll < 55 {
                    request.unsubscribe.push(user);
                }
                Some(request)
            }
            _ => None,
        }
    }

    /// Enters `phase`: changes the users followed, and returns the
    /// requests that tell an open stream.
    fn enter(&mut self, phase: Phase) -> Vec<WatchRequest> {
        let mut state = self.state.lock();
        let state = &mut *state;
        match phase {
            Phase::Away => {
                self.away = std::mem::take(&mut state.following).into_iter().collect();
                state.unsubscribes += self.away.len() as u64;
                vec![unsubscribe(self.away.iter().copied())]
            }
            Phase::Run => {
                // Back from away: every user it ever followed comes back
                // from the version it held, not only those it had then.
                let mut back: Vec<u64> = std::mem::take(&mut self.away);
                back.extend(state.follower.copies.keys().copied());
                back.sort_unstable();
                back.dedup();
                back.retain(|user| !state.following.contains(user));
                let back: Vec<(u64, u64)> = back
                    .into_iter()
                    .map(|user| (user, state.follower.version_of(user)))
                    .collect();
                state.following.extend(back.iter().map(|&(user, _)| user));
                state.subscribes += back.len() as u64;
                vec![subscribe(back)]
            }
            Phase::FollowAll => {
                let new: Vec<(u64, u64)> = all_users()
                    .filter(|user| !state.following.contains(user))
                    .map(|user| (user, state.follower.version_of(user)))
                    .collect();
                state.following.extend(new.iter().map(|&(user, _)| user));
                state.subscribes += new.len() as u64;
                vec![subscribe(new)]
            }
            Phase::Stop => Vec::new(),
        }
    }
}

/// The delta client's copies and figures.
#[derive(Debug, Default)]
pub struct DeltaClient {
    pub copies: HashMap<u64, UserCopy>,
    pub syncs: u64,
    pub resets: u64,
    /// Calls that failed (only a restart may make them fail).
    pub failures: Vec<String>,
    pub violations: Vec<String>,
    allow_backward_resets: bool,
}

impl DeltaClient {
    pub fn new(allow_backward_resets: bool) -> Self {
        Self {
            allow_backward_resets,
            ..Self::default()
        }
    }

    /// Syncs a random user every few milliseconds until told to stop;
    /// returns itself, for the last sync.
    pub async fn run(
        mut self,
        seed: u64,
        address: watch::Receiver<SocketAddr>,
        mut phase: watch::Receiver<Phase>,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let mut client: Option<(SocketAddr, Client)> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(SYNC_EVERY) => {}
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow_and_update() == Phase::Stop {
                        return self;
                    }
                }
            }
            let now = *address.borrow();
            if client.as_ref().is_none_or(|(at, _)| *at != now) {
                match try_connect(now).await {
                    Some(connected) => client = Some((now, connected)),
                    None => {
                        self.failures.push(format!("cannot connect to {now}"));
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                }
            }
            let (_, connected) = client.as_mut().expect("connected above");
            if let Err(failure) = self.sync(connected, 1 + rng.below(USERS)).await {
                self.failures.push(failure);
                client = None;
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }

    /// Brings the copy of `user` up to date with one delta.
    pub async fn sync(&mut self, client: &mut Client, user: u64) -> Result<(), String> {
        let copy = self.copies.entry(user).or_default();
        let since = copy.version;
        let answer = client
            .get_user_read_states(GetUserReadStatesRequest {
                user_id: user,
                since_version: Some(since),
            })
            .await
            .map_err(|status| {
                format!(
                    "GetUserReadStates: {:?}: {}",
                    status.code(),
                    status.message()
                )
            })?
            .into_inner();
        self.syncs += 1;
        if answer.reset {
            self.resets += 1;
        }
        self.violations.extend(delta_violations(
            user,
            since,
            since,
            &answer,
            self.allow_backward_resets,
        ));
        copy.apply_delta(&answer);
        Ok(())
    }
}
