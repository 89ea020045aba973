//! The membership-and-ownership task. Every heartbeat it:
//! 1. writes this instance's heartbeat row (when that fails, the round
//!    ends there) and reads the members;
//! 2. computes its target slots by rendezvous over the live members;
//! 3. stops serving the slots it holds that are no longer its targets,
//!    hands them off (their users written and evicted; see `handoff`) and
//!    then releases them; a handoff that does not complete keeps the
//!    leases, which run out by themselves unless a later round's handoff
//!    completes;
//! 4. meanwhile acquires its free targets, and renews the leases it holds
//!    once half of their serving time is spent;
//! 5. evicts the users of the slots it lost without a handoff (a lease
//!    that lapsed unrenewed or was found taken), and serves a slot newly
//!    held only once none of its users has changes still to write;
//! 6. reads the lease table into the routing table (see [`Routing`]).
//!
//! A slot's state here says what the lease table may hold for it; the
//! request path reads only [`Ownership`], whose deadline lapses by itself
//! when renewals fail. Without a [`Handoff`] (the ownership task alone, as
//! in tests), slots are released at once and nothing is evicted.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::ClusterMetrics;
use super::error::ClusterError;
use super::handoff::{Handoff, flagged};
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
    handoff: Option<Handoff>,
    /// Slots held but not served yet: some of their users, evicted when the
    /// slot was lost earlier, still have changes to write.
    held_back: Vec<bool>,
    routing: Arc<Routing>,
}

impl Membership {
    pub fn new(
        table: LeaseTable,
        ownership: Arc<Ownership>,
        timing: Timing,
        metrics: ClusterMetrics,
        handoff: Option<Handoff>,
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
            handoff,
            held_back: vec![false; slots],
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
        let slots = self.ownership.slots() as usize;
        let mut actions = Vec::new();
        let mut moving = vec![false; slots];
        let mut lost = vec![false; slots];
        for slot in 0..self.ownership.slots() {
            let target = self.members.owner_of(slot) == Some(me.as_str());
            let lease = &mut self.leases[slot as usize];
            let was_held = matches!(*lease, SlotLease::Held { .. });
            let (lease_now, action) = plan(*lease, target, take_slots, now, self.timing.serving);
            *lease = lease_now;
            // Lapsed unrenewed: lost, unless it is moving anyway.
            lost[slot as usize] = was_held && lease_now == SlotLease::Unknown;
            match action {
                Some(Action::Release) => {
                    // Stop serving before the lease can pass to another.
                    self.ownership.revoke(slot);
                    moving[slot as usize] = true;
                    lost[slot as usize] = false;
                }
                Some(action) => actions.push((slot, action)),
                None => {}
            }
        }
        self.drop_lost(&lost).await;
        let before = self.ownership.owned_slots();
        let table = &self.table;
        let metrics = &self.metrics;
        let handoff = self.handoff.as_ref();
        let handing_off = async {
            match handoff {
                Some(handoff) if moving.contains(&true) => {
                    handoff.hand_off(&moving, &metrics.handoffs).await
                }
                _ => true,
            }
        };
        // The other slots' renewals do not wait for the handoff.
        let requests = futures_util::stream::iter(actions)
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
            .collect::<Vec<(Slot, SlotLease)>>();
        let (handed_off, mut results) = tokio::join!(handing_off, requests);
        if handed_off {
            results.extend(release_all(table, flagged(&moving).collect()).await);
        }
        let mut lost = vec![false; slots];
        let mut granted = Vec::new();
        for (slot, lease) in results {
            let was_held = matches!(self.leases[slot as usize], SlotLease::Held { .. });
            self.leases[slot as usize] = lease;
            match lease {
                SlotLease::Held { started } => granted.push((slot, started)),
                SlotLease::Free | SlotLease::Unknown => {
                    self.ownership.revoke(slot);
                    lost[slot as usize] = was_held && !moving[slot as usize];
                }
            }
        }
        self.drop_lost(&lost).await;
        let taking_over = granted
            .iter()
            .any(|(slot, _)| !self.ownership.owns_slot(*slot))
            || self.held_back.contains(&true);
        let may_take_over = match &self.handoff {
            Some(handoff) if taking_over => match handoff.engine.take_over().await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "cannot record a version lease above the slots' previous owners'; serving them next round");
                    false
                }
            },
            _ => true,
        };
        self.grant(granted, may_take_over);
        let after = self.ownership.owned_slots();
        self.metrics.owned_slots.set(after as f64);
        if after != before {
            tracing::info!(before, after, "owned slots changed");
        }
        // Last, so that the slots this round took are in it.
        self.routing.refresh(&self.table).await;
    }

    /// Serves the slots just acquired or renewed (`started`: when their
    /// request was sent), and those held back before, except a slot not
    /// served now whose users still have changes to write.
    /// With `may_take_over` false, slots not served yet are held back.
    fn grant(&mut self, granted: Vec<(Slot, Instant)>, may_take_over: bool) {
        for (slot, lease) in self.leases.iter().enumerate() {
            if !matches!(lease, SlotLease::Held { .. }) {
                self.held_back[slot] = false;
            }
        }
        let waiting = granted
            .iter()
            .any(|(slot, _)| !self.ownership.owns_slot(*slot))
            || self.held_back.contains(&true);
        let unwritten = match &self.handoff {
            Some(handoff) if waiting => handoff.unwritten_slots(self.ownership.slots()),
            _ => vec![false; self.leases.len()],
        };
        let held_back =
            flagged(&self.held_back).filter_map(|slot| match self.leases[slot as usize] {
                SlotLease::Held { started } => Some((slot, started)),
                _ => None,
            });
        let candidates: Vec<(Slot, Instant)> = held_back.chain(granted).collect();
        for (slot, started) in candidates {
            let index = slot as usize;
            if !self.ownership.owns_slot(slot) && (unwritten[index] || !may_take_over) {
                self.held_back[index] = true;
                continue;
            }
            self.held_back[index] = false;
            self.ownership.grant(slot, started, self.timing.serving);
        }
    }

    /// Evicts the users of the slots flagged in `lost`, which stopped being
    /// served without a handoff.
    async fn drop_lost(&self, lost: &[bool]) {
        let count = lost.iter().filter(|flag| **flag).count();
        if count == 0 {
            return;
        }
        for slot in flagged(lost) {
            self.ownership.revoke(slot);
        }
        self.metrics.handoffs.slots_lost.increment(count as u64);
        if let Some(handoff) = &self.handoff {
            handoff.drop_lost(lost).await;
        }
    }

    /// Stops serving, releases every lease this process may hold, and
    /// removes the heartbeat row.
    /// With a handoff, the slots are released only if their users are all
    /// written (after a server's final flush there is nothing left to).
    async fn leave(&mut self) {
        self.ownership.revoke_all();
        self.metrics.owned_slots.set(0.0);
        let held: Vec<bool> = self
            .leases
            .iter()
            .map(|lease| *lease != SlotLease::Free)
            .collect();
        if let Some(handoff) = &self.handoff
            && held.contains(&true)
            && !handoff.hand_off(&held, &self.metrics.handoffs).await
        {
            tracing::warn!(
                "leaving the cluster without releasing the leases; they expire by themselves"
            );
            self.leases.fill(SlotLease::Free);
            if let Err(error) = self.table.leave().await {
                tracing::warn!(%error, "removing the cluster heartbeat failed; it expires by itself");
            }
            return;
        }
        let held: Vec<Slot> = flagged(&held).collect();
        let released = held.len();
        let failed = release_all(&self.table, held)
            .await
            .into_iter()
            .filter(|(_, lease)| *lease == SlotLease::Unknown)
            .count();
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

/// Releases `slots`, a bounded number at once; returns what the table
/// holds for each afterwards.
async fn release_all(table: &LeaseTable, slots: Vec<Slot>) -> Vec<(Slot, SlotLease)> {
    futures_util::stream::iter(slots)
        .map(|slot| async move { (slot, run_action(table, slot, Action::Release).await) })
        .buffer_unordered(MAX_IN_FLIGHT)
        .collect()
        .await
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
