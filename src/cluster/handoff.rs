//! A slot's handoff (ARCHITECTURE.md §3.4): when placement moves a slot away,
//! this instance stops serving it, lets the calls that already passed the
//! cache's gate finish, writes and evicts the slot's users, and only then
//! releases the lease, so the next owner loads everything acknowledged here.
//!
//! The calls in flight need no counter: the cache checks the gate (this
//! instance's [`Ownership`](super::Ownership)) under the partition lock, and
//! the eviction takes every partition's lock after the slot was revoked;
//! see `cache::handoff`. The engine's write-behind then writes the slot's
//! released users (their dirty states, and their deferred mentions merged
//! by a load), after its batches taken before the eviction, which may hold
//! older rows of the same users (see `flush::handoff`). All within
//! `cluster.handoff_timeout_ms`: past it, or on a store error, the lease is
//! not released (it runs out by itself, and the slot's next owner waits for
//! that), and the users left are given to the write-behind, whose writes
//! then lose to the next owner's newer versions, as a crashed instance's
//! would.
//!
//! A slot lost without a handoff (its lease lapsed unrenewed, or was found
//! taken) has its users evicted too, their dirty states given to the
//! write-behind at once. In both cases a slot is not served here again
//! while any of its users still has changes outside the cache, so its next
//! load here reads everything this instance wrote.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::HandoffMetrics;
use super::slots::{Slot, slot_of};
use crate::engine::Engine;
use crate::ids::UserId;

/// What a handoff needs: the engine that writes the slots' users out, and
/// how long it may take.
pub struct Handoff {
    pub engine: Arc<Engine>,
    /// `cluster.handoff_timeout_ms`.
    pub timeout: Duration,
}

impl Handoff {
    /// Hands off `slots` (flagged by slot number), which this instance has
    /// stopped serving: writes and evicts their users. Returns whether
    /// everything was written, so their leases may be released.
    pub(super) async fn hand_off(&self, slots: &[bool], metrics: &HandoffMetrics) -> bool {
        let started = Instant::now();
        let count = slots.len() as u32;
        let selects = |user_id: UserId| slots[slot_of(user_id, count) as usize];
        let outcome = tokio::time::timeout(self.timeout, self.engine.write_out(&selects)).await;
        let elapsed = started.elapsed();
        metrics.duration.record_duration(elapsed);
        let moving = slots.iter().filter(|flag| **flag).count();
        let error = match outcome {
            Ok(Ok(users)) => {
                metrics.completed.increment(1);
                metrics.users_written.increment(users as u64);
                tracing::info!(
                    slots = moving,
                    users_written = users,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "slots handed off"
                );
                return true;
            }
            Ok(Err(error)) => {
                metrics.failed.increment(1);
                error.to_string()
            }
            Err(_) => {
                metrics.timed_out.increment(1);
                format!("past cluster.handoff_timeout_ms ({:?})", self.timeout)
            }
        };
        let left = self.engine.requeue_released(&selects);
        tracing::warn!(
            slots = moving,
            users_left_to_write_behind = left,
            %error,
            "slot handoff did not complete; keeping the leases until they run out"
        );
        false
    }

    /// Evicts the users of `slots` (flagged by slot number), lost without a
    /// handoff: their dirty states go to the write-behind at once.
    pub(super) async fn drop_lost(&self, slots: &[bool]) {
        let count = slots.len() as u32;
        let selects = |user_id: UserId| slots[slot_of(user_id, count) as usize];
        let evicted = self.engine.evict(&selects).await;
        let released = self.engine.requeue_released(&selects);
        tracing::warn!(
            slots = slots.iter().filter(|flag| **flag).count(),
            users_evicted = evicted.users,
            users_left_to_write_behind = released,
            "slots lost without a handoff; their users evicted"
        );
    }

    /// Returns, per slot of `slots`, whether any of its users has changes
    /// outside the cache (released, or deferred mentions): such a slot must
    /// not be served yet.
    pub(super) fn unwritten_slots(&self, slots: u32) -> Vec<bool> {
        let mut users = Vec::new();
        self.engine.unwritten_users(&mut users);
        let mut flags = vec![false; slots as usize];
        for user_id in users {
            flags[slot_of(user_id, slots) as usize] = true;
        }
        flags
    }
}

/// Returns the slots flagged in `flags`.
pub(super) fn flagged(flags: &[bool]) -> impl Iterator<Item = Slot> + '_ {
    flags
        .iter()
        .enumerate()
        .filter(|(_, flag)| **flag)
        .map(|(slot, _)| slot as Slot)
}
