//! Mentions and acks under injected timeouts, against a model. Each task
//! owns its users (so every pair's calls are in order) and sends random
//! AddMentions, RemoveMentions and Acks through the client, most with a
//! per-attempt deadline of a few milliseconds: an attempt then often
//! expires at the client after the instance applied it, and the client
//! sends it again. A mention is idempotent per (channel, message, user),
//! so the model counts each once: a pair's count is the number of its
//! mentioned messages above its last ack, never removed.
//!
//! An attempt the client gave up on may still be running at the instance
//! until its own deadline (the instance drops a call at its
//! `grpc-timeout`), so a late AddMentions could land after a later
//! RemoveMentions of the same message and count again, which would be the
//! race of this test, not of the retries: so a message is removed only
//! once its AddMentions answered at least `SETTLED` ago, far past any
//! deadline used. A call that fails once the client gave up is sent again
//! with a long deadline until it succeeds, so its outcome is known.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use readstates_client::proto::{
    AckRequest, AddMentionsRequest, GetUserReadStatesRequest, ReadState, RemoveMentionsRequest,
};
use readstates_client::{Code, ReadStatesClient, Status};
use tokio::time::Instant;

use crate::support::{self, Rng};

/// Channels per user.
pub const CHANNELS: u64 = 2;
/// How long after its AddMentions answered a message may be removed.
const SETTLED: Duration = Duration::from_secs(1);
/// The deadline of a call that must succeed (a resend, a check).
pub const LONG: Duration = Duration::from_secs(5);

/// One (user, channel)'s model.
#[derive(Debug, Default, Clone)]
struct Pair {
    last: u64,
    mentioned: BTreeSet<u64>,
}

impl Pair {
    fn count(&self) -> u32 {
        self.mentioned.range(self.last + 1..).count() as u32
    }
}

/// What one task did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub calls: u64,
    /// Calls that failed once the client gave up, and were sent again.
    pub failed: u64,
    /// Calls that failed without the retries they should have had (see
    /// [`support::unretried`]), and were sent again.
    pub unretried: u64,
    /// Calls sent with a deadline of at most 5 ms.
    pub short: u64,
    /// Successful answers of AddMentions, RemoveMentions and Ack (one per
    /// part of a fan-out the client split by owner), each method's.
    pub answered: BTreeMap<&'static str, u64>,
    pairs: BTreeMap<(u64, u64), Pair>,
}

/// Runs `calls` random calls over `users` (this task's alone); `first_id`
/// starts the task's message ids.
pub async fn run(
    client: ReadStatesClient,
    users: Vec<u64>,
    seed: u64,
    calls: u64,
    first_id: u64,
) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut outcome = Outcome {
        pairs: users
            .iter()
            .flat_map(|&user| (1..=CHANNELS).map(move |channel| ((user, channel), Pair::default())))
            .collect(),
        ..Outcome::default()
    };
    let mut clock = first_id;
    // Per channel: each message mentioned, and when its AddMentions answered.
    let mut added: BTreeMap<u64, Vec<(u64, Instant)>> = BTreeMap::new();
    for _ in 0..calls {
        let deadline = match rng.below(10) {
            0..=2 => Duration::from_millis(1),
            3..=4 => Duration::from_millis(2),
            5..=6 => Duration::from_millis(5),
            _ => Duration::from_secs(2),
        };
        if deadline <= Duration::from_millis(5) {
            outcome.short += 1;
        }
        let timed = client.with_deadline(deadline);
        let channel = 1 + rng.below(CHANNELS);
        clock += 1 + rng.below(3);
        outcome.calls += 1;
        let removable: Vec<u64> = added
            .get(&channel)
            .map(|messages| {
                messages
                    .iter()
                    .filter(|(_, at)| at.elapsed() >= SETTLED)
                    .map(|(message, _)| *message)
                    .collect()
            })
            .unwrap_or_default();
        match rng.below(10) {
            0..=4 => {
                let request = AddMentionsRequest {
                    channel_id: channel,
                    message_id: clock,
                    user_ids: rng.subset(&users),
                    omit_read_states: rng.chance(30),
                };
                let parts = parts(&client, &request.user_ids);
                let change = Change::Add(request.clone());
                let states = until_ok(&mut outcome, &timed, &client, &change).await;
                *outcome.answered.entry("AddMentions").or_default() += parts;
                for &user in &request.user_ids {
                    let pair = outcome.pairs.get_mut(&(user, channel)).unwrap();
                    pair.mentioned.insert(clock);
                }
                added
                    .entry(channel)
                    .or_default()
                    .push((clock, Instant::now()));
                outcome.check(channel, &request.user_ids, &states, "AddMentions");
            }
            5..=6 if !removable.is_empty() => {
                let message = removable[rng.below(removable.len() as u64) as usize];
                let request = RemoveMentionsRequest {
                    channel_id: channel,
                    message_id: message,
                    user_ids: rng.subset(&users),
                };
                let parts = parts(&client, &request.user_ids);
                let change = Change::Remove(request.clone());
                let states = until_ok(&mut outcome, &timed, &client, &change).await;
                *outcome.answered.entry("RemoveMentions").or_default() += parts;
                for &user in &request.user_ids {
                    let pair = outcome.pairs.get_mut(&(user, channel)).unwrap();
                    pair.mentioned.remove(&message);
                }
                outcome.check(channel, &request.user_ids, &states, "RemoveMentions");
            }
            _ => {
                // Mostly behind the newest message, so that some mentions
                // stay counted.
                let user = users[rng.below(users.len() as u64) as usize];
                let message_id = clock.saturating_sub(rng.below(40)).max(1);
                let request = AckRequest {
                    user_id: user,
                    channel_id: channel,
                    message_id,
                    ..Default::default()
                };
                let change = Change::Ack(request);
                let states = until_ok(&mut outcome, &timed, &client, &change).await;
                *outcome.answered.entry("Ack").or_default() += 1;
                let pair = outcome.pairs.get_mut(&(user, channel)).unwrap();
                pair.last = pair.last.max(message_id);
                outcome.check(channel, &[user], &states, "Ack");
            }
        }
    }
    outcome
}

/// Returns how many RPCs the client makes of a fan-out over `user_ids`.
fn parts(client: &ReadStatesClient, user_ids: &[u64]) -> u64 {
    let map = client.slot_map().expect("the cluster's slot map");
    map.split(user_ids).len().max(1) as u64
}

/// A change, as sent.
enum Change {
    Add(AddMentionsRequest),
    Remove(RemoveMentionsRequest),
    Ack(AckRequest),
}

impl Change {
    /// Sends the change; returns the states it answered.
    async fn send(&self, client: &ReadStatesClient) -> Result<Vec<ReadState>, Status> {
        Ok(match self {
            Change::Add(request) => client.add_mentions(request.clone()).await?.read_states,
            Change::Remove(request) => client.remove_mentions(request.clone()).await?.read_states,
            Change::Ack(request) => client.ack(*request).await?.read_state.into_iter().collect(),
        })
    }
}

/// Sends `change` with `timed` (the short deadline); if it fails once the
/// client gave up, counts it and sends it with `long`'s client and a long
/// deadline until it succeeds. A failure the client should have retried
/// (see [`support::unretried`]) is counted apart.
async fn until_ok(
    outcome: &mut Outcome,
    timed: &ReadStatesClient,
    long: &ReadStatesClient,
    change: &Change,
) -> Vec<ReadState> {
    let mut status = match change.send(timed).await {
        Ok(answer) => return answer,
        Err(status) => status,
    };
    let long = long.with_deadline(LONG);
    for _ in 0..20 {
        if support::unretried(&status) {
            println!("a call failed, not retried: {status:?}");
            outcome.unretried += 1;
        } else {
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
                "a call failed with a status the client does not retry: {status:?}"
            );
            outcome.failed += 1;
        }
        status = match change.send(&long).await {
            Ok(answer) => return answer,
            Err(status) => status,
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a call kept failing with a long deadline: {status:?}");
}

impl Outcome {
    /// Checks a call's answer (none with `omit_read_states`) against the
    /// model after it.
    fn check(&self, channel: u64, users: &[u64], states: &[ReadState], what: &str) {
        if states.is_empty() {
            return;
        }
        let answered: Vec<(u64, u64, u32, u64)> = states
            .iter()
            .map(|state| {
                (
                    state.user_id,
                    state.channel_id,
                    state.mention_count,
                    state.last_message_id,
                )
            })
            .collect();
        let expected: Vec<(u64, u64, u32, u64)> = users
            .iter()
            .map(|&user| {
                let pair = &self.pairs[&(user, channel)];
                (user, channel, pair.count(), pair.last)
            })
            .collect();
        assert_eq!(answered, expected, "{what}'s answer");
    }

    /// Adds `other`'s counts to this one's (the model stays this one's).
    pub fn absorb(&mut self, other: Outcome) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.unretried += other.unretried;
        self.short += other.short;
        for (method, count) in other.answered {
            *self.answered.entry(method).or_default() += count;
        }
        self.pairs.extend(other.pairs);
    }

    /// Reads every user's states with a long deadline and checks each
    /// pair's count and last ack against the model; returns how many
    /// mentions were counted in all.
    pub async fn check_final(&self, client: &ReadStatesClient) -> u64 {
        let client = client.with_deadline(LONG);
        let users: BTreeSet<u64> = self.pairs.keys().map(|(user, _)| *user).collect();
        let mut mentions = 0;
        for user in users {
            let all = client
                .get_user_read_states(GetUserReadStatesRequest {
                    user_id: user,
                    since_version: None,
                })
                .await
                .unwrap();
            let stored: BTreeMap<u64, (u32, u64)> = all
                .read_states
                .iter()
                .map(|s| (s.channel_id, (s.mention_count, s.last_message_id)))
                .collect();
            for channel in 1..=CHANNELS {
                let pair = &self.pairs[&(user, channel)];
                let found = stored.get(&channel).copied().unwrap_or_default();
                assert_eq!(
                    found,
                    (pair.count(), pair.last),
                    "user {user} channel {channel}: (mention_count, last_message_id) against \
                     the model; mentioned {:?}",
                    pair.mentioned
                );
                mentions += u64::from(pair.count());
            }
        }
        mentions
    }
}
