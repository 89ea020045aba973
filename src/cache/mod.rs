//! The partitioned LRU cache of read states.
//!
//! Users map to partitions by hash, and all of a user's states live in one
//! LRU entry, so a connect is one lookup and a miss is one store load. Each
//! partition is a segmented LRU (see `segmented`: users loaded and not used
//! again are evicted first, so a fan-out to cold users cannot flush the hot
//! set) behind a `parking_lot` mutex: every method takes
//! it briefly and never across an `.await` (the lock guards plain memory
//! work only; store I/O happens outside it), which is why a blocking mutex
//! beats an async one here. Capacity is counted in read states.
//!
//! A miss loads the user once however many requests wait for it (single
//! flight; see `load`). A dirty user leaving the LRU moves to the
//! partition's `evicting` map until the flusher has written it, and a
//! request for that user takes it back from there, so no read ever sees the
//! older stored state.
//!
//! Dirty users are put in coarse timer buckets (one per flush tick) that the
//! flusher drains; see `write_behind` and `flush`. Mentions of users not in
//! memory may wait in an inbox for the users' next load; see `inbox`. With
//! scale-out, a [`ServingGate`] says which users this instance may serve,
//! and a slot's users leave the cache when it stops serving them; see
//! `handoff`.

mod entry;
mod handoff;
mod inbox;
mod load;
mod metrics;
mod segmented;
mod stats;
mod sweep;
mod txn;
mod write_behind;

pub use entry::StateView;
pub use handoff::{Evicted, ServingGate};
pub use inbox::Deferral;
pub use metrics::CacheMetrics;
pub use stats::CacheStats;
use txn::TxnCounts;
pub use txn::{AppliedChange, ChangeHook, Delta, DeltaLimits, UserTxn};
pub use write_behind::FlushJob;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::{LeaseExpired, VersionClock, unix_micros};
use crate::ids::UserId;
use crate::store::{LoadPriority, Store, StoreError};
use entry::UserEntry;
use load::Miss;
use segmented::SegmentedLru;
use stats::PartitionStats;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The user was not cached and the store could not load it.
    #[error("loading the user's read states failed: {0}")]
    Load(#[from] StoreError),
    /// Too many states wait to be written; the store is slow or down.
    #[error("write backlog full: {dirty} dirty read states wait for the store")]
    Backlog { dirty: usize },
    /// No version may be handed out: the store has not recorded a new
    /// version lease in time.
    #[error(transparent)]
    LeaseExpired(#[from] LeaseExpired),
    /// This instance does not serve the user (any more): its slot is not
    /// held, or is being handed off (see [`ServingGate`]).
    #[error("user_id {user_id} is not served by this instance now")]
    NotServed { user_id: u64 },
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub capacity: usize,
    pub partitions: usize,
    pub max_tracked_mentions: usize,
    pub max_dirty_states: usize,
    pub flush_delay: Duration,
    pub flush_tick: Duration,
}

/// The cache.
pub struct Cache {
    partitions: Box<[Mutex<Partition>]>,
    hasher: ahash::RandomState,
    /// The configured capacity; each partition holds its share, rounded up.
    capacity: AtomicUsize,
    capacity_per_partition: AtomicUsize,
    max_tracked_mentions: usize,
    max_dirty_states: AtomicUsize,
    /// Dirty states, cached or evicting.
    dirty: AtomicUsize,
    /// Mentions waiting in inboxes (see `inbox`).
    deferred: AtomicUsize,
    clock: VersionClock,
    epoch: Instant,
    flush_delay_ms: AtomicU64,
    flush_tick: Duration,
    /// Wakes the flusher when a dirty user was evicted.
    evicted: Notify,
    /// Wakes the deferred loader when a user got an inbox.
    inbox_ready: Notify,
    /// With scale-out: which users this instance may serve now. Set once.
    gate: OnceLock<Arc<dyn ServingGate>>,
    /// Hears every applied change, once set (see [`ChangeHook`]).
    hook: OnceLock<Arc<dyn ChangeHook>>,
}

struct Partition {
    lru: SegmentedLru<UserEntry>,
    /// Capacity used by the LRU entries: their states, counting a user
    /// with none as one (so reads of empty users cannot grow the cache
    /// without bound).
    weight: usize,
    /// Extras (pin and mention records) held by the LRU entries.
    extras: usize,
    /// Users being loaded; waiters hold a receiver and wake when the loader
    /// drops its sender.
    loading: HashMap<UserId, load::Flight>,
    /// Users of `loading` whose slot stopped being served during the load:
    /// the rows read may be older than the store now holds, so the load
    /// must not place them (see `handoff`).
    stale_loads: HashSet<UserId>,
    /// Dirty users evicted from the LRU, waiting for (or in) their write.
    evicting: HashMap<UserId, UserEntry>,
    /// Dirty users of slots this instance no longer serves, waiting for (or
    /// in) their write: never served from, only written (see `handoff`).
    released: HashMap<UserId, UserEntry>,
    /// Users put in `evicting` or `released` since the flusher last looked:
    /// the ones that need a write started.
    evicted: Vec<UserId>,
    /// Flush timer buckets: (due tick, users), due ticks ascending. A user
    /// may be listed after it left the bucket's care (evicted or swept
    /// meanwhile); `waiting` holds only the users that are really waiting.
    schedule: VecDeque<(u64, Vec<UserId>)>,
    /// The cached users waiting for their write (`scheduled` set), in key
    /// order: the flusher's sweep takes them a key range at a time.
    waiting: BTreeSet<UserId>,
    /// Deferred mentions of users neither cached nor evicting.
    inbox: HashMap<UserId, inbox::Inbox>,
    /// Users whose inbox needs a load, since the loader last looked.
    inbox_ready: Vec<UserId>,
    stats: PartitionStats,
}

impl Partition {
    /// Takes `entry`, just removed from the LRU, out of the partition's
    /// sizes and out of the users waiting for their write.
    #[inline]
    fn uncount_removed(&mut self, user_id: UserId, entry: &mut UserEntry) {
        self.weight -= entry.weight();
        self.extras -= entry.sizes().1;
        self.unschedule(user_id, entry);
    }

    /// Marks a cached user as no longer waiting for its write.
    #[inline]
    fn unschedule(&mut self, user_id: UserId, entry: &mut UserEntry) {
        if entry.scheduled {
            entry.scheduled = false;
            self.waiting.remove(&user_id);
        }
    }
}

impl Cache {
    /// Creates an empty cache whose versions start above `version_floor`.
    pub fn new(settings: &CacheSettings, version_floor: u64) -> Self {
        let partitions = settings.partitions.max(1);
        Self {
            partitions: (0..partitions)
                .map(|_| {
                    Mutex::new(Partition {
                        lru: SegmentedLru::new(),
                        weight: 0,
                        extras: 0,
                        loading: HashMap::new(),
                        stale_loads: HashSet::new(),
                        evicting: HashMap::new(),
                        released: HashMap::new(),
                        evicted: Vec::new(),
                        schedule: VecDeque::new(),
                        waiting: BTreeSet::new(),
                        inbox: HashMap::new(),
                        inbox_ready: Vec::new(),
                        stats: PartitionStats::default(),
                    })
                })
                .collect(),
            hasher: ahash::RandomState::with_seeds(0x5eed, 0x1ead, 0x57a7, 0xe5),
            capacity: AtomicUsize::new(settings.capacity),
            capacity_per_partition: AtomicUsize::new(settings.capacity.div_ceil(partitions)),
            max_tracked_mentions: settings.max_tracked_mentions,
            max_dirty_states: AtomicUsize::new(settings.max_dirty_states),
            dirty: AtomicUsize::new(0),
            deferred: AtomicUsize::new(0),
            clock: VersionClock::with_floor(version_floor),
            epoch: Instant::now(),
            flush_delay_ms: AtomicU64::new(duration_millis(settings.flush_delay)),
            flush_tick: settings.flush_tick.max(Duration::from_millis(1)),
            evicted: Notify::new(),
            inbox_ready: Notify::new(),
            gate: OnceLock::new(),
            hook: OnceLock::new(),
        }
    }

    /// Tells the change hook, if one is set, that the selected users are
    /// no longer served here (see [`ChangeHook::released`]).
    pub fn tell_released(&self, selects: &dyn Fn(UserId) -> bool) {
        if let Some(hook) = self.hook.get() {
            hook.released(selects);
        }
    }

    /// Makes `hook` hear every change applied from now on (see
    /// [`ChangeHook`]). Returns false (and changes nothing) if a hook was
    /// set before.
    pub fn set_change_hook(&self, hook: Arc<dyn ChangeHook>) -> bool {
        self.hook.set(hook).is_ok()
    }

    /// Returns the number of partitions.
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Returns the number of dirty states (cached or being evicted).
    pub fn dirty_states(&self) -> usize {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Returns the capacity in use (cached states, an empty user counting
    /// as one) and the number of cached users.
    pub fn resident(&self) -> (usize, usize) {
        self.partitions
            .iter()
            .fold((0, 0), |(weight, users), partition| {
                let partition = partition.lock();
                (weight + partition.weight, users + partition.lru.len())
            })
    }

    /// Runs `change` on the user's states, loading them first if needed.
    /// Refused while the dirty backlog is full or the version lease has run
    /// out.
    pub async fn write<R>(
        &self,
        store: &dyn Store,
        user_id: UserId,
        change: impl FnOnce(&mut UserTxn<'_>) -> R,
    ) -> Result<R, CacheError> {
        self.write_with_priority(store, user_id, LoadPriority::Urgent, change)
            .await
    }

    /// Like [`Cache::write`], with the priority of the user's load if it is
    /// not cached: a fan-out's cold users load in the background, behind
    /// the loads that single requests wait for.
    pub async fn write_with_priority<R>(
        &self,
        store: &dyn Store,
        user_id: UserId,
        priority: LoadPriority,
        change: impl FnOnce(&mut UserTxn<'_>) -> R,
    ) -> Result<R, CacheError> {
        self.check_backlog()?;
        // The lease is checked when the change is applied, after any load,
        // under the partition lock: that is when versions are handed out.
        let clock = &self.clock;
        let checked = |txn: &mut UserTxn<'_>| -> Result<R, CacheError> {
            clock.check_lease_at(unix_micros())?;
            Ok(change(txn))
        };
        self.access(store, user_id, priority, checked).await?
    }

    /// Runs `read` on the user's states, loading them first if needed.
    pub async fn read<R>(
        &self,
        store: &dyn Store,
        user_id: UserId,
        read: impl FnOnce(&mut UserTxn<'_>) -> R,
    ) -> Result<R, CacheError> {
        self.access(store, user_id, LoadPriority::Urgent, read)
            .await
    }

    /// Runs `work` on a cached user; gives `work` back when the user is not
    /// cached. Never waits.
    #[inline]
    pub fn try_write<R, F>(&self, user_id: UserId, work: F) -> Result<Result<R, F>, CacheError>
    where
        F: FnOnce(&mut UserTxn<'_>) -> R,
    {
        self.check_backlog()?;
        let mut partition = self.partition(user_id).lock();
        self.check_served(user_id)?;
        self.clock.check_lease_at(unix_micros())?;
        Ok(self.try_apply(&mut partition, user_id, work, Use::Uncounted))
    }

    /// Refuses a change while the states and deferred mentions waiting for
    /// the store reach the backlog limit.
    fn check_backlog(&self) -> Result<(), CacheError> {
        let dirty = self.dirty_states() + self.deferred_mentions();
        if dirty >= self.max_dirty_states.load(Ordering::Relaxed) {
            return Err(CacheError::Backlog { dirty });
        }
        Ok(())
    }

    /// Applies `work` if the user is cached (taking it back from `evicting`
    /// if needed), then schedules and evicts as the change requires.
    // Inlined into each caller, as it was before the transaction moved to
    // its own module: as a call, a cached Ack cost 3% more instructions
    // (BENCHMARKS.md, "The engine redesign").
    #[inline]
    fn try_apply<R, F>(
        &self,
        partition: &mut Partition,
        user_id: UserId,
        work: F,
        the_use: Use,
    ) -> Result<R, F>
    where
        F: FnOnce(&mut UserTxn<'_>) -> R,
    {
        self.try_apply_since(partition, user_id, work, the_use, None)
    }

    /// [`Cache::try_apply`] for a change made at `since` (now if `None`):
    /// a user it makes dirty is due for its write one flush delay after it.
    #[inline]
    fn try_apply_since<R, F>(
        &self,
        partition: &mut Partition,
        user_id: UserId,
        work: F,
        the_use: Use,
        since: Option<Instant>,
    ) -> Result<R, F>
    where
        F: FnOnce(&mut UserTxn<'_>) -> R,
    {
        if !partition.lru.contains(&user_id) {
            let Some(mut entry) = partition.evicting.remove(&user_id) else {
                return Err(work);
            };
            // Back in the LRU: the flusher's timer owns it again.
            entry.writing = false;
            entry.scheduled = false;
            let dirty = entry.dirty_count() > 0;
            partition.weight += entry.weight();
            partition.extras += entry.sizes().1;
            partition.lru.put(user_id, entry);
            if dirty {
                self.schedule(partition, user_id);
            }
            self.evict_over_capacity(partition, Some(user_id));
        }
        let entry = match the_use {
            Use::Request | Use::Uncounted => partition.lru.get_mut(&user_id),
            Use::AfterLoad => partition.lru.peek_mut(&user_id),
        };
        let Some(entry) = entry else {
            return Err(work);
        };
        let weight_before = entry.weight();
        let extras_before = entry.sizes().1;
        let mut txn = UserTxn::new(
            user_id,
            entry,
            &self.clock,
            self.max_tracked_mentions,
            self.hook.get().map(|hook| hook.as_ref()),
        );
        let result = work(&mut txn);
        let TxnCounts {
            changed,
            newly_dirty,
            changed_states,
        } = txn.finish();
        let weight_added = entry.weight() - weight_before;
        partition.extras = partition.extras + entry.sizes().1 - extras_before;
        partition.stats.hits += u64::from(the_use == Use::Request);
        partition.stats.changed_states += changed_states as u64;
        partition.stats.newly_dirty += newly_dirty as u64;
        let needs_schedule = changed && !entry.scheduled;
        if newly_dirty > 0 {
            self.dirty.fetch_add(newly_dirty, Ordering::Relaxed);
        }
        if needs_schedule {
            self.schedule_since(partition, user_id, since);
        }
        if weight_added > 0 {
            partition.weight += weight_added;
            self.evict_over_capacity(partition, Some(user_id));
        }
        Ok(result)
    }

    /// Evicts least recently used users until the partition is within its
    /// capacity, keeping `keep` (the user being used) and at least one user.
    fn evict_over_capacity(&self, partition: &mut Partition, keep: Option<UserId>) {
        let capacity = self.capacity_per_partition.load(Ordering::Relaxed);
        let mut evicted_dirty = false;
        while partition.weight > capacity && partition.lru.len() > 1 {
            let Some((user_id, mut entry)) = partition.lru.pop_lru_except(keep.as_ref()) else {
                break;
            };
            partition.uncount_removed(user_id, &mut entry);
            if entry.dirty_count() > 0 {
                entry.writing = false;
                partition.evicting.insert(user_id, entry);
                partition.evicted.push(user_id);
                partition.stats.evictions_dirty += 1;
                evicted_dirty = true;
            } else {
                partition.stats.evictions_clean += 1;
            }
        }
        if evicted_dirty {
            self.evicted.notify_one();
        }
    }

    /// Changes the capacity (in read states) on a running cache. Shrinking
    /// evicts at once; evicted dirty users are written by the flusher.
    pub fn set_capacity(&self, capacity: usize) {
        let per_partition = capacity.max(1).div_ceil(self.partitions.len());
        self.capacity.store(capacity, Ordering::Relaxed);
        self.capacity_per_partition
            .store(per_partition, Ordering::Relaxed);
        for partition in self.partitions.iter() {
            self.evict_over_capacity(&mut partition.lock(), None);
        }
    }

    /// Changes the dirty backlog past which writes are refused.
    pub fn set_max_dirty_states(&self, max_dirty_states: usize) {
        self.max_dirty_states
            .store(max_dirty_states, Ordering::Relaxed);
    }

    /// Changes the flush delay of states that become dirty from now on.
    pub fn set_flush_delay(&self, delay: Duration) {
        self.flush_delay_ms
            .store(duration_millis(delay), Ordering::Relaxed);
    }

    /// Returns the flush delay in force.
    pub fn flush_delay(&self) -> Duration {
        Duration::from_millis(self.flush_delay_ms.load(Ordering::Relaxed))
    }

    /// Returns the version clock.
    pub fn clock(&self) -> &VersionClock {
        &self.clock
    }

    /// Returns the index of the partition that holds `user_id`.
    pub fn partition_of(&self, user_id: UserId) -> usize {
        self.hasher.hash_one(user_id.get()) as usize % self.partitions.len()
    }

    fn partition(&self, user_id: UserId) -> &Mutex<Partition> {
        &self.partitions[self.partition_of(user_id)]
    }
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How a cached user is being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// A request's first look: a hit if cached, and a use that promotes
    /// the user in the segmented LRU.
    Request,
    /// A use that promotes but is not counted: a fan-out's cached users,
    /// and a request's look after waiting for another request's load of
    /// the same user (a second use; its miss is already counted).
    Uncounted,
    /// The use that a load was for: the load itself placed the user, so
    /// this neither counts nor promotes (a user seen once stays on
    /// probation).
    AfterLoad,
}

/// Shares the cache with the service and the flusher.
pub type SharedCache = Arc<Cache>;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
