//! The crash loop's reference model of one (user, channel) state, written
//! from ARCHITECTURE.md §1.2 alone, and the check of a state read back after
//! a crash.
//!
//! The calls on one pair come from one client, one at a time, so they are
//! totally ordered, and the server's state of the pair is always the model
//! state after some prefix of them. Write-behind stores such a snapshot, so
//! after a crash the stored state must be the model state after a prefix
//! that holds at least every call acknowledged before the cutoff (more than
//! the flush delay before the kill). Calls after the cutoff, and the one
//! call that may have been in flight at the kill, may or may not be in it.

use std::collections::BTreeSet;
use std::time::Instant;

/// What the API shows of a state: the fields the calls change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub last_message_id: u64,
    pub mention_count: u32,
    pub last_pin_timestamp_ms: u64,
}

/// One change to one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ack(u64),
    AddMention(u64),
    RemoveMention(u64),
    AckPins(u64),
    Delete,
}

/// The model state of a pair: mentions are known by message id.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PairState {
    last_message_id: u64,
    pending: BTreeSet<u64>,
    last_pin_timestamp_ms: u64,
}

impl PairState {
    /// Applies one change (section 2, semantics 1, 3, 4, 5; a delete makes
    /// the pair read as never written).
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Ack(message_id) => {
                self.last_message_id = self.last_message_id.max(message_id);
                let last = self.last_message_id;
                self.pending.retain(|&id| id > last);
            }
            Op::AddMention(message_id) => {
                if message_id > self.last_message_id {
                    self.pending.insert(message_id);
                }
            }
            Op::RemoveMention(message_id) => {
                self.pending.remove(&message_id);
            }
            Op::AckPins(timestamp) => {
                self.last_pin_timestamp_ms = self.last_pin_timestamp_ms.max(timestamp);
            }
            Op::Delete => *self = Self::default(),
        }
    }

    pub fn observed(&self) -> Observed {
        Observed {
            last_message_id: self.last_message_id,
            mention_count: u32::try_from(self.pending.len()).unwrap_or(u32::MAX),
            last_pin_timestamp_ms: self.last_pin_timestamp_ms,
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at `at`, answering `seen` for this pair (`None`: the
    /// call asked for no state back).
    Acked { at: Instant, seen: Option<Observed> },
    /// No answer (the server died): applied or not, nobody knows.
    Unknown,
}

/// One pair's history since it was last checked.
#[derive(Debug, Default)]
pub struct PairLog {
    /// The states the pair may have been in when last checked: a count read
    /// back does not say which mention ids it holds, so every model state
    /// that matched is kept.
    candidates: Vec<PairState>,
    calls: Vec<(Op, Outcome)>,
}

impl PairLog {
    pub fn new() -> Self {
        Self {
            candidates: vec![PairState::default()],
            calls: Vec::new(),
        }
    }

    /// Records a call, in the order the pair's client made them.
    pub fn record(&mut self, op: Op, outcome: Outcome) {
        debug_assert!(
            !matches!(self.calls.last(), Some((_, Outcome::Unknown))),
            "a client stops after a call without an answer"
        );
        self.calls.push((op, outcome));
    }

    /// Returns how many calls were acknowledged at or before `cutoff`.
    pub fn acked_before(&self, cutoff: Instant) -> usize {
        self.calls
            .iter()
            .take_while(
                |(_, outcome)| matches!(outcome, Outcome::Acked { at, .. } if *at <= cutoff),
            )
            .count()
    }

    /// Marks a crash of the pair's server: the changes acknowledged after
    /// `cutoff` may be lost, and the calls that follow apply to whatever
    /// was kept. Every state the pair may now be in becomes a candidate;
    /// later answers narrow them down. Returns how many acknowledged calls
    /// fell in the window that may be lost.
    #[allow(dead_code)] // the cluster model's; the crash loop checks after each restart
    pub fn crash(&mut self, cutoff: Instant) -> Result<usize, String> {
        let required = self.acked_before(cutoff);
        let window = self.calls.len() - required;
        let mut kept = Vec::new();
        for candidate in &self.candidates {
            let Some(prefixes) = self.replay(candidate) else {
                continue;
            };
            kept.extend(prefixes.into_iter().skip(required));
        }
        if kept.is_empty() {
            return Err(format!(
                "the server's answers disagree with the model: calls {:?}, starting from {:?}",
                self.calls, self.candidates
            ));
        }
        kept.sort();
        kept.dedup();
        self.candidates = kept;
        self.calls.clear();
        Ok(window)
    }

    /// Returns the states after each prefix of the calls from `candidate`
    /// (the empty prefix first), or None if an answer disagrees with them.
    fn replay(&self, candidate: &PairState) -> Option<Vec<PairState>> {
        let mut state = candidate.clone();
        let mut prefixes = vec![state.clone()];
        for (op, outcome) in &self.calls {
            state.apply(*op);
            if let Outcome::Acked {
                seen: Some(seen), ..
            } = outcome
                && *seen != state.observed()
            {
                return None;
            }
            prefixes.push(state.clone());
        }
        Some(prefixes)
    }

    /// Checks the state read back after a restart: it must be the model
    /// state after a prefix of the calls holding every call acknowledged by
    /// `cutoff`, along a history whose every answer the model agrees with.
    /// On success the log starts over from the states that matched.
    pub fn check(&mut self, cutoff: Instant, stored: Observed) -> Result<(), String> {
        let required = self.acked_before(cutoff);
        let mut matched = Vec::new();
        let mut answers_agree = false;
        for candidate in &self.candidates {
            let Some(prefixes) = self.replay(candidate) else {
                continue;
            };
            answers_agree = true;
            matched.extend(
                prefixes
                    .into_iter()
                    .skip(required)
                    .filter(|prefix| prefix.observed() == stored),
            );
        }
        if !answers_agree {
            return Err(format!(
                "the server's answers disagree with the model: calls {:?}, starting from {:?}",
                self.calls, self.candidates
            ));
        }
        if matched.is_empty() {
            return Err(format!(
                "stored {stored:?} is no state after {required} or more of the calls {:?} \
                 (from {:?}); {required} were acknowledged before the cutoff",
                self.calls, self.candidates
            ));
        }
        matched.sort();
        matched.dedup();
        self.candidates = matched;
        self.calls.clear();
        Ok(())
    }
}

/// A small seeded generator (SplitMix64): the seed printed by a run
/// replays its calls and kill moments.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(at: Instant, seen: (u64, u32, u64)) -> Outcome {
        Outcome::Acked {
            at,
            seen: Some(Observed {
                last_message_id: seen.0,
                mention_count: seen.1,
                last_pin_timestamp_ms: seen.2,
            }),
        }
    }

    #[test]
    fn a_state_missing_an_acknowledged_call_fails_the_check() {
        let start = Instant::now();
        let mut log = PairLog::new();
        log.record(Op::AddMention(5), acked(start, (0, 1, 0)));
        log.record(Op::Ack(9), acked(start, (9, 0, 0)));
        let stored = Observed::default(); // neither call landed
        assert!(log.check(start, stored).is_err());
        let mut log = PairLog::new();
        log.record(Op::AddMention(5), acked(start, (0, 1, 0)));
        let stored = Observed {
            mention_count: 1,
            ..Observed::default()
        };
        assert!(log.check(start, stored).is_ok());
    }
}
