//! A steady load of safe calls through the client, from a few tasks, each
//! owning its users (so every pair's calls are in order): acks (each pair's
//! ids increase), bulk acks, pins, mentions of new messages in a channel
//! never acked, and reads. Each task keeps a model: per pair the highest
//! ack answered and the highest sent, and per user the mentions answered
//! and sent. A read must show at least what was answered before it was
//! sent and at most what was sent. A call that fails once the client gave
//! up is counted (with when it started and whose it was), and sent again
//! after the load, until it succeeds, so that the final state is exact:
//! every pair at the highest ack sent, every user with one mention per
//! message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use readstates_client::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    GetReadStateRequest, GetUserReadStatesRequest,
};
use readstates_client::{Code, ReadStatesClient, Status};
use tokio::time::Instant;

use crate::support::{self, Rng};

/// Channels acked; mentions go to `MENTIONS`, never acked.
const CHANNELS: u64 = 3;
const MENTIONS: u64 = 5;
/// The pause of a task between two calls.
const PACE: Duration = Duration::from_millis(5);

/// One call, as sent and as it ended.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When it was sent (its first attempt).
    pub at: Instant,
    /// Which of the clients sent it (an index the test gives).
    pub client: usize,
    pub users: Vec<u64>,
    pub method: &'static str,
    /// `None` if it succeeded; else its code, once the client gave up.
    pub failed: Option<Code>,
    /// The failure's message, if it failed.
    pub detail: String,
    /// A failure the client should have retried but did not (see
    /// [`support::unretried`]).
    pub unretried: bool,
}

/// What the tasks and the conductor share.
#[derive(Default)]
pub struct Shared {
    pub stop: AtomicBool,
    /// Every call.
    pub log: Mutex<Vec<Sent>>,
}

impl Shared {
    /// Logs a call (and prints one that failed with a status the client
    /// does not retry).
    fn log(
        &self,
        at: Instant,
        client: usize,
        users: Vec<u64>,
        method: &'static str,
        status: Option<&Status>,
    ) {
        if let Some(status) = status
            && !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
        {
            println!("{method} failed with a status the client does not retry: {status:?}");
        }
        self.log.lock().push(Sent {
            at,
            client,
            users,
            method,
            failed: status.map(Status::code),
            detail: status.map(|s| s.message().to_owned()).unwrap_or_default(),
            unretried: status.is_some_and(support::unretried),
        });
    }
}

#[derive(Debug, Clone)]
enum Call {
    Ack(AckRequest),
    BulkAck(BulkAckRequest),
    Pins(AckPinsRequest),
    Mention(AddMentionsRequest),
}

impl Call {
    fn users(&self) -> Vec<u64> {
        match self {
            Call::Ack(request) => vec![request.user_id],
            Call::BulkAck(request) => vec![request.user_id],
            Call::Pins(request) => vec![request.user_id],
            Call::Mention(request) => request.user_ids.clone(),
        }
    }

    fn method(&self) -> &'static str {
        match self {
            Call::Ack(_) => "Ack",
            Call::BulkAck(_) => "BulkAck",
            Call::Pins(_) => "AckPins",
            Call::Mention(_) => "AddMentions",
        }
    }

    async fn send(&self, client: &ReadStatesClient) -> Result<(), Status> {
        match self {
            Call::Ack(request) => client.ack(*request).await.map(drop),
            Call::BulkAck(request) => client.bulk_ack(request.clone()).await.map(drop),
            Call::Pins(request) => client.ack_pins(*request).await.map(drop),
            Call::Mention(request) => client.add_mentions(request.clone()).await.map(drop),
        }
    }
}

/// A range: the highest value answered, and the highest sent.
#[derive(Debug, Default, Clone, Copy)]
struct Bounds {
    answered: u64,
    sent: u64,
}

/// One task's model.
#[derive(Debug, Default)]
pub struct Model {
    acks: BTreeMap<(u64, u64), Bounds>,
    pins: BTreeMap<u64, Bounds>,
    /// Per user: the messages whose mention was answered, and sent.
    mentions_answered: BTreeMap<u64, BTreeSet<u64>>,
    mentions_sent: BTreeMap<u64, BTreeSet<u64>>,
    /// Calls to send again after the load.
    unresolved: Vec<Call>,
    pub reads: u64,
}

/// Runs a task over `users` until `shared.stop`, its calls logged as
/// client `label`'s; returns its model.
pub async fn task(
    client: ReadStatesClient,
    label: usize,
    users: Vec<u64>,
    seed: u64,
    first_id: u64,
    shared: Arc<Shared>,
) -> Model {
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let mut next_id = first_id;
    let mut next = |rng: &mut Rng| {
        next_id += 1 + rng.below(3);
        next_id
    };
    while !shared.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(PACE).await;
        let user = users[rng.below(users.len() as u64) as usize];
        let channel = 1 + rng.below(CHANNELS);
        let call = match rng.below(20) {
            0..=6 => Call::Ack(AckRequest {
                user_id: user,
                channel_id: channel,
                message_id: next(&mut rng),
                ..Default::default()
            }),
            7..=9 => Call::BulkAck(BulkAckRequest {
                user_id: user,
                acks: (1..=CHANNELS)
                    .map(|channel_id| ChannelAck {
                        channel_id,
                        message_id: next(&mut rng),
                    })
                    .collect(),
            }),
            10..=11 => Call::Pins(AckPinsRequest {
                user_id: user,
                channel_id: 1,
                pin_timestamp_ms: next(&mut rng),
            }),
            12..=14 => Call::Mention(AddMentionsRequest {
                channel_id: MENTIONS,
                message_id: next(&mut rng),
                user_ids: rng.subset(&users),
                omit_read_states: rng.chance(50),
            }),
            _ => {
                model.read(&client, label, &shared, user, channel).await;
                continue;
            }
        };
        model.sent(&call);
        let at = Instant::now();
        let result = call.send(&client).await;
        shared.log(
            at,
            label,
            call.users(),
            call.method(),
            result.as_ref().err(),
        );
        match result {
            Ok(()) => model.answered(&call),
            Err(_) => model.unresolved.push(call),
        }
    }
    model
}

impl Model {
    fn sent(&mut self, call: &Call) {
        self.apply(call, |bounds, value| bounds.sent = bounds.sent.max(value));
        if let Call::Mention(request) = call {
            for user in &request.user_ids {
                let sent = self.mentions_sent.entry(*user).or_default();
                sent.insert(request.message_id);
            }
        }
    }

    fn answered(&mut self, call: &Call) {
        self.apply(call, |bounds, value| {
            bounds.answered = bounds.answered.max(value);
        });
        if let Call::Mention(request) = call {
            for user in &request.user_ids {
                let answered = self.mentions_answered.entry(*user).or_default();
                answered.insert(request.message_id);
            }
        }
    }

    fn apply(&mut self, call: &Call, update: impl Fn(&mut Bounds, u64)) {
        match call {
            Call::Ack(request) => update(
                self.acks
                    .entry((request.user_id, request.channel_id))
                    .or_default(),
                request.message_id,
            ),
            Call::BulkAck(request) => {
                for ack in &request.acks {
                    let bounds = self.acks.entry((request.user_id, ack.channel_id));
                    update(bounds.or_default(), ack.message_id);
                }
            }
            Call::Pins(request) => update(
                self.pins.entry(request.user_id).or_default(),
                request.pin_timestamp_ms,
            ),
            Call::Mention(_) => {}
        }
    }

    /// Reads a pair and checks it against the model: at least what was
    /// answered, at most what was sent.
    async fn read(
        &mut self,
        client: &ReadStatesClient,
        label: usize,
        shared: &Shared,
        user: u64,
        channel: u64,
    ) {
        let request = GetReadStateRequest {
            user_id: user,
            channel_id: channel,
        };
        let at = Instant::now();
        let result = client.get_read_state(request).await;
        let method = "GetReadState";
        shared.log(at, label, vec![user], method, result.as_ref().err());
        let Ok(answer) = result else {
            return;
        };
        let state = answer.read_state.unwrap();
        self.reads += 1;
        let acks = self.acks.get(&(user, channel)).copied().unwrap_or_default();
        assert!(
            (acks.answered..=acks.sent).contains(&state.last_message_id),
            "user {user} channel {channel} read last_message_id {}, outside {acks:?}",
            state.last_message_id
        );
        if channel == 1 {
            let pins = self.pins.get(&user).copied().unwrap_or_default();
            assert!(
                (pins.answered..=pins.sent).contains(&state.last_pin_timestamp_ms),
                "user {user} read last_pin_timestamp_ms {}, outside {pins:?}",
                state.last_pin_timestamp_ms
            );
        }
    }

    /// Sends every failed call again (with `client`, a long deadline)
    /// until it succeeds; returns how many there were.
    pub async fn resolve(&mut self, client: &ReadStatesClient) -> usize {
        let unresolved = std::mem::take(&mut self.unresolved);
        for call in &unresolved {
            let mut tries = 0;
            while let Err(status) = call.send(client).await {
                tries += 1;
                assert!(tries < 20, "{call:?} kept failing: {status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.answered(call);
        }
        unresolved.len()
    }

    /// Checks every user's states, as `read_states` returns them, against
    /// the model: every pair at the highest ack sent, pins too, and one
    /// mention per message sent.
    pub async fn check_final(
        &self,
        mut read_states: impl AsyncFnMut(u64) -> BTreeMap<u64, (u64, u32, u64)>,
    ) {
        let users: BTreeSet<u64> = self
            .acks
            .keys()
            .map(|(user, _)| *user)
            .chain(self.pins.keys().copied())
            .chain(self.mentions_sent.keys().copied())
            .collect();
        for user in users {
            let states = read_states(user).await;
            for channel in 1..=CHANNELS {
                let acked = self.acks.get(&(user, channel)).map_or(0, |b| b.sent);
                let found = states.get(&channel).map_or(0, |state| state.0);
                assert_eq!(
                    found, acked,
                    "user {user} channel {channel}: last_message_id"
                );
            }
            let pinned = self.pins.get(&user).map_or(0, |b| b.sent);
            let found = states.get(&1).map_or(0, |state| state.2);
            assert_eq!(found, pinned, "user {user}: last_pin_timestamp_ms");
            let mentioned = self.mentions_sent.get(&user).map_or(0, BTreeSet::len);
            let found = states.get(&MENTIONS).map_or(0, |state| state.1);
            assert_eq!(
                found as usize, mentioned,
                "user {user}: mention_count, one per message"
            );
        }
    }
}

/// Returns `user`'s states through `client`: per channel, (last message,
/// mention count, last pin).
pub async fn states_via(client: &ReadStatesClient, user: u64) -> BTreeMap<u64, (u64, u32, u64)> {
    let all = client
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: user,
            since_version: None,
        })
        .await
        .unwrap();
    all.read_states
        .iter()
        .map(|state| {
            (
                state.channel_id,
                (
                    state.last_message_id,
                    state.mention_count,
                    state.last_pin_timestamp_ms,
                ),
            )
        })
        .collect()
}

/// An instance's restart: from its SIGTERM until the slots settled again.
#[derive(Debug, Clone)]
pub struct Restart {
    pub id: String,
    pub from: Instant,
    pub to: Instant,
}

/// How one client's calls fared over a rolling restart.
#[derive(Debug, Default)]
pub struct Fared {
    pub calls: usize,
    pub failed: usize,
    /// Failed without the retries they should have had.
    pub unretried: usize,
    /// Per restart: the failed calls, and the calls sent in its window that
    /// named a user of the restarting instance.
    pub per_restart: Vec<(usize, usize)>,
    pub by_kind: BTreeMap<(&'static str, String), usize>,
    /// Failed calls sent outside every restart's window.
    pub outside: Vec<Sent>,
    /// Failed calls in a restart's window naming no user of the
    /// restarting instance.
    pub elsewhere: Vec<Sent>,
}

/// Returns how client `client`'s calls in `log` fared over `restarts`,
/// each widened by `slack` either side; `owner_of` names a user's owner
/// (the same before and after each restart).
pub fn fared(
    log: &[Sent],
    client: usize,
    restarts: &[Restart],
    slack: Duration,
    owner_of: impl Fn(u64) -> String,
) -> Fared {
    let mut fared = Fared {
        per_restart: vec![(0, 0); restarts.len()],
        ..Fared::default()
    };
    // The restart a call met: one whose window holds it and whose
    // instance owns one of its users (windows widened by the slack may
    // overlap), else any whose window holds it.
    let met = |sent: &Sent| {
        let holds =
            |restart: &&Restart| sent.at + slack >= restart.from && sent.at <= restart.to + slack;
        let owns = |restart: &&Restart| sent.users.iter().any(|&u| owner_of(u) == restart.id);
        let position = |restart: &Restart| restarts.iter().position(|r| r.from == restart.from);
        match restarts.iter().filter(holds).find(owns) {
            Some(restart) => (position(restart), true),
            None => (restarts.iter().find(holds).and_then(position), false),
        }
    };
    for sent in log.iter().filter(|sent| sent.client == client) {
        fared.calls += 1;
        let (window, its_users) = met(sent);
        if let (Some(window), true) = (window, its_users) {
            fared.per_restart[window].1 += 1;
        }
        let Some(code) = sent.failed else {
            continue;
        };
        fared.failed += 1;
        fared.unretried += usize::from(sent.unretried);
        *fared
            .by_kind
            .entry((sent.method, format!("{code:?}")))
            .or_default() += 1;
        match window {
            None => fared.outside.push(sent.clone()),
            Some(_) if !its_users => fared.elsewhere.push(sent.clone()),
            Some(window) => fared.per_restart[window].0 += 1,
        }
    }
    fared
}

/// Describes failed calls: each one's method, users and their owners, code
/// and message, and when it was sent against each restart's SIGTERM.
pub fn describe(failed: &[Sent], restarts: &[Restart], owner_of: impl Fn(u64) -> String) -> String {
    let lines: Vec<String> = failed
        .iter()
        .map(|sent| {
            let users: Vec<String> = sent
                .users
                .iter()
                .map(|&user| format!("{user} (of {})", owner_of(user)))
                .collect();
            let offsets: Vec<String> = restarts
                .iter()
                .map(|restart| {
                    let after = sent.at.saturating_duration_since(restart.from);
                    let before = restart.from.saturating_duration_since(sent.at);
                    format!("{}: {after:?} after / {before:?} before", restart.id)
                })
                .collect();
            format!(
                "{} of {users:?}: {:?} {:?}, sent vs restarts {offsets:?}",
                sent.method, sent.failed, sent.detail
            )
        })
        .collect();
    lines.join("\n")
}
