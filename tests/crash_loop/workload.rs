//! The crash loop's clients: each owns a few users and makes a paced mix
//! of every kind of change on them (acks, bulk acks, mention fan-outs and
//! removals, pin acks, deletes), recording each call per pair with the
//! moment it was acknowledged, and checking the versions answered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use readstates::api::proto::{
    AckPinsRequest, AddMentionsRequest, BulkAckRequest, ChannelAck, DeleteReadStatesRequest,
    ReadState as ProtoState, RemoveMentionsRequest,
};
use tonic::{Request, Status};

use super::common::{Client, ack_request};
use super::model::{Observed, Op, Outcome, Rng};
use super::{CALL_TIMEOUT, CHANNELS, users_of};

/// What the API answered of a state, as the model sees it.
pub fn observed(state: &ProtoState) -> Observed {
    Observed {
        last_message_id: state.last_message_id,
        mention_count: state.mention_count,
        last_pin_timestamp_ms: state.last_pin_timestamp_ms,
    }
}

/// One client's calls: a mix of acks, bulk acks, mention fan-outs and
/// removals, pin acks and deletes on the users it owns.
pub struct Workload {
    users: Vec<u64>,
    rng: Rng,
    /// Message ids grow as the run goes on, as in a live channel.
    message: u64,
    /// Each pair's highest version answered so far, across restarts.
    newest: HashMap<(u64, u64), u64>,
    /// Each pair's version in the running server, as last read or answered.
    current: HashMap<(u64, u64), u64>,
    /// Pairs whose version in the running server is not known (a crash may
    /// have lost their latest changes): their next answer is taken as is.
    unknown: HashSet<(u64, u64)>,
    pub calls: Vec<((u64, u64), Op, Outcome)>,
}

impl Workload {
    pub fn new(index: u64, seed: u64) -> Self {
        Self {
            users: users_of(index).collect(),
            rng: Rng::new(seed ^ (index + 1).wrapping_mul(0xA076_1D64_78BD_642F)),
            message: 1_000,
            newest: HashMap::new(),
            current: HashMap::new(),
            unknown: HashSet::new(),
            calls: Vec::new(),
        }
    }

    fn user(&mut self) -> u64 {
        self.users[self.rng.below(self.users.len() as u64) as usize]
    }

    fn channel(&mut self) -> u64 {
        1 + self.rng.below(CHANNELS)
    }

    /// A message id near the newest: sometimes older than a state's last
    /// ack (a stale ack, a mention that does not count), sometimes newer.
    fn message(&mut self) -> u64 {
        self.message += 1;
        self.message - 20 + self.rng.below(30)
    }

    /// Checks an answered version: the pair's current one (the call changed
    /// nothing), 0 for a pair that reads as never written, or else above
    /// every version answered before, restarts included (a restarted server
    /// never reissues a version).
    fn check_version(&mut self, pair: (u64, u64), version: u64, seen: Observed) {
        if self.unknown.remove(&pair) {
            self.current.insert(pair, version);
            let newest = self.newest.entry(pair).or_default();
            *newest = version.max(*newest);
            return;
        }
        let current = self.current.get(&pair).copied().unwrap_or(0);
        let newest = self.newest.get(&pair).copied().unwrap_or(0);
        let unchanged = version == current || (version == 0 && seen == Observed::default());
        assert!(
            unchanged || version > newest.max(current),
            "{pair:?}: version {version} answered after {newest} (current {current})"
        );
        self.current.insert(pair, version);
        self.newest.insert(pair, version.max(newest));
    }

    /// Takes the versions read back after a restart as the current ones.
    #[allow(dead_code)] // the crash loop's
    pub fn restarted(&mut self, stored: &HashMap<(u64, u64), (Observed, u64)>) {
        for user in &self.users {
            for channel in 1..=CHANNELS {
                let version = stored
                    .get(&(*user, channel))
                    .map_or(0, |(_, version)| *version);
                self.current.insert((*user, channel), version);
            }
        }
    }

    /// Forgets the running server's versions of `pairs`: a crash may have
    /// lost their latest changes, so their next answer may carry an older
    /// version than the last one answered.
    #[allow(dead_code)] // the cluster model's
    pub fn forget(&mut self, pairs: impl IntoIterator<Item = (u64, u64)>) {
        for pair in pairs {
            if self.users.contains(&pair.0) {
                self.unknown.insert(pair);
            }
        }
    }

    /// Makes one call and records it per pair; returns false once a call
    /// gets no answer (the client then stops: what follows an unknown
    /// outcome could not be ordered).
    #[allow(dead_code)] // the crash loop's
    pub async fn step(&mut self, client: &mut Client) -> bool {
        let call = self.next_call();
        let answer = call.send(client).await;
        self.record(call, answer)
    }

    /// Draws the next call: a mix of acks, bulk acks, mention fan-outs and
    /// removals, pin acks and deletes on this client's users.
    pub fn next_call(&mut self) -> Call {
        let kind = self.rng.below(100);
        let (pairs, ops, request) = match kind {
            0..30 => {
                let (user, channel, message) = (self.user(), self.channel(), self.message());
                let request = Requested::Ack(ack_request(user, channel, message));
                (vec![(user, channel)], vec![Op::Ack(message)], request)
            }
            30..40 => {
                let user = self.user();
                let (first, second) = (self.channel(), self.channel());
                let channels: Vec<u64> = if first == second {
                    vec![first]
                } else {
                    vec![first, second]
                };
                let messages: Vec<u64> = channels.iter().map(|_| self.message()).collect();
                let acks = channels
                    .iter()
                    .zip(&messages)
                    .map(|(&channel_id, &message_id)| ChannelAck {
                        channel_id,
                        message_id,
                    })
                    .collect();
                let request = Requested::BulkAck(BulkAckRequest {
                    user_id: user,
                    acks,
                });
                let pairs = channels.iter().map(|&channel| (user, channel)).collect();
                (pairs, messages.into_iter().map(Op::Ack).collect(), request)
            }
            40..75 => {
                let (channel, message) = (self.channel(), self.message());
                let mut users: Vec<u64> = (0..1 + self.rng.below(3)).map(|_| self.user()).collect();
                users.sort_unstable();
                users.dedup();
                let (op, request) = if kind < 65 {
                    // With omit_read_states, mentions of users not cached
                    // are deferred.
                    let request = AddMentionsRequest {
                        channel_id: channel,
                        message_id: message,
                        user_ids: users.clone(),
                        omit_read_states: self.rng.below(2) == 0,
                    };
                    (Op::AddMention(message), Requested::AddMentions(request))
                } else {
                    let request = RemoveMentionsRequest {
                        channel_id: channel,
                        message_id: message,
                        user_ids: users.clone(),
                    };
                    (
                        Op::RemoveMention(message),
                        Requested::RemoveMentions(request),
                    )
                };
                let pairs = users.iter().map(|&user| (user, channel)).collect();
                (pairs, vec![op; users.len()], request)
            }
            75..92 => {
                let (user, channel) = (self.user(), self.channel());
                let timestamp = self.message() * 1_000;
                let request = Requested::AckPins(AckPinsRequest {
                    user_id: user,
                    channel_id: channel,
                    pin_timestamp_ms: timestamp,
                });
                (vec![(user, channel)], vec![Op::AckPins(timestamp)], request)
            }
            _ => {
                let (user, channel) = (self.user(), self.channel());
                let request = Requested::Delete(DeleteReadStatesRequest {
                    user_id: user,
                    channel_ids: vec![channel],
                });
                (vec![(user, channel)], vec![Op::Delete], request)
            }
        };
        Call {
            pairs,
            ops,
            request,
        }
    }

    /// Records `call`'s answer per pair, checking the states answered;
    /// returns false when it got none.
    pub fn record(&mut self, call: Call, answer: Result<Vec<ProtoState>, Status>) -> bool {
        let acked_at = Instant::now();
        let omitted = call.omits_states();
        let Call { pairs, ops, .. } = call;
        let states = match answer {
            Ok(states) => states,
            Err(status) => {
                assert_ne!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "the workload sent a bad call: {status}"
                );
                for (pair, op) in pairs.into_iter().zip(ops) {
                    self.calls.push((pair, op, Outcome::Unknown));
                }
                return false;
            }
        };
        if omitted {
            assert!(states.is_empty(), "states answered though omitted");
            for (pair, op) in pairs.into_iter().zip(ops) {
                self.calls.push((
                    pair,
                    op,
                    Outcome::Acked {
                        at: acked_at,
                        seen: None,
                    },
                ));
            }
        } else {
            for (pair, op) in pairs.into_iter().zip(ops) {
                let state = states
                    .iter()
                    .find(|state| state.user_id == pair.0 && state.channel_id == pair.1)
                    .unwrap_or_else(|| panic!("no state of {pair:?} in the answer to {op:?}"));
                let seen = observed(state);
                self.check_version(pair, state.version, seen);
                self.calls.push((
                    pair,
                    op,
                    Outcome::Acked {
                        at: acked_at,
                        seen: Some(seen),
                    },
                ));
            }
        }
        true
    }
}

/// One call of the workload: its request and the change it makes to each
/// pair it names.
pub struct Call {
    pub pairs: Vec<(u64, u64)>,
    pub ops: Vec<Op>,
    request: Requested,
}

enum Requested {
    Ack(readstates::api::proto::AckRequest),
    BulkAck(BulkAckRequest),
    AddMentions(AddMentionsRequest),
    RemoveMentions(RemoveMentionsRequest),
    AckPins(AckPinsRequest),
    Delete(DeleteReadStatesRequest),
}

impl Call {
    fn omits_states(&self) -> bool {
        matches!(&self.request, Requested::AddMentions(request) if request.omit_read_states)
    }

    /// Sends the call (it may be sent again: every change is idempotent)
    /// and returns the states answered.
    pub async fn send(&self, client: &mut Client) -> Result<Vec<ProtoState>, Status> {
        let answer = match &self.request {
            Requested::Ack(request) => client
                .ack(timed(*request))
                .await
                .map(|response| response.into_inner().read_state.into_iter().collect()),
            Requested::BulkAck(request) => client
                .bulk_ack(timed(request.clone()))
                .await
                .map(|response| response.into_inner().read_states),
            Requested::AddMentions(request) => client
                .add_mentions(timed(request.clone()))
                .await
                .map(|response| response.into_inner().read_states),
            Requested::RemoveMentions(request) => client
                .remove_mentions(timed(request.clone()))
                .await
                .map(|response| response.into_inner().read_states),
            Requested::AckPins(request) => client
                .ack_pins(timed(*request))
                .await
                .map(|response| response.into_inner().read_state.into_iter().collect()),
            Requested::Delete(request) => client
                .delete_read_states(timed(request.clone()))
                .await
                .map(|response| response.into_inner().read_states),
        };
        // Paced, so the load leaves the store writer some CPU on a small
        // machine: the loops check durability, not throughput.
        tokio::time::sleep(Duration::from_millis(1)).await;
        answer
    }
}

/// A request with the hang guard as its gRPC deadline.
fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}
