//! The watch model's workload: one client making a seeded mix of every
//! call (acks, manual acks, bulk acks, mention fan-outs with and without
//! their states, mention removals, pin acks, deletes, and reads) over a
//! small key space, so that pairs are deleted and created again all the
//! time; and the reference model of each pair, written from
//! ARCHITECTURE.md §1.2, that every answer is checked against.
//!
//! The calls are made one at a time, so the model is exact: a deferred
//! mention (`omit_read_states`) is merged before anything else touches its
//! user, which gives the same result as applying it at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use readstates::api::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    DeleteReadStatesRequest, GetReadStateRequest, GetUserReadStatesResponse, ReadState,
    RemoveMentionsRequest,
};
use tonic::Request;

use super::common::Client;
use super::common::watch::truth;
use super::{CHANNELS, USERS};

/// A hang guard per call; the server answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A xorshift64* generator: small, seeded, and the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero.
        Self((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// A user of the key space.
    pub fn user(&mut self) -> u64 {
        1 + self.below(USERS)
    }

    /// A channel of the key space.
    pub fn channel(&mut self) -> u64 {
        1 + self.below(CHANNELS)
    }

    /// `count` distinct draws of `draw` (fewer if it keeps repeating).
    fn distinct(&mut self, count: u64, draw: fn(&mut Self) -> u64) -> Vec<u64> {
        let mut drawn: Vec<u64> = (0..count).map(|_| draw(self)).collect();
        drawn.sort_unstable();
        drawn.dedup();
        drawn
    }
}

/// The fields of a state the calls change, as the API shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub last_message_id: u64,
    pub mention_count: u32,
    pub last_pin_timestamp_ms: u64,
}

impl Observed {
    pub fn of(state: &ReadState) -> Self {
        Self {
            last_message_id: state.last_message_id,
            mention_count: state.mention_count,
            last_pin_timestamp_ms: state.last_pin_timestamp_ms,
        }
    }
}

/// One change to one pair.
#[derive(Debug, Clone, Copy)]
enum Op {
    Ack(u64),
    Manual(u64, u32),
    AddMention(u64),
    RemoveMention(u64),
    AckPins(u64),
    Delete,
}

/// The model of one pair: mentions are known by message id, and `given`
/// is the count a manual ack set (cleared by the next forward ack).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PairModel {
    last_message_id: u64,
    counted: BTreeSet<u64>,
    given: u32,
    last_pin_timestamp_ms: u64,
}

impl PairModel {
    /// Applies `op` to the pair (`None`: reads as zeros, never written or
    /// deleted). A change that changes nothing leaves a deleted pair
    /// deleted; any other makes it live, starting from zeros.
    fn apply(pair: &mut Option<PairModel>, op: Op) {
        if let Op::Delete = op {
            *pair = None;
            return;
        }
        let before = pair.clone().unwrap_or_default();
        let mut after = before.clone();
        match op {
            Op::Ack(message_id) => {
                if message_id > after.last_message_id {
                    after.last_message_id = message_id;
                    after.counted.retain(|&id| id > message_id);
                    after.given = 0;
                }
            }
            Op::Manual(message_id, count) => {
                after.last_message_id = message_id;
                after.counted.clear();
                after.given = count;
            }
            Op::AddMention(message_id) => {
                if message_id > after.last_message_id {
                    after.counted.insert(message_id);
                }
            }
            Op::RemoveMention(message_id) => {
                after.counted.remove(&message_id);
            }
            Op::AckPins(timestamp) => {
                after.last_pin_timestamp_ms = after.last_pin_timestamp_ms.max(timestamp);
            }
            Op::Delete => unreachable!("handled above"),
        }
        if pair.is_some() || after != before {
            *pair = Some(after);
        }
    }

    fn observed(pair: Option<&PairModel>) -> Observed {
        pair.map_or_else(Observed::default, |pair| Observed {
            last_message_id: pair.last_message_id,
            mention_count: pair.counted.len() as u32 + pair.given,
            last_pin_timestamp_ms: pair.last_pin_timestamp_ms,
        })
    }
}

/// Calls made, by kind.
#[derive(Debug, Clone, Default)]
pub struct CallCounts {
    pub ack: u64,
    pub manual_ack: u64,
    pub bulk_ack: u64,
    pub add_mentions: u64,
    pub add_mentions_omitted: u64,
    pub remove_mentions: u64,
    pub ack_pins: u64,
    pub delete: u64,
    pub get_read_state: u64,
    pub get_user_read_states: u64,
}

impl CallCounts {
    pub fn total(&self) -> u64 {
        self.ack
            + self.manual_ack
            + self.bulk_ack
            + self.add_mentions
            + self.add_mentions_omitted
            + self.remove_mentions
            + self.ack_pins
            + self.delete
            + self.get_read_state
            + self.get_user_read_states
    }
}

/// The workload's client side: its draws, its model, its counts.
pub struct Workload {
    rng: Rng,
    /// Message ids grow as the run goes on, as in a live channel.
    message: u64,
    /// Pin timestamps grow too.
    pin: u64,
    /// Live pairs, by (user, channel); a pair not here reads as zeros.
    model: HashMap<(u64, u64), PairModel>,
    /// Recent mentions, so that removals often hit a counted one.
    recent_mentions: VecDeque<(u64, u64)>,
    pub counts: CallCounts,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            message: 1_000,
            pin: 1_700_000_000_000,
            model: HashMap::new(),
            recent_mentions: VecDeque::new(),
            counts: CallCounts::default(),
        }
    }

    /// A message id near the newest: sometimes older than a state's last
    /// ack (a stale ack, a mention that does not count), sometimes newer.
    fn message(&mut self) -> u64 {
        self.message += 1;
        self.message - 20 + self.rng.below(30)
    }

    fn apply(&mut self, pair: (u64, u64), op: Op) {
        let mut state = self.model.remove(&pair);
        PairModel::apply(&mut state, op);
        if let Some(state) = state {
            self.model.insert(pair, state);
        }
    }

    fn expected(&self, pair: (u64, u64)) -> Observed {
        PairModel::observed(self.model.get(&pair))
    }

    /// Checks a state answered for `pair` against the model.
    fn check(&self, pair: (u64, u64), state: &ReadState, call: &str) {
        assert_eq!(
            (state.user_id, state.channel_id),
            pair,
            "{call} answered another pair"
        );
        assert_eq!(
            Observed::of(state),
            self.expected(pair),
            "{call} answered {state:?} for {pair:?}; the model has {:?}",
            self.model.get(&pair)
        );
    }

    /// Checks a full `GetUserReadStates` answer against the model: the
    /// live pairs, and each one's fields.
    pub fn check_user(&self, user: u64, answer: &GetUserReadStatesResponse) {
        assert!(!answer.reset, "a full read of user {user} answered a reset");
        let answered: BTreeMap<u64, Observed> = answer
            .read_states
            .iter()
            .map(|state| (state.channel_id, Observed::of(state)))
            .collect();
        let modelled: BTreeMap<u64, Observed> = (1..=CHANNELS)
            .filter(|&channel| self.model.contains_key(&(user, channel)))
            .map(|channel| (channel, self.expected((user, channel))))
            .collect();
        assert_eq!(
            answered, modelled,
            "user {user}'s states differ from the model"
        );
    }

    /// Makes `count` calls, each checked against the model.
    pub async fn run(&mut self, client: &mut Client, count: usize) {
        for _ in 0..count {
            self.step(client).await;
        }
    }

    /// Makes one call drawn from the mix, and checks its answer.
    async fn step(&mut self, client: &mut Client) {
        let kind = self.rng.below(100);
        match kind {
            0..20 => self.ack(client).await,
            20..25 => self.manual_ack(client).await,
            25..35 => self.bulk_ack(client).await,
            35..55 => self.add_mentions(client).await,
            55..63 => self.remove_mentions(client).await,
            63..71 => self.ack_pins(client).await,
            71..83 => self.delete(client).await,
            83..92 => self.get_read_state(client).await,
            _ => {
                self.counts.get_user_read_states += 1;
                let user = self.rng.user();
                let answer = truth(client, user).await;
                self.check_user(user, &answer);
            }
        }
    }

    async fn ack(&mut self, client: &mut Client) {
        self.counts.ack += 1;
        let (user, channel, message) = (self.rng.user(), self.rng.channel(), self.message());
        let request = AckRequest {
            user_id: user,
            channel_id: channel,
            message_id: message,
            manual: false,
            mention_count: None,
        };
        let state = client.ack(timed(request)).await.expect("Ack");
        self.apply((user, channel), Op::Ack(message));
        let state = state.into_inner().read_state.expect("Ack's state");
        self.check((user, channel), &state, "Ack");
    }

    /// "Mark as unread": often backwards, with or without a count.
    async fn manual_ack(&mut self, client: &mut Client) {
        self.counts.manual_ack += 1;
        let (user, channel) = (self.rng.user(), self.rng.channel());
        let message = self.message() - self.rng.below(40);
        let mention_count = match self.rng.below(3) {
            0 => None,
            _ => Some(self.rng.below(4) as u32),
        };
        let request = AckRequest {
            user_id: user,
            channel_id: channel,
            message_id: message,
            manual: true,
            mention_count,
        };
        let state = client.ack(timed(request)).await.expect("manual Ack");
        self.apply(
            (user, channel),
            Op::Manual(message, mention_count.unwrap_or(0)),
        );
        let state = state.into_inner().read_state.expect("Ack's state");
        self.check((user, channel), &state, "manual Ack");
    }

    async fn bulk_ack(&mut self, client: &mut Client) {
        self.counts.bulk_ack += 1;
        let user = self.rng.user();
        let count = 1 + self.rng.below(3);
        let channels = self.rng.distinct(count, Rng::channel);
        let acks: Vec<ChannelAck> = channels
            .iter()
            .map(|&channel_id| ChannelAck {
                channel_id,
                message_id: self.message(),
            })
            .collect();
        let request = BulkAckRequest {
            user_id: user,
            acks: acks.clone(),
        };
        let states = client.bulk_ack(timed(request)).await.expect("BulkAck");
        for ack in &acks {
            self.apply((user, ack.channel_id), Op::Ack(ack.message_id));
        }
        let states = states.into_inner().read_states;
        assert_eq!(states.len(), acks.len(), "BulkAck answered {states:?}");
        for ack in &acks {
            let state = states
                .iter()
                .find(|state| state.channel_id == ack.channel_id)
                .unwrap_or_else(|| panic!("BulkAck answered no state of {ack:?}: {states:?}"));
            self.check((user, ack.channel_id), state, "BulkAck");
        }
    }

    async fn add_mentions(&mut self, client: &mut Client) {
        let (channel, message) = (self.rng.channel(), self.message());
        let count = 1 + self.rng.below(3);
        let users = self.rng.distinct(count, Rng::user);
        let omit_read_states = self.rng.below(2) == 0;
        if omit_read_states {
            self.counts.add_mentions_omitted += 1;
        } else {
            self.counts.add_mentions += 1;
        }
        let request = AddMentionsRequest {
            channel_id: channel,
            message_id: message,
            user_ids: users.clone(),
            omit_read_states,
        };
        let states = client
            .add_mentions(timed(request))
            .await
            .expect("AddMentions");
        for &user in &users {
            self.apply((user, channel), Op::AddMention(message));
        }
        self.recent_mentions.push_back((channel, message));
        if self.recent_mentions.len() > 32 {
            self.recent_mentions.pop_front();
        }
        let states = states.into_inner().read_states;
        if omit_read_states {
            assert!(states.is_empty(), "states answered though omitted");
            return;
        }
        assert_eq!(states.len(), users.len(), "AddMentions answered {states:?}");
        for (&user, state) in users.iter().zip(&states) {
            self.check((user, channel), state, "AddMentions");
        }
    }

    async fn remove_mentions(&mut self, client: &mut Client) {
        self.counts.remove_mentions += 1;
        let recent = self.recent_mentions.len() as u64;
        let (channel, message) = if recent > 0 && self.rng.below(4) != 0 {
            self.recent_mentions[self.rng.below(recent) as usize]
        } else {
            (self.rng.channel(), self.message())
        };
        let count = 1 + self.rng.below(3);
        let users = self.rng.distinct(count, Rng::user);
        let request = RemoveMentionsRequest {
            channel_id: channel,
            message_id: message,
            user_ids: users.clone(),
        };
        let states = client
            .remove_mentions(timed(request))
            .await
            .expect("RemoveMentions");
        for &user in &users {
            self.apply((user, channel), Op::RemoveMention(message));
        }
        let states = states.into_inner().read_states;
        assert_eq!(
            states.len(),
            users.len(),
            "RemoveMentions answered {states:?}"
        );
        for (&user, state) in users.iter().zip(&states) {
            self.check((user, channel), state, "RemoveMentions");
        }
    }

    /// Changes every user once: a pin ack newer than any before.
    pub async fn touch_every_user(&mut self, client: &mut Client) {
        for user in 1..=USERS {
            self.pin += 1_000;
            self.ack_pins_at(client, user, 1, self.pin).await;
        }
    }

    async fn ack_pins(&mut self, client: &mut Client) {
        let (user, channel) = (self.rng.user(), self.rng.channel());
        // Sometimes older than the last one: a stale pin ack.
        self.pin += 1_000;
        let timestamp = self.pin - self.rng.below(3) * 1_500;
        self.ack_pins_at(client, user, channel, timestamp).await;
    }

    async fn ack_pins_at(&mut self, client: &mut Client, user: u64, channel: u64, timestamp: u64) {
        self.counts.ack_pins += 1;
        let request = AckPinsRequest {
            user_id: user,
            channel_id: channel,
            pin_timestamp_ms: timestamp,
        };
        let state = client.ack_pins(timed(request)).await.expect("AckPins");
        self.apply((user, channel), Op::AckPins(timestamp));
        let state = state.into_inner().read_state.expect("AckPins' state");
        self.check((user, channel), &state, "AckPins");
    }

    async fn delete(&mut self, client: &mut Client) {
        self.counts.delete += 1;
        let user = self.rng.user();
        let count = 1 + self.rng.below(2);
        let channels = self.rng.distinct(count, Rng::channel);
        let request = DeleteReadStatesRequest {
            user_id: user,
            channel_ids: channels.clone(),
        };
        let states = client
            .delete_read_states(timed(request))
            .await
            .expect("DeleteReadStates");
        for &channel in &channels {
            self.apply((user, channel), Op::Delete);
        }
        let states = states.into_inner().read_states;
        assert_eq!(
            states.len(),
            channels.len(),
            "DeleteReadStates answered {states:?}"
        );
        for (&channel, state) in channels.iter().zip(&states) {
            self.check((user, channel), state, "DeleteReadStates");
        }
    }

    async fn get_read_state(&mut self, client: &mut Client) {
        self.counts.get_read_state += 1;
        let (user, channel) = (self.rng.user(), self.rng.channel());
        let request = GetReadStateRequest {
            user_id: user,
            channel_id: channel,
        };
        let state = client
            .get_read_state(timed(request))
            .await
            .expect("GetReadState")
            .into_inner()
            .read_state
            .expect("GetReadState's state");
        self.check((user, channel), &state, "GetReadState");
    }
}

/// A request with the hang guard as its gRPC deadline.
fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}
