//! The crash loop's clients: each owns a few users and makes a paced mix
//! of every kind of change on them (acks, bulk acks, mention fan-outs and
//! removals, pin acks, deletes), recording each call per pair with the
//! moment it was acknowledged, and checking the versions answered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use readstates::api::proto::{
    AckPinsRequest, AddMentionsRequest, BulkAckRequest, ChannelAck, DeleteReadStatesRequest,
    ReadState as ProtoState, RemoveMentionsRequest,
};
use tonic::Request;

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

    /// Makes one call and records it per pair; returns false once a call
    /// gets no answer (the client then stops: what follows an unknown
    /// outcome could not be ordered).
    pub async fn step(&mut self, client: &mut Client) -> bool {
        let kind = self.rng.below(100);
        // Whether the call asked for no states back (AddMentions with
        // omit_read_states: mentions of users not cached are deferred).
        let mut omitted = false;
        let (pairs, ops, answer) = match kind {
            0..30 => {
                let (user, channel, message) = (self.user(), self.channel(), self.message());
                let answer = client
                    .ack(timed(ack_request(user, channel, message)))
                    .await
                    .map(|response| response.into_inner().read_state.into_iter().collect());
                (vec![(user, channel)], vec![Op::Ack(message)], answer)
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
                let answer = client
                    .bulk_ack(timed(BulkAckRequest {
                        user_id: user,
                        acks,
                    }))
                    .await
                    .map(|response| response.into_inner().read_states);
                let pairs = channels.iter().map(|&channel| (user, channel)).collect();
                (pairs, messages.into_iter().map(Op::Ack).collect(), answer)
            }
            40..75 => {
                let (channel, message) = (self.channel(), self.message());
                let mut users: Vec<u64> = (0..1 + self.rng.below(3)).map(|_| self.user()).collect();
                users.sort_unstable();
                users.dedup();
                let add = kind < 65;
                let answer = if add {
                    omitted = self.rng.below(2) == 0;
                    let request = AddMentionsRequest {
                        channel_id: channel,
                        message_id: message,
                        user_ids: users.clone(),
                        omit_read_states: omitted,
                    };
                    client
                        .add_mentions(timed(request))
                        .await
                        .map(|response| response.into_inner().read_states)
                } else {
                    let request = RemoveMentionsRequest {
                        channel_id: channel,
                        message_id: message,
                        user_ids: users.clone(),
                    };
                    client
                        .remove_mentions(timed(request))
                        .await
                        .map(|response| response.into_inner().read_states)
                };
                let op = if add {
                    Op::AddMention(message)
                } else {
                    Op::RemoveMention(message)
                };
                let pairs = users.iter().map(|&user| (user, channel)).collect();
                (pairs, vec![op; users.len()], answer)
            }
            75..92 => {
                let (user, channel) = (self.user(), self.channel());
                let timestamp = self.message() * 1_000;
                let request = AckPinsRequest {
                    user_id: user,
                    channel_id: channel,
                    pin_timestamp_ms: timestamp,
                };
                let answer = client
                    .ack_pins(timed(request))
                    .await
                    .map(|response| response.into_inner().read_state.into_iter().collect());
                (vec![(user, channel)], vec![Op::AckPins(timestamp)], answer)
            }
            _ => {
                let (user, channel) = (self.user(), self.channel());
                let request = DeleteReadStatesRequest {
                    user_id: user,
                    channel_ids: vec![channel],
                };
                let answer = client
                    .delete_read_states(timed(request))
                    .await
                    .map(|response| response.into_inner().read_states);
                (vec![(user, channel)], vec![Op::Delete], answer)
            }
        };
        let acked_at = Instant::now();
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
        // Paced, so the load leaves the store writer some CPU on a small
        // machine: the loop checks durability, not throughput.
        tokio::time::sleep(Duration::from_millis(1)).await;
        true
    }
}

/// A request with the hang guard as its gRPC deadline.
fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}
