//! Following users over `WatchReadStates` from a test: a copy of each
//! user's states built only from what the service sends, the checks of a
//! stream's order that the copy depends on, and the comparison of a copy
//! with the service's own answer (README, "Following changes").

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::watch_ended::Reason;
use readstates::api::proto::watch_event::Event;
use readstates::api::proto::{
    DeletedReadState, GetUserReadStatesRequest, GetUserReadStatesResponse, ReadState, WatchRequest,
    WatchResponse, WatchSubscription,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::Client;

/// Violations kept per follower; past it only the count grows, so that a
/// broken run does not fill memory.
const KEPT_VIOLATIONS: usize = 50;

/// A copy of one user's states (channel → state), exact at `version`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserCopy {
    pub states: BTreeMap<u64, ReadState>,
    pub version: u64,
}

impl UserCopy {
    /// Applies a catch-up or a `GetUserReadStates` answer: a reset replaces
    /// the copy; a delta upserts the changed states and drops the deleted
    /// pairs.
    pub fn apply_delta(&mut self, delta: &GetUserReadStatesResponse) {
        if delta.reset {
            self.states.clear();
        }
        for state in &delta.read_states {
            self.states.insert(state.channel_id, *state);
        }
        for deleted in &delta.deleted {
            self.states.remove(&deleted.channel_id);
        }
        self.version = delta.version;
    }

    /// Applies a `changed` event.
    pub fn apply_changed(&mut self, state: &ReadState) {
        self.states.insert(state.channel_id, *state);
        self.version = state.version;
    }

    /// Applies a `deleted` event.
    pub fn apply_deleted(&mut self, deleted: &DeletedReadState) {
        self.states.remove(&deleted.channel_id);
        self.version = deleted.version;
    }

    /// Returns how the copy differs from `truth`, a full answer of
    /// `GetUserReadStates`, or `None` when it is the same: the same
    /// version, the same channels, every field of every state equal.
    pub fn differences(&self, truth: &GetUserReadStatesResponse) -> Option<String> {
        let mut differences = Vec::new();
        if self.version != truth.version {
            differences.push(format!(
                "version {} where the service has {}",
                self.version, truth.version
            ));
        }
        let truth_states: BTreeMap<u64, ReadState> = truth
            .read_states
            .iter()
            .map(|state| (state.channel_id, *state))
            .collect();
        for (channel, state) in &self.states {
            match truth_states.get(channel) {
                None => differences.push(format!("holds deleted channel {channel}: {state:?}")),
                Some(truth_state) if truth_state != state => differences.push(format!(
                    "channel {channel}: {state:?} where the service has {truth_state:?}"
                )),
                Some(_) => {}
            }
        }
        for (channel, state) in &truth_states {
            if !self.states.contains_key(channel) {
                differences.push(format!("lacks channel {channel}: {state:?}"));
            }
        }
        (!differences.is_empty()).then(|| differences.join("; "))
    }
}

/// A `subscribe` request for `(user, since_version)` pairs.
pub fn subscribe(users: impl IntoIterator<Item = (u64, u64)>) -> WatchRequest {
    WatchRequest {
        subscribe: users
            .into_iter()
            .map(|(user_id, since_version)| WatchSubscription {
                user_id,
                since_version,
            })
            .collect(),
        unsubscribe: Vec::new(),
    }
}

/// An `unsubscribe` request.
pub fn unsubscribe(users: impl IntoIterator<Item = u64>) -> WatchRequest {
    WatchRequest {
        subscribe: Vec::new(),
        unsubscribe: users.into_iter().collect(),
    }
}

/// One open `WatchReadStates` stream: its requests, and its responses.
pub struct WatchStream {
    pub requests: mpsc::Sender<WatchRequest>,
    pub responses: Streaming<WatchResponse>,
}

/// Opens a `WatchReadStates` stream on `client`.
pub async fn open_watch(client: &mut Client) -> Result<WatchStream, Status> {
    // The server reads requests as they come; a few in flight are plenty.
    let (requests, receiver) = mpsc::channel(16);
    let responses = client
        .watch_read_states(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok(WatchStream {
        requests,
        responses,
    })
}

/// Connects a client to `addr` once, without retrying: a follower whose
/// server is restarting tries again itself.
pub async fn try_connect(addr: SocketAddr) -> Option<Client> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(2));
    endpoint.connect().await.ok().map(ReadStatesClient::new)
}

/// Reads every state of `user` (no `since_version`): the truth a copy is
/// compared with.
pub async fn truth(client: &mut Client, user: u64) -> GetUserReadStatesResponse {
    client
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: user,
            since_version: None,
        })
        .await
        .unwrap_or_else(|status| panic!("GetUserReadStates of user {user}: {status}"))
        .into_inner()
}

/// What one user looks like on the current stream.
#[derive(Debug, Clone, Copy)]
struct OnStream {
    /// The index of the message whose change last set the copy's version:
    /// the changes of one call share a version and travel in one message,
    /// so only that message may repeat the version.
    version_set_by: Option<u64>,
}

/// What a follower received, in numbers.
#[derive(Debug, Clone, Default)]
pub struct FollowCounts {
    pub messages: u64,
    pub events: u64,
    pub catch_ups: u64,
    pub resets: u64,
    /// Resets whose version was below the copy's (the service's version of
    /// the user went backwards).
    pub backward_resets: u64,
    pub changed: u64,
    pub deleted: u64,
    /// `ended` events by reason (the proto enum's value).
    pub ended: BTreeMap<i32, u64>,
}

/// The copies one subscriber keeps, built only from the events of its
/// streams, and the checks those events must pass for the copies to stay
/// exact:
/// - on each stream, a user's first event is a catch-up, and after an
///   `ended` the next is a catch-up again;
/// - a `changed` or `deleted` event has a version above the copy's, or
///   the same version within the one message that carries its call's
///   changes (no duplicate, no reordering);
/// - a `deleted` event names a channel the copy holds (the copy is exact
///   at its version, and deleting a pair that reads as zeros changes
///   nothing);
/// - a catch-up never takes the copy back to an older version (but see
///   `allow_backward_resets`), and holds nothing newer than its own
///   version;
/// - an `ended` event's resume version is the copy's version: the last
///   version the stream sent.
#[derive(Debug, Default)]
pub struct Follower {
    /// Every user ever followed, with its copy (kept across
    /// unsubscriptions and streams: its version is where to resume).
    pub copies: HashMap<u64, UserCopy>,
    /// Users caught up on the current stream and not ended since.
    on_stream: HashMap<u64, OnStream>,
    pub counts: FollowCounts,
    /// Catch-ups received per user, all streams together.
    pub catch_ups_by_user: HashMap<u64, u64>,
    /// A reset may answer an older version than the copy's: where
    /// deletion markers are purged, a reloaded user's version may be the
    /// version of its newest row left, below that of a purged deletion.
    pub allow_backward_resets: bool,
    pub violations: Vec<String>,
    pub violation_count: usize,
}

impl Follower {
    /// Starts over on a new stream: nobody is caught up on it yet.
    pub fn new_stream(&mut self) {
        self.on_stream.clear();
    }

    /// Returns whether `user` is caught up on the current stream (its
    /// copy follows the user's changes).
    pub fn is_caught_up(&self, user: u64) -> bool {
        self.on_stream.contains_key(&user)
    }

    /// The version of `user`'s copy (0 for none): where to resume.
    pub fn version_of(&self, user: u64) -> u64 {
        self.copies.get(&user).map_or(0, |copy| copy.version)
    }

    /// Applies one message of the current stream; returns the users whose
    /// subscription it ended.
    pub fn receive(&mut self, message: &WatchResponse) -> Vec<(u64, Reason)> {
        self.counts.messages += 1;
        let index = self.counts.messages;
        let mut ended = Vec::new();
        for event in &message.events {
            self.counts.events += 1;
            let user = event.user_id;
            match &event.event {
                Some(Event::CatchUp(delta)) => self.catch_up(user, delta),
                Some(Event::Changed(state)) => {
                    self.counts.changed += 1;
                    if state.user_id != user {
                        self.violation(format!("user {user}: changed event of {state:?}"));
                    }
                    if self.check_order(user, state.version, index, "changed") {
                        self.copies.entry(user).or_default().apply_changed(state);
                    }
                }
                Some(Event::Deleted(deleted)) => {
                    self.counts.deleted += 1;
                    if deleted.user_id != user {
                        self.violation(format!("user {user}: deleted event of {deleted:?}"));
                    }
                    if self.check_order(user, deleted.version, index, "deleted") {
                        let copy = self.copies.entry(user).or_default();
                        let held = copy.states.contains_key(&deleted.channel_id);
                        copy.apply_deleted(deleted);
                        if !held {
                            self.violation(format!(
                                "user {user}: deletion of channel {} at version {}, which the \
                                 copy did not hold",
                                deleted.channel_id, deleted.version
                            ));
                        }
                    }
                }
                Some(Event::Ended(end)) => {
                    *self.counts.ended.entry(end.reason).or_default() += 1;
                    if self.on_stream.remove(&user).is_some() {
                        let version = self.version_of(user);
                        if end.resume_version != version {
                            self.violation(format!(
                                "user {user}: ended with resume version {} where the last \
                                 version sent was {version}",
                                end.resume_version
                            ));
                        }
                    }
                    let reason = Reason::try_from(end.reason).unwrap_or(Reason::Unspecified);
                    ended.push((user, reason));
                }
                None => self.violation(format!("user {user}: an event with nothing in it")),
            }
        }
        ended
    }

    fn catch_up(&mut self, user: u64, delta: &GetUserReadStatesResponse) {
        self.counts.catch_ups += 1;
        *self.catch_ups_by_user.entry(user).or_default() += 1;
        let copy_version = self.version_of(user);
        if delta.reset {
            self.counts.resets += 1;
            if delta.version < copy_version {
                self.counts.backward_resets += 1;
            }
            if !delta.deleted.is_empty() {
                self.violation(format!("user {user}: a reset with deletions: {delta:?}"));
            }
        }
        if delta.version < copy_version && !(delta.reset && self.allow_backward_resets) {
            self.violation(format!(
                "user {user}: catch-up to version {} below the copy's {copy_version} (reset: {})",
                delta.version, delta.reset
            ));
        }
        let newest = delta
            .read_states
            .iter()
            .map(|state| state.version)
            .chain(delta.deleted.iter().map(|deleted| deleted.version))
            .max()
            .unwrap_or(0);
        if newest > delta.version {
            self.violation(format!(
                "user {user}: catch-up at version {} holds a change at {newest}",
                delta.version
            ));
        }
        if delta.read_states.iter().any(|state| state.user_id != user)
            || delta.deleted.iter().any(|deleted| deleted.user_id != user)
        {
            self.violation(format!(
                "user {user}: catch-up holds another user: {delta:?}"
            ));
        }
        self.copies.entry(user).or_default().apply_delta(delta);
        self.on_stream.insert(
            user,
            OnStream {
                version_set_by: None,
            },
        );
    }

    /// Checks a change's place in the user's order; returns whether to
    /// apply it.
    fn check_order(&mut self, user: u64, version: u64, index: u64, kind: &str) -> bool {
        let copy_version = self.version_of(user);
        let Some(on_stream) = self.on_stream.get_mut(&user) else {
            self.violation(format!(
                "user {user}: {kind} event at version {version} before any catch-up on this \
                 stream (or after its end)"
            ));
            return false;
        };
        let same_call = version == copy_version && on_stream.version_set_by == Some(index);
        if version <= copy_version && !same_call {
            self.violation(format!(
                "user {user}: {kind} event at version {version} after version {copy_version} \
                 (a duplicate, or out of order)"
            ));
            return false;
        }
        on_stream.version_set_by = Some(index);
        true
    }

    /// Records a broken rule.
    pub fn violation(&mut self, violation: String) {
        self.violation_count += 1;
        if self.violations.len() < KEPT_VIOLATIONS {
            self.violations.push(violation);
        }
    }
}

/// Returns what is wrong with `answer`, the answer of
/// `GetUserReadStates(user, since_version = since)` to a client whose copy
/// is at `copy_version`: a delta holds only changes after `since` and up
/// to its own version; a full answer (`since` 0) is never a reset; a
/// reset has no deletions and, unless `allow_backward_resets`, never goes
/// below the copy's version.
pub fn delta_violations(
    user: u64,
    since: u64,
    copy_version: u64,
    answer: &GetUserReadStatesResponse,
    allow_backward_resets: bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut violation =
        |text: String| violations.push(format!("user {user} since {since}: {text}"));
    if since == 0 && answer.reset {
        violation("a full read answered a reset".to_owned());
    }
    if answer.reset {
        if !answer.deleted.is_empty() {
            violation(format!("a reset with deletions: {answer:?}"));
        }
        if answer.version < copy_version && !allow_backward_resets {
            violation(format!(
                "a reset to version {} below the copy's {copy_version}",
                answer.version
            ));
        }
    } else {
        if answer.version < since {
            violation(format!(
                "a delta to version {} below its since",
                answer.version
            ));
        }
        for state in &answer.read_states {
            if state.version <= since || state.version > answer.version {
                violation(format!(
                    "a delta to version {} holds {state:?}",
                    answer.version
                ));
            }
        }
        for deleted in &answer.deleted {
            if deleted.version <= since || deleted.version > answer.version {
                violation(format!(
                    "a delta to version {} holds the deletion {deleted:?}",
                    answer.version
                ));
            }
        }
    }
    if answer.read_states.iter().any(|state| state.user_id != user)
        || answer.deleted.iter().any(|deleted| deleted.user_id != user)
    {
        violation(format!("an answer holding another user: {answer:?}"));
    }
    violations
}
