//! When a failed call is sent again, and after how long. A call that timed
//! out or lost its connection may have been applied, so it is sent again
//! only if applying it twice is the same as once ([`Rpc::is_safe_to_retry`]);
//! an overloaded instance refuses a call before running it, so any call is
//! sent again after it, but only after a backoff that gives the instance
//! room. Every retry waits an exponential backoff with full jitter (a
//! random delay between zero and the ceiling, so clients failing together
//! do not retry together), stops at a per-call attempt limit, and spends a
//! token of a client-wide [`RetryBudget`] that only successes refill, so a
//! tier that is down sees each call about once, not once per attempt.
//!
//! Pure logic: the randomness comes in as an argument, and nothing here
//! sleeps or reads a clock.

use std::time::Duration;

use tonic::{Code, Status};

use crate::proto::AckRequest;

mod budget;
mod jitter;

pub use budget::RetryBudget;
pub(crate) use jitter::Jitter;

/// The calls, as far as retrying them goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `Ack` with `manual = false`: `last_message_id = max(old, new)`.
    Ack,
    /// `Ack` with `manual = true` ("mark as unread"): sets exact values.
    ManualAck,
    /// `BulkAck`: many non-manual acks.
    BulkAck,
    /// `AddMentions`: idempotent per (channel, message, user).
    AddMentions,
    /// `RemoveMentions`: idempotent per (channel, message, user).
    RemoveMentions,
    /// `AckPins`: `last_pin_timestamp_ms = max(old, new)`.
    AckPins,
    /// `GetReadState`: a read.
    GetReadState,
    /// `GetUserReadStates`: a read.
    GetUserReadStates,
    /// `DeleteReadStates`: deleting a deleted pair changes nothing.
    DeleteReadStates,
    /// `GetRouting`: a read.
    GetRouting,
}

impl Rpc {
    /// Every call, in the proto's order.
    pub const ALL: [Rpc; 10] = [
        Rpc::Ack,
        Rpc::ManualAck,
        Rpc::BulkAck,
        Rpc::AddMentions,
        Rpc::RemoveMentions,
        Rpc::AckPins,
        Rpc::GetReadState,
        Rpc::GetUserReadStates,
        Rpc::DeleteReadStates,
        Rpc::GetRouting,
    ];

    /// Returns the call an `Ack` request makes: manual or not.
    pub fn of_ack(request: &AckRequest) -> Self {
        if request.manual {
            Rpc::ManualAck
        } else {
            Rpc::Ack
        }
    }

    /// Returns the gRPC method's name (`"Ack"` for both kinds of ack).
    pub fn method(self) -> &'static str {
        match self {
            Rpc::Ack | Rpc::ManualAck => "Ack",
            Rpc::BulkAck => "BulkAck",
            Rpc::AddMentions => "AddMentions",
            Rpc::RemoveMentions => "RemoveMentions",
            Rpc::AckPins => "AckPins",
            Rpc::GetReadState => "GetReadState",
            Rpc::GetUserReadStates => "GetUserReadStates",
            Rpc::DeleteReadStates => "DeleteReadStates",
            Rpc::GetRouting => "GetRouting",
        }
    }

    /// Returns whether the call may be sent again after a timeout or a
    /// lost connection, when the first attempt may have been applied.
    ///
    /// Only a manual ack may not: it sets `last_message_id` and
    /// `mention_count` to exact values, so if another change lands between
    /// the two attempts (a forward ack, a mention), the second attempt
    /// undoes it. Every other change is a maximum (acks, pins), idempotent
    /// per (channel, message, user) (mentions), or a delete of what the
    /// first attempt already deleted; reads change nothing.
    pub fn is_safe_to_retry(self) -> bool {
        !matches!(self, Rpc::ManualAck)
    }
}

/// What a failed attempt's status means for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `UNAVAILABLE` or `DEADLINE_EXCEEDED`: the instance, the connection
    /// or the slot's owner failed, perhaps after applying the call.
    Transient,
    /// `RESOURCE_EXHAUSTED` from an overloaded instance, which refuses a
    /// call at once, before running it.
    Overloaded,
    /// Anything else: a retry would get the same answer.
    Final,
}

/// Returns what `status` means for retrying.
pub fn classify(status: &Status) -> Failure {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Failure::Transient,
        // tonic's own size limit on a message also says RESOURCE_EXHAUSTED,
        // and a bigger message will not shrink by retrying.
        Code::ResourceExhausted if !status.message().contains("message length too large") => {
            Failure::Overloaded
        }
        _ => Failure::Final,
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the call again after this delay.
    Retry {
        /// The backoff before the next attempt.
        after: Duration,
    },
    /// Return the failure to the caller.
    Return(GiveUp),
}

/// Why a failure is returned rather than retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The status is not one that a retry can change.
    Final,
    /// The call may have been applied, and applying it twice is not safe.
    Unsafe,
    /// The call has had its attempts.
    Attempts,
    /// The client-wide retry budget is spent.
    Budget,
}

/// How failed calls are retried. The default: 5 attempts, backoff ceilings
/// from 50 ms doubling to 1 s (at most 750 ms of backoff in all: about what
/// a slot handoff or an instance's restart takes), at least 100 ms after
/// `RESOURCE_EXHAUSTED`,
/// and a budget of 100 retries refilled by one per 10 successes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    overload_backoff: Duration,
    budget_tokens: u32,
    successes_per_token: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            overload_backoff: Duration::from_millis(100),
            budget_tokens: 100,
            successes_per_token: 10,
        }
    }
}

impl RetryPolicy {
    /// Returns a policy that never retries.
    pub fn never() -> Self {
        Self::default().max_attempts(1)
    }

    /// Sets how many times a call is sent at most, the first included (at
    /// least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the first retry's backoff ceiling, doubled for each later
    /// retry up to `max`.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the least delay before a call refused with
    /// `RESOURCE_EXHAUSTED` is sent again; the jittered backoff comes on
    /// top of it.
    #[must_use]
    pub fn overload_backoff(mut self, least: Duration) -> Self {
        self.overload_backoff = least;
        self
    }

    /// Sets the client-wide retry budget: at most `tokens` retries in a row
    /// without successes (0: no retries), and one more token for every
    /// `successes_per_token` successful calls (at least 1).
    #[must_use]
    pub fn budget(mut self, tokens: u32, successes_per_token: u32) -> Self {
        self.budget_tokens = tokens;
        self.successes_per_token = successes_per_token.max(1);
        self
    }

    /// Returns the attempt limit of a call.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Returns a full budget for a client following this policy.
    pub fn new_budget(&self) -> RetryBudget {
        RetryBudget::new(self.budget_tokens, self.successes_per_token)
    }

    /// Decides what follows the failure of attempt number `attempt` (1 for
    /// the first) of `rpc` with `status`, spending a token of `budget` when
    /// it retries; `random` is a uniformly random word, the jitter.
    pub fn decide(
        &self,
        rpc: Rpc,
        status: &Status,
        attempt: u32,
        budget: &RetryBudget,
        random: u64,
    ) -> Verdict {
        let failure = classify(status);
        match failure {
            Failure::Final => return Verdict::Return(GiveUp::Final),
            Failure::Transient if !rpc.is_safe_to_retry() => {
                return Verdict::Return(GiveUp::Unsafe);
            }
            Failure::Transient | Failure::Overloaded => {}
        }
        if attempt >= self.max_attempts {
            return Verdict::Return(GiveUp::Attempts);
        }
        if !budget.try_spend() {
            return Verdict::Return(GiveUp::Budget);
        }
        Verdict::Retry {
            after: self.backoff_after(attempt, failure, random),
        }
    }

    /// Returns the delay after failed attempt number `attempt` (1 for the
    /// first): a uniformly random part, set by `random`, of the ceiling
    /// `initial_backoff * 2^(attempt - 1)` (at most `max_backoff`), plus
    /// `overload_backoff` when the instance was overloaded.
    pub fn backoff_after(&self, attempt: u32, failure: Failure, random: u64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let jittered = share_of(ceiling, random);
        match failure {
            Failure::Overloaded => self.overload_backoff + jittered,
            Failure::Transient | Failure::Final => jittered,
        }
    }
}

/// Returns `duration * random / 2^64`.
fn share_of(duration: Duration, random: u64) -> Duration {
    let nanos = (duration.as_nanos() * u128::from(random)) >> 64;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: u64 = 1 << 63;

    fn unavailable() -> Status {
        Status::unavailable("connection refused")
    }

    #[test]
    fn only_a_manual_ack_is_unsafe_to_retry() {
        for rpc in Rpc::ALL {
            assert_eq!(rpc.is_safe_to_retry(), rpc != Rpc::ManualAck, "{rpc:?}");
        }
        let mut ack = AckRequest {
            user_id: 1,
            channel_id: 2,
            message_id: 3,
            manual: false,
            mention_count: None,
        };
        assert_eq!(Rpc::of_ack(&ack), Rpc::Ack);
        ack.manual = true;
        assert_eq!(Rpc::of_ack(&ack), Rpc::ManualAck);
        assert_eq!(Rpc::ManualAck.method(), "Ack");
    }

    #[test]
    fn timeouts_and_lost_connections_retry_only_safe_calls() {
        let policy = RetryPolicy::default();
        let budget = policy.new_budget();
        for status in [unavailable(), Status::deadline_exceeded("timed out")] {
            for rpc in Rpc::ALL {
                let verdict = policy.decide(rpc, &status, 1, &budget, HALF);
                if rpc == Rpc::ManualAck {
                    assert_eq!(verdict, Verdict::Return(GiveUp::Unsafe));
                } else {
                    assert!(matches!(verdict, Verdict::Retry { .. }), "{rpc:?}");
                }
            }
        }
    }

    #[test]
    fn other_codes_are_returned_at_once() {
        let policy = RetryPolicy::default();
        let budget = policy.new_budget();
        let finals = [
            Status::invalid_argument("user_id must be non-zero"),
            Status::internal("do not retry"),
            Status::failed_precondition("cluster.enabled is false"),
            Status::unauthenticated("no token"),
            Status::permission_denied("not allowed"),
            Status::out_of_range("request too large"),
            Status::cancelled("cancelled"),
            Status::resource_exhausted(
                "Error, decoded message length too large: found 5000000 bytes",
            ),
        ];
        for status in finals {
            assert_eq!(
                policy.decide(Rpc::Ack, &status, 1, &budget, HALF),
                Verdict::Return(GiveUp::Final),
                "{status:?}"
            );
        }
        assert_eq!(budget.available(), 100, "nothing spent");
    }

    #[test]
    fn an_overloaded_instance_gets_at_least_the_overload_backoff() {
        let policy = RetryPolicy::default()
            .max_attempts(10)
            .overload_backoff(Duration::from_millis(100));
        let budget = policy.new_budget();
        let overloaded = Status::resource_exhausted("overloaded: 64 calls already in flight");
        // Refused before it ran: a manual ack too.
        for rpc in [Rpc::Ack, Rpc::ManualAck] {
            for random in [0, 1, HALF, u64::MAX] {
                for attempt in 1..10 {
                    let Verdict::Retry { after } =
                        policy.decide(rpc, &overloaded, attempt, &budget, random)
                    else {
                        panic!("{rpc:?} not retried");
                    };
                    assert!(after >= Duration::from_millis(100), "{after:?}");
                }
            }
        }
        assert_eq!(
            policy.backoff_after(1, Failure::Overloaded, 0),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_maximum_with_full_jitter() {
        let policy =
            RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(60));
        let ceiling = |attempt| policy.backoff_after(attempt, Failure::Transient, u64::MAX);
        let ms = |ms: f64| Duration::from_secs_f64(ms / 1000.0);
        assert!(ms(9.99) < ceiling(1) && ceiling(1) <= ms(10.0));
        assert!(ms(19.99) < ceiling(2) && ceiling(2) <= ms(20.0));
        assert!(ms(39.99) < ceiling(3) && ceiling(3) <= ms(40.0));
        assert!(ms(59.99) < ceiling(4) && ceiling(4) <= ms(60.0));
        assert!(ms(59.99) < ceiling(400) && ceiling(400) <= ms(60.0));
        // Full jitter: anywhere from zero to the ceiling.
        assert_eq!(policy.backoff_after(3, Failure::Transient, 0), ms(0.0));
        assert_eq!(policy.backoff_after(3, Failure::Transient, HALF), ms(20.0));
    }

    #[test]
    fn a_call_stops_at_its_attempt_limit() {
        let policy = RetryPolicy::default().max_attempts(3);
        let budget = policy.new_budget();
        let status = unavailable();
        assert!(matches!(
            policy.decide(Rpc::Ack, &status, 2, &budget, HALF),
            Verdict::Retry { .. }
        ));
        assert_eq!(
            policy.decide(Rpc::Ack, &status, 3, &budget, HALF),
            Verdict::Return(GiveUp::Attempts)
        );
        assert_eq!(budget.available(), 99, "only the retry spent a token");
        let never = RetryPolicy::never();
        assert_eq!(
            never.decide(Rpc::Ack, &status, 1, &budget, HALF),
            Verdict::Return(GiveUp::Attempts)
        );
    }

    #[test]
    fn a_spent_budget_stops_retries() {
        let policy = RetryPolicy::default().max_attempts(100).budget(1, 10);
        let budget = policy.new_budget();
        let status = unavailable();
        let first = policy.decide(Rpc::GetReadState, &status, 1, &budget, HALF);
        assert!(matches!(first, Verdict::Retry { .. }));
        let second = policy.decide(Rpc::GetReadState, &status, 2, &budget, HALF);
        assert_eq!(second, Verdict::Return(GiveUp::Budget));
    }
}
