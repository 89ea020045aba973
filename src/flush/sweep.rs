//! The sweep: each round also writes the waiting users of the next key
//! range, so that rows side by side in the store are written together (see
//! `cache::sweep`, and ARCHITECTURE.md §2.1).
//!
//! A step is one key range, taken from every partition in turn (a round cut
//! short by a full queue finishes it in the next). A pass over the key
//! space takes [`SWEEP_SHARE_OF_DELAY`] of the flush delay, and each step
//! the share of the users still ahead of the sweep that its time is of what
//! is left of the pass, counted in one partition (users are spread over
//! partitions by hash, so one stands for all). So a user is mostly written
//! by the sweep before its timer bucket comes due; the buckets still write
//! whatever the sweep has not reached.

use tokio::time::Instant;

use crate::cache::{Cache, FlushJob};
use crate::ids::UserId;

/// The share of the flush delay a pass of the sweep over the key space
/// takes: short of the delay, so the sweep, not the timer, writes most
/// users.
const SWEEP_SHARE_OF_DELAY: (u32, u32) = (3, 4);

/// The sweep's place in the key space.
#[derive(Debug)]
pub(super) struct Sweep {
    /// Where the next step starts (`None`: the start of the key space).
    cursor: Option<UserId>,
    /// The step in progress.
    step: Option<Step>,
    /// The fraction of a user the last step left over.
    carry: f64,
    /// When a step was last considered.
    last: Instant,
    /// When the pass in progress began.
    pass_began: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    from: Option<UserId>,
    to: Option<UserId>,
    /// Partitions not yet swept.
    left: usize,
}

impl Sweep {
    pub(super) fn new() -> Self {
        Self {
            cursor: None,
            step: None,
            carry: 0.0,
            last: Instant::now(),
            pass_began: Instant::now(),
        }
    }

    /// Takes the jobs of partition `index`'s waiting users in the current
    /// step's range, beginning a step if none is in progress.
    pub(super) fn take(&mut self, cache: &Cache, index: usize, jobs: &mut Vec<FlushJob>) {
        if self.step.is_none() {
            self.step = self.begin(cache);
        }
        let Some(step) = self.step.as_mut() else {
            return;
        };
        cache.take_partition_sweep(index, step.from, step.to, jobs);
        step.left = step.left.saturating_sub(1);
        if step.left == 0 {
            self.cursor = step.to;
            self.step = None;
            if self.cursor.is_none() {
                // Past the last key: the next pass starts from the first.
                let now = Instant::now();
                tracing::debug!(
                    pass_ms = now.saturating_duration_since(self.pass_began).as_millis(),
                    "the write-back sweep passed over the key space"
                );
                self.pass_began = now;
                self.carry = 0.0;
            }
        }
    }

    /// The next step; none while it would hold less than one user of the
    /// partition it is counted in.
    fn begin(&mut self, cache: &Cache) -> Option<Step> {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let (share, of) = SWEEP_SHARE_OF_DELAY;
        let pass = cache.flush_delay() * share / of;
        let left = (self.pass_began + pass).saturating_duration_since(now);
        let step = |to| Step {
            from: self.cursor,
            to,
            left: cache.partition_count(),
        };
        if left.is_zero() {
            // The pass is due to end: the rest of the key space.
            return Some(step(None));
        }
        // Counted in the partition with the most waiting users; its users
        // mark the step's end.
        let counted_in = (0..cache.partition_count())
            .max_by_key(|&index| cache.waiting_users(index))
            .unwrap_or(0);
        let ahead = cache.waiting_after(counted_in, self.cursor);
        // The users ahead of the sweep, spread over what is left of the pass.
        let due = ahead as f64 * (elapsed.as_secs_f64() / left.as_secs_f64()).min(1.0);
        self.carry = (self.carry + due).min(ahead as f64);
        let counted = self.carry.floor();
        if counted < 1.0 {
            return None;
        }
        self.carry -= counted;
        Some(step(cache.sweep_end(
            counted_in,
            self.cursor,
            counted as usize,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::test_support::{ack, partitioned_cache, temp_store};

    /// Rounds every 100 ms: the users each round took, in order.
    async fn rounds(cache: &Cache, sweep: &mut Sweep, count: usize) -> Vec<Vec<u64>> {
        let mut taken = Vec::new();
        for _ in 0..count {
            tokio::time::advance(Duration::from_millis(100)).await;
            let mut jobs = Vec::new();
            for index in 0..cache.partition_count() {
                sweep.take(cache, index, &mut jobs);
            }
            taken.push(jobs.iter().map(|job| job.rows[0].user_id.get()).collect());
        }
        taken
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_takes_every_user_in_key_order_before_the_delay() {
        let (_dir, store) = temp_store();
        let cache = partitioned_cache(8);
        for id in 1..=2_000 {
            ack(&cache, &store, id, 1).await;
        }
        let mut sweep = Sweep::new();
        // 29 s of 100-ms rounds: the 30-s timers have not come due.
        let taken = rounds(&cache, &mut sweep, 290).await;
        let mut all: Vec<u64> = Vec::new();
        for round in &taken {
            let mut round = round.clone();
            round.sort_unstable();
            if let (Some(last), Some(first)) = (all.last(), round.first()) {
                assert!(last < first, "each step starts past the last one's keys");
            }
            all.extend(round);
        }
        assert_eq!(all, (1..=2_000).collect::<Vec<u64>>(), "every user once");
        let busy = taken.iter().filter(|round| !round.is_empty()).count();
        assert!(
            busy > 100,
            "spread over the pass, not all at once: {busy} rounds took users"
        );
        let largest = taken.iter().map(Vec::len).max().unwrap_or(0);
        assert!(largest < 200, "no round takes a large share: {largest}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_sweep_goes_round_once_and_starts_over() {
        let (_dir, store) = temp_store();
        let cache = partitioned_cache(2);
        let mut sweep = Sweep::new();
        assert!(rounds(&cache, &mut sweep, 10).await.concat().is_empty());
        for id in 1..=50 {
            ack(&cache, &store, id, 1).await;
        }
        // A long pause: the next step is at most the whole key space.
        tokio::time::advance(Duration::from_secs(600)).await;
        let first = rounds(&cache, &mut sweep, 1).await.concat();
        assert!(!first.is_empty() && first.len() <= 50);
        // Past the end of the key space, the sweep starts over.
        ack(&cache, &store, 1, 2).await;
        let later = rounds(&cache, &mut sweep, 300).await.concat();
        assert!(later.contains(&1), "user 1 is taken again: {later:?}");
    }
}
