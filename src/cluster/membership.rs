//! The membership-and-ownership task. Every heartbeat it:
//! 1. writes this instance's heartbeat row (when that fails, the round
//!    ends there) and reads the members;
//! 2. computes its target slots by rendezvous over the live members;
//! 3. stops serving, then releases, the slots it holds that are no longer
//!    its targets (their dirty users are not handed off yet: they are
//!    written by the usual write-behind, after the new owner may have
//!    loaded them);
//! 4. acquires its free targets, and renews the leases it holds once half
//!    of their serving time is spent;
//! 5. reads the lease table into the routing table (see [`Routing`]).
//!
//! A slot's state here says what the lease table may hold for it; the
//! request path reads only [`Ownership`], whose deadline lapses by itself
//! when renewals fail.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::ClusterMetrics;
use super::error::ClusterError;
use super::lease::{LeaseTable, Outcome};
use super::ownership::Ownership;
use super::placement::Members;
use super::routing::Routing;
use super::slots::Slot;

/// Lease requests in flight at once: a start acquires hundreds of slots,
/// each a Paxos round, which must not swamp the cluster.
const MAX_IN_FLIGHT: usize = 32;

/// What the lease table may hold for one slot, as far as this process knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotLease {
    /// Not ours.
    Free,
    /// Ours, from the acquire or renewal sent at `started`.
    Held { started: Instant },
    /// Perhaps ours: a request timed out, or the lease lapsed here
    /// unrenewed. Served by nobody here until a renewal succeeds.
    Unknown,
}

/// What to do with one slot this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Acquire,
    Renew,
    Release,
}

/// The timing of leases.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often a round runs.
    pub heartbeat: Duration,
    /// How long after a lease's start this instance stops serving it
    /// (lease - safety margin).
    pub serving: Duration,
}

/// The task's state.
pub struct Membership {
    table: LeaseTable,
    ownership: Arc<Ownership>,
    timing: Timing,
    leases: Vec<SlotLease>,
    members: Members,
    metrics: ClusterMetrics,
    routing: Arc<Routing>,
}

impl Membership {
    pub fn new(
        table: LeaseTable,
        ownership: Arc<Ownership>,
        timing: Timing,
        metrics: ClusterMetrics,
        routing: Arc<Routing>,
    ) -> Self {
        let slots = ownership.slots() as usize;
        let me = table.me().holder.instance_id.clone();
        Self {
            table,
            ownership,
            timing,
            leases: vec![SlotLease::Free; slots],
            members: Members::new([me]),
            metrics,
            routing,
        }
    }

    /// Runs rounds until `stop` is cancelled, then releases every lease
    /// and removes the heartbeat. The first round only announces this
    /// instance and reads the members, so instances starting together see
    /// each other before they take slots.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(self.timing.heartbeat);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = interval.tick() => {}
            }
            self.round(!first).await;
            first = false;
        }
        self.leave().await;
    }

    async fn round(&mut self, take_slots: bool) {
        if let Err(error) = self.table.heartbeat().await {
            // The cluster is unreachable or failing: hundreds of lease
            // requests would each wait out their timeout, and delay the
            // round that finds it back. Served slots lapse by themselves.
            tracing::warn!(%error, "cluster heartbeat failed; no lease requests this round");
            self.metrics
                .owned_slots
                .set(self.ownership.owned_slots() as f64);
            return;
        }
        let me = self.table.me().holder.instance_id.clone();
        match self.table.members().await {
            Ok(members) => {
                let ids = members
                    .into_iter()
                    .map(|member| member.instance_id)
                    .chain([me.clone()]);
                let members = Members::new(ids);
                if members != self.members {
                    tracing::info!(members = ?members.ids().collect::<Vec<_>>(), "cluster members changed");
                }
                self.members = members;
            }
            Err(error) => {
                tracing::warn!(%error, "reading the cluster members failed; keeping the last list");
            }
        }
        let now = Instant::now();
        let mut actions = Vec::new();
        for slot in 0..self.ownership.slots() {
            let target = self.members.owner_of(slot) == Some(me.as_str());
            let lease = &mut self.leases[slot as usize];
            let (lease_now, action) = plan(*lease, target, take_slots, now, self.timing.serving);
            *lease = lease_now;
            if let Some(action) = action {
                if let Action::Release = action {
                    // Stop serving before the lease can pass to another.
                    self.ownership.revoke(slot);
                }
                actions.push((slot, action));
            }
        }
        let before = self.ownership.owned_slots();
        let table = &self.table;
        let metrics = &self.metrics;
        let results: Vec<(Slot, SlotLease)> = futures_util::stream::iter(actions)
            .map(|(slot, action)| async move {
                let lease = run_action(table, slot, action).await;
                if let Action::Renew = action {
                    match lease {
                        SlotLease::Held { .. } => metrics.renewals.renewed.increment(1),
                        SlotLease::Free => metrics.renewals.lost.increment(1),
                        SlotLease::Unknown => metrics.renewals.failed.increment(1),
                    }
                }
                (slot, lease)
            })
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        for (slot, lease) in results {
            self.leases[slot as usize] = lease;
            match lease {
                SlotLease::Held { started } => {
                    self.ownership.grant(slot, started, self.timing.serving);
                }
                SlotLease::Free | SlotLease::Unknown => self.ownership.revoke(slot),
            }
        }
        let after = self.ownership.owned_slots();
        self.metrics.owned_slots.set(after as f64);
        if after != before {
            tracing::info!(before, after, "owned slots changed");
        }
        // Last, so that the slots this round took are in it.
        self.routing.refresh(&self.table).await;
    }

    /// Stops serving, releases every lease this process may hold, and
    /// removes the heartbeat row.
    async fn leave(&mut self) {
        self.ownership.revoke_all();
        self.metrics.owned_slots.set(0.0);
        let table = &self.table;
        let held: Vec<Slot> = (0..self.ownership.slots())
            .filter(|slot| self.leases[*slot as usize] != SlotLease::Free)
            .collect();
        let released = held.len();
        let failed = futures_util::stream::iter(held)
            .map(|slot| async move { run_action(table, slot, Action::Release).await })
            .buffer_unordered(MAX_IN_FLIGHT)
            .filter(|lease| std::future::ready(*lease == SlotLease::Unknown))
            .count()
            .await;
        self.leases.fill(SlotLease::Free);
        if let Err(error) = self.table.leave().await {
            tracing::warn!(%error, "removing the cluster heartbeat failed; it expires by itself");
        }
        tracing::info!(
            released = released - failed,
            failed,
            "left the cluster (failed releases expire with their leases)"
        );
    }
}

/// Returns a slot's lease as of `now` (a held one lapses once its serving
/// time is spent), and what to do with it: acquire a free target (once
/// `take_slots`), renew a held target once half its serving time is spent
/// (or an unknown one at once, to learn whether it is ours), release
/// whatever may be held but is no longer a target.
fn plan(
    lease: SlotLease,
    target: bool,
    take_slots: bool,
    now: Instant,
    serving: Duration,
) -> (SlotLease, Option<Action>) {
    let lease = match lease {
        SlotLease::Held { started } if now >= started + serving => SlotLease::Unknown,
        other => other,
    };
    let action = match (lease, target) {
        (SlotLease::Free, true) if take_slots => Some(Action::Acquire),
        (SlotLease::Held { started }, true) if now >= started + serving / 2 => Some(Action::Renew),
        (SlotLease::Unknown, true) => Some(Action::Renew),
        (SlotLease::Held { .. } | SlotLease::Unknown, false) => Some(Action::Release),
        _ => None,
    };
    (lease, action)
}

/// Runs one lease request and returns what the table holds afterwards.
async fn run_action(table: &LeaseTable, slot: Slot, action: Action) -> SlotLease {
    let started = Instant::now();
    let outcome = match action {
        Action::Acquire => table.acquire(slot).await,
        Action::Renew => table.renew(slot).await,
        Action::Release => table.release(slot).await,
    };
    match (action, outcome) {
        (Action::Release, Ok(_)) => SlotLease::Free,
        (_, Ok(Outcome { applied: true, .. })) => SlotLease::Held { started },
        (Action::Acquire, Ok(Outcome { holder, .. }))
            if holder.as_ref() == Some(&table.me().holder) =>
        {
            // Ours from an earlier acquire whose answer was lost: renew
            // it, to learn when its TTL started.
            Box::pin(run_action(table, slot, Action::Renew)).await
        }
        (_, Ok(_)) => SlotLease::Free,
        (_, Err(error)) => {
            log_failure(slot, action, &error);
            SlotLease::Unknown
        }
    }
}

fn log_failure(slot: Slot, action: Action, error: &ClusterError) {
    tracing::warn!(slot, ?action, %error, "slot lease request failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_slot_is_acquired_renewed_or_released_as_placement_and_time_say() {
        let serving = Duration::from_secs(8);
        let started = Instant::now();
        let held = SlotLease::Held { started };
        let at = |seconds: u64| started + Duration::from_secs(seconds);
        let cases = [
            // (lease, target, take_slots, now) -> (lease, action)
            (
                (SlotLease::Free, true, true, at(0)),
                (SlotLease::Free, Some(Action::Acquire)),
            ),
            (
                (SlotLease::Free, true, false, at(0)),
                (SlotLease::Free, None),
            ),
            (
                (SlotLease::Free, false, true, at(0)),
                (SlotLease::Free, None),
            ),
            ((held, true, true, at(3)), (held, None)),
            ((held, true, true, at(4)), (held, Some(Action::Renew))),
            (
                (held, true, true, at(8)),
                (SlotLease::Unknown, Some(Action::Renew)),
            ),
            ((held, false, true, at(1)), (held, Some(Action::Release))),
            (
                (held, false, true, at(9)),
                (SlotLease::Unknown, Some(Action::Release)),
            ),
            (
                (SlotLease::Unknown, true, false, at(0)),
                (SlotLease::Unknown, Some(Action::Renew)),
            ),
            (
                (SlotLease::Unknown, false, true, at(0)),
                (SlotLease::Unknown, Some(Action::Release)),
            ),
        ];
        for ((lease, target, take_slots, now), expected) in cases {
            assert_eq!(
                plan(lease, target, take_slots, now, serving),
                expected,
                "{lease:?}, target {target}, take_slots {take_slots}, at {:?}",
                now - started
            );
        }
    }
}
