//! The store contract, written once: what the cache, the write-behind and
//! the tombstone purge rely on whichever database holds the rows (see the
//! `Store` trait in `src/store/mod.rs`). `tests/store_contract.rs` runs
//! every check here against every backend. Where backends legitimately
//! differ, the backend declares it in its [`Capabilities`] and a check
//! asserts what that capability promises, so no backend keeps a copy.

use std::sync::Arc;

use readstates::clock::unix_micros;
use readstates::ids::{ChannelId, MessageId, UserId};
use readstates::read_state::{Mentions, ReadState};
use readstates::store::{LoadPriority, RowWrite, Store, Tombstone, UserRows};

use super::cluster::{put, state, write};

/// How a backend's deletion markers (tombstones) go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstones {
    /// `purge_tombstones` removes those below its cutoff, oldest first, at
    /// most `max` a call, and returns how many it removed (the embedded
    /// store).
    Purged,
    /// The database expires them by itself (a TTL): `purge_tombstones`
    /// removes nothing and returns 0, and every delete keeps guarding its
    /// row until it expires (the cluster store).
    Expire,
}

/// Who may open a backend's storage at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// One process owns the storage (a file lock): a second writer is the
    /// same store.
    One,
    /// Several stores may open it at once, as a cluster's instances do: a
    /// second writer is a store of its own.
    Many,
}

/// Where a backend legitimately differs from the others.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    pub tombstones: Tombstones,
    pub instances: Instances,
}

/// A store backend under the contract: one per test, over storage of its
/// own.
// The trait is generic-only (checks take `&mut impl Backend`) and its
// futures are awaited on the test's own runtime, so the `Send` bounds that
// the lint asks public async traits to spell out are not needed.
#[allow(async_fn_in_trait)]
pub trait Backend: Sized {
    /// Returns the backend for the test named `test` (`module::check`), or
    /// `None`, having said why, when the test is skipped.
    async fn start(test: &str) -> Option<Self>;

    /// Returns what this backend does where the contract leaves a choice.
    fn capabilities(&self) -> Capabilities;

    /// Opens a store over this backend's storage, empty on the first call.
    /// With [`Instances::One`] every store opened before must have been
    /// dropped.
    async fn open(&mut self) -> Arc<dyn Store>;

    /// Removes the storage after a passing check; a failing one leaves it
    /// for inspection.
    async fn finish(self);
}

/// Returns a second writer of the storage `first` is open on: another
/// instance where the backend has several, else `first` itself.
async fn another_writer(backend: &mut impl Backend, first: &Arc<dyn Store>) -> Arc<dyn Store> {
    match backend.capabilities().instances {
        Instances::Many => backend.open().await,
        Instances::One => Arc::clone(first),
    }
}

/// Drops `stores`, every handle on the storage, and opens it again, as a
/// restart does: what loads afterwards was read back from the storage.
async fn reopen(backend: &mut impl Backend, stores: Vec<Arc<dyn Store>>) -> Arc<dyn Store> {
    drop(stores);
    backend.open().await
}

fn user(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

async fn load(store: &dyn Store, user_id: u64) -> UserRows {
    store
        .load_user(user(user_id), LoadPriority::Urgent)
        .await
        .unwrap_or_else(|error| panic!("loading user {user_id} failed: {error}"))
}

/// A deletion of (user, channel) at `version`.
fn tombstone(user_id: u64, channel: u64, version: u64) -> RowWrite {
    write(user_id, state(channel, 0, version), true)
}

/// A deletion marker of `channel` at `version`, as a load returns it.
fn deletion(channel: u64, version: u64) -> Tombstone {
    Tombstone {
        channel_id: ChannelId::new(channel).unwrap(),
        version,
    }
}

/// Purges and checks the count the backend's capability promises: `purged`
/// where it purges, 0 where its tombstones expire by themselves.
async fn purge(backend: &impl Backend, store: &dyn Store, below: u64, max: usize, purged: usize) {
    let expected = after_purge(backend, purged, 0);
    let removed = store.purge_tombstones(below, max).await.unwrap();
    assert_eq!(removed, expected, "purge below {below}, at most {max}");
}

/// Returns `purged` where the backend purges tombstones, else `kept`: what
/// a load shows after a purge depends on whether it removed anything.
fn after_purge<T>(backend: &impl Backend, purged: T, kept: T) -> T {
    match backend.capabilities().tombstones {
        Tombstones::Purged => purged,
        Tombstones::Expire => kept,
    }
}

// ---------------------------------------------------------------------------
// Versions: the last write wins by version
// ---------------------------------------------------------------------------

/// A stale write never overwrites a newer row, a delete wins over an older
/// write and counts in the user's version, and a newer write brings the
/// state back: whichever instance writes.
pub async fn stale_writes_never_overwrite_newer_rows(backend: &mut impl Backend) {
    let first = backend.open().await;
    let second = another_writer(backend, &first).await;

    put(first.as_ref(), vec![write(7, state(1, 50, 10), false)]).await;
    put(second.as_ref(), vec![write(7, state(1, 40, 9), false)]).await;
    assert_eq!(
        load(first.as_ref(), 7).await.states,
        [state(1, 50, 10)],
        "a stale write loses"
    );

    put(second.as_ref(), vec![tombstone(7, 1, 11)]).await;
    put(first.as_ref(), vec![write(7, state(1, 60, 10), false)]).await;
    let rows = load(first.as_ref(), 7).await;
    assert!(
        rows.states.is_empty(),
        "a delete wins over an older write: {rows:?}"
    );
    assert_eq!(rows.version, 11, "the user's version counts the deletion");

    put(first.as_ref(), vec![write(7, state(1, 70, 12), false)]).await;
    assert_eq!(load(second.as_ref(), 7).await.states, [state(1, 70, 12)]);
    assert_eq!(load(first.as_ref(), 7).await.states, [state(1, 70, 12)]);
}

/// A deleted state stays deleted whatever stale writes arrive, from either
/// instance and in any order, across a restart; a newer write brings it
/// back with nothing of the deleted one; a stale delete loses; and deleted
/// again, it again beats a stale write.
pub async fn a_deleted_state_loses_to_stale_writes_and_comes_back_with_a_newer_one(
    backend: &mut impl Backend,
) {
    let first = backend.open().await;
    let second = another_writer(backend, &first).await;
    let mut full = state(1, 50, 10);
    full.last_pin_timestamp_ms = 7;
    full.updated_at_ms = 8;
    full.mentions = Mentions::from_parts(vec![60, 61], 2, 70);
    put(first.as_ref(), vec![write(7, full, false)]).await;
    put(second.as_ref(), vec![tombstone(7, 1, 11)]).await;
    // Stale writes older than the delete, from either store, in any order.
    put(first.as_ref(), vec![write(7, state(1, 60, 10), false)]).await;
    put(second.as_ref(), vec![write(7, state(1, 55, 9), false)]).await;
    let first = reopen(backend, vec![first, second]).await;
    let rows = load(first.as_ref(), 7).await;
    assert!(rows.states.is_empty(), "the delete wins: {rows:?}");
    assert_eq!(rows.version, 11);

    // Deleted, then re-acked: the newer write brings the state back, with
    // nothing of the deleted one, and a stale delete loses.
    let second = another_writer(backend, &first).await;
    put(first.as_ref(), vec![write(7, state(1, 80, 12), false)]).await;
    put(second.as_ref(), vec![tombstone(7, 1, 11)]).await;
    let first = reopen(backend, vec![first, second]).await;
    let rows = load(first.as_ref(), 7).await;
    assert_eq!(rows.states, [state(1, 80, 12)]);
    assert_eq!(rows.version, 12);

    // Deleted again: and again a stale write loses.
    let second = another_writer(backend, &first).await;
    put(second.as_ref(), vec![tombstone(7, 1, 13)]).await;
    put(first.as_ref(), vec![write(7, state(1, 80, 12), false)]).await;
    let rows = load(first.as_ref(), 7).await;
    assert!(rows.states.is_empty(), "{rows:?}");
    assert_eq!(rows.version, 13);
}

/// Within one batch only the newest write of a row counts, in whichever
/// order the batch lists them; a user's version is the highest written,
/// even a deletion's above a live row's.
pub async fn the_newest_duplicate_in_a_batch_wins(backend: &mut impl Backend) {
    let store = backend.open().await;
    put(
        store.as_ref(),
        vec![
            write(1, state(1, 9, 3), false),
            write(1, state(1, 5, 2), false),
            write(2, state(1, 5, 2), false),
            write(2, state(1, 9, 3), false),
        ],
    )
    .await;
    assert_eq!(load(store.as_ref(), 1).await.states, [state(1, 9, 3)]);
    assert_eq!(load(store.as_ref(), 2).await.states, [state(1, 9, 3)]);

    put(
        store.as_ref(),
        vec![
            write(8, state(1, 9, 30), false),
            write(8, state(1, 5, 20), false),
            tombstone(8, 2, 40),
        ],
    )
    .await;
    let rows = load(store.as_ref(), 8).await;
    assert_eq!(rows.states, [state(1, 9, 30)]);
    assert_eq!(rows.version, 40);
}

/// A user whose only rows are deletions loads no state, and the deletions'
/// version: a reloaded user's version never goes backwards.
pub async fn a_user_with_only_deletions_keeps_its_version(backend: &mut impl Backend) {
    let store = backend.open().await;
    put(store.as_ref(), vec![tombstone(1, 2, 4), tombstone(1, 3, 3)]).await;
    let rows = load(store.as_ref(), 1).await;
    assert!(rows.states.is_empty(), "{rows:?}");
    assert_eq!(rows.deleted, [deletion(2, 4), deletion(3, 3)]);
    assert_eq!(rows.version, 4);
}

// ---------------------------------------------------------------------------
// Deletions returned by loads, and the deletion horizon
// ---------------------------------------------------------------------------

/// A deleted pair loads as a deletion with its deletion's version, in
/// channel order among the others, and not as a state: whichever instance
/// wrote it, after stale writes, across a restart. A newer write revives
/// it (a state again, no longer a deletion); deleted again, it loads with
/// the newer deletion's version.
pub async fn a_deleted_pair_loads_as_a_deletion_until_a_newer_write_revives_it(
    backend: &mut impl Backend,
) {
    let first = backend.open().await;
    let second = another_writer(backend, &first).await;
    put(
        first.as_ref(),
        vec![
            write(3, state(1, 50, 10), false),
            write(3, state(2, 60, 10), false),
        ],
    )
    .await;
    // Channel 4 was never live; the batch lists the channels out of order.
    put(
        second.as_ref(),
        vec![tombstone(3, 4, 12), tombstone(3, 1, 11)],
    )
    .await;
    put(first.as_ref(), vec![write(3, state(1, 70, 9), false)]).await;
    let rows = load(first.as_ref(), 3).await;
    assert_eq!(rows.states, [state(2, 60, 10)], "the stale write lost");
    assert_eq!(rows.deleted, [deletion(1, 11), deletion(4, 12)]);
    assert_eq!(rows.version, 12);

    let first = reopen(backend, vec![first, second]).await;
    let rows = load(first.as_ref(), 3).await;
    assert_eq!(rows.states, [state(2, 60, 10)]);
    assert_eq!(rows.deleted, [deletion(1, 11), deletion(4, 12)]);

    let second = another_writer(backend, &first).await;
    put(second.as_ref(), vec![write(3, state(1, 80, 13), false)]).await;
    let rows = load(first.as_ref(), 3).await;
    assert_eq!(
        rows.states,
        [state(1, 80, 13), state(2, 60, 10)],
        "the newer write revived channel 1"
    );
    assert_eq!(rows.deleted, [deletion(4, 12)]);
    assert_eq!(rows.version, 13);

    put(first.as_ref(), vec![tombstone(3, 1, 14)]).await;
    let rows = load(second.as_ref(), 3).await;
    assert_eq!(rows.states, [state(2, 60, 10)]);
    assert_eq!(rows.deleted, [deletion(1, 14), deletion(4, 12)]);
    assert_eq!(rows.version, 14);
}

/// Reads the deletion horizon and checks that it did not go below
/// `previous`; returns it.
fn horizon_after(store: &dyn Store, previous: u64, when: &str) -> u64 {
    let horizon = store.deletion_horizon();
    assert!(
        horizon >= previous,
        "{when}: the horizon went from {previous} down to {horizon}"
    );
    horizon
}

/// The deletion horizon never decreases: not on writes, on purges (even one
/// with a lower cutoff), nor across a restart. Every deletion at or above
/// it loads. After a purge below B by a store that purges, it is at least
/// B: the purged deletions no longer load, those at or above it all do.
pub async fn the_deletion_horizon_never_decreases_and_every_deletion_above_it_loads(
    backend: &mut impl Backend,
) {
    let store = backend.open().await;
    let mut horizon = horizon_after(store.as_ref(), 0, "opened");
    // A deletion at a version as the clock hands them out: above the
    // horizon of a store that purged nothing newer, and of one whose
    // markers live longer than the horizon's margin (10 days by default).
    let recent = unix_micros();
    let all = [
        deletion(1, 10),
        deletion(2, 20),
        deletion(3, 30),
        deletion(6, recent),
    ];
    put(
        store.as_ref(),
        all.iter()
            .map(|marker| tombstone(4, marker.channel_id.get(), marker.version))
            .chain([write(4, state(5, 1, 25), false)])
            .collect(),
    )
    .await;
    horizon = horizon_after(store.as_ref(), horizon, "after a write");
    assert!(horizon <= recent, "horizon {horizon} above a new deletion");
    assert_eq!(load(store.as_ref(), 4).await.deleted, all);

    let below = 25;
    let removed = store.purge_tombstones(below, 100).await.unwrap();
    horizon = horizon_after(store.as_ref(), horizon, "after a purge");
    let rows = load(store.as_ref(), 4).await;
    match backend.capabilities().tombstones {
        Tombstones::Purged => {
            assert!(removed > 0, "the purge removed nothing");
            assert!(
                horizon >= below,
                "horizon {horizon} below the purge's cutoff {below}"
            );
            assert_eq!(rows.deleted, [deletion(3, 30), deletion(6, recent)]);
        }
        Tombstones::Expire => {
            assert_eq!(removed, 0);
            assert_eq!(rows.deleted, all, "markers go only when they expire");
        }
    }
    for marker in all.iter().filter(|marker| marker.version >= horizon) {
        assert!(
            rows.deleted.contains(marker),
            "{marker:?} is at or above the horizon {horizon}: {rows:?}"
        );
    }
    assert_eq!(rows.states, [state(5, 1, 25)]);

    store.purge_tombstones(5, 100).await.unwrap();
    horizon = horizon_after(store.as_ref(), horizon, "after a purge with a lower cutoff");
    let store = reopen(backend, vec![store]).await;
    horizon = horizon_after(store.as_ref(), horizon, "after a restart");
    let rows = load(store.as_ref(), 4).await;
    for marker in all.iter().filter(|marker| marker.version >= horizon) {
        assert!(rows.deleted.contains(marker), "{marker:?}: {rows:?}");
    }
}

/// Every field of a state survives the round trip, the largest ids and
/// timestamps included.
pub async fn every_field_survives_the_round_trip(backend: &mut impl Backend) {
    let first = backend.open().await;
    let second = another_writer(backend, &first).await;
    let full = ReadState {
        channel_id: ChannelId::new(i64::MAX as u64).unwrap(),
        last_message_id: MessageId::new(1_000).unwrap(),
        last_pin_timestamp_ms: u64::MAX,
        updated_at_ms: 1_700_000_000_000,
        version: 50,
        mentions: Mentions::from_parts(vec![1_001, 1_005, i64::MAX as u64], 3, 2_000),
    };
    put(second.as_ref(), vec![write(9, full.clone(), false)]).await;
    assert_eq!(
        load(first.as_ref(), 9).await.states,
        std::slice::from_ref(&full)
    );
    let store = reopen(backend, vec![first, second]).await;
    assert_eq!(load(store.as_ref(), 9).await.states, [full]);
}

// ---------------------------------------------------------------------------
// Users, loads and durability
// ---------------------------------------------------------------------------

/// Users are separate: a load returns the user's own states, in channel
/// order, and a user never written loads as nothing. Rows and the version
/// floor survive a reopen.
pub async fn users_are_separate_and_survive_a_reopen(backend: &mut impl Backend) {
    let store = backend.open().await;
    put(
        store.as_ref(),
        vec![
            write(1, state(5, 1, 1), false),
            write(2, state(4, 3, 1), false),
            write(2, state(3, 2, 1), false),
            write(3, state(1, 4, 1), false),
        ],
    )
    .await;
    store.record_version_floor(99).await.unwrap();
    store.record_version_floor(50).await.unwrap();
    store.sync().await.unwrap();

    let store = reopen(backend, vec![store]).await;
    assert_eq!(load(store.as_ref(), 1).await.states, [state(5, 1, 1)]);
    assert_eq!(
        load(store.as_ref(), 2).await.states,
        [state(3, 2, 1), state(4, 3, 1)]
    );
    assert_eq!(load(store.as_ref(), 3).await.states, [state(1, 4, 1)]);
    assert_eq!(load(store.as_ref(), 12_345).await, UserRows::default());
    assert_eq!(store.load_version_floor().await.unwrap(), 99);
}

/// The version floor starts at 0 and only goes up: the larger floor wins,
/// in either order and from any instance.
pub async fn the_version_floor_never_goes_down(backend: &mut impl Backend) {
    let first = backend.open().await;
    let second = another_writer(backend, &first).await;
    assert_eq!(first.load_version_floor().await.unwrap(), 0);
    first.record_version_floor(1_000).await.unwrap();
    second.record_version_floor(500).await.unwrap();
    assert_eq!(first.load_version_floor().await.unwrap(), 1_000);
    assert_eq!(second.load_version_floor().await.unwrap(), 1_000);
    second.record_version_floor(1_001).await.unwrap();
    assert_eq!(first.load_version_floor().await.unwrap(), 1_001);
}

/// Batches written at once, each of its own user, all land.
pub async fn concurrent_batches_all_land(backend: &mut impl Backend) {
    let store = backend.open().await;
    let writes = (1..=40u64).map(|user_id| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let rows =
                (1..=3).map(|channel| write(user_id, state(channel, user_id, user_id), false));
            store.write_batch(Arc::from(rows.collect::<Vec<_>>())).await
        })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap().unwrap();
    }
    for user_id in 1..=40u64 {
        let loaded = load(store.as_ref(), user_id).await;
        let expected: Vec<_> = (1..=3)
            .map(|channel| state(channel, user_id, user_id))
            .collect();
        assert_eq!(loaded.states, expected, "user {user_id}");
        assert_eq!(loaded.version, user_id, "user {user_id}");
    }
}

// ---------------------------------------------------------------------------
// Tombstones and the purge
// ---------------------------------------------------------------------------
//
// Which tombstones a purge removed shows in what a stale write does
// afterwards: it loses to a tombstone still there and lands where the
// tombstone is gone. The checks below probe with such writes. Which ones
// a store still holds as tombstones shows in a purge of at most 1: it
// spends its one on the oldest it holds, so a tombstone the store failed
// to forget (overwritten, purged, or one that lost as a stale write), being
// older, would be looked at instead and the purge would remove nothing.

/// A purge removes the tombstones below its cutoff and keeps newer ones
/// and live rows; a kept tombstone still counts in the user's version.
pub async fn a_purge_removes_old_tombstones_and_keeps_newer_ones_and_live_rows(
    backend: &mut impl Backend,
) {
    let store = backend.open().await;
    put(
        store.as_ref(),
        vec![
            write(1, state(1, 50, 10), false),
            tombstone(1, 2, 11),
            tombstone(1, 3, 20),
            tombstone(2, 1, 12),
            write(2, state(2, 60, 13), false),
        ],
    )
    .await;
    purge(backend, store.as_ref(), 15, 100, 2).await;

    let user1 = load(store.as_ref(), 1).await;
    assert_eq!(user1.states, [state(1, 50, 10)]);
    assert_eq!(user1.version, 20, "the kept tombstone still counts");
    let user2 = load(store.as_ref(), 2).await;
    assert_eq!(user2.states, [state(2, 60, 13)]);
    assert_eq!(user2.version, 13);
    purge(backend, store.as_ref(), 15, 100, 0).await;

    // Probes: stale writes land where a tombstone was purged (11 and 12,
    // below the cutoff) and lose to the one kept (20).
    put(
        store.as_ref(),
        vec![
            write(1, state(2, 5, 5), false),
            write(1, state(3, 5, 5), false),
            write(2, state(1, 5, 5), false),
        ],
    )
    .await;
    let user1 = load(store.as_ref(), 1).await;
    assert_eq!(
        user1.states,
        after_purge(
            backend,
            vec![state(1, 50, 10), state(2, 5, 5)],
            vec![state(1, 50, 10)]
        )
    );
    assert_eq!(user1.version, 20);
    let user2 = load(store.as_ref(), 2).await;
    assert_eq!(
        user2.states,
        after_purge(
            backend,
            vec![state(1, 5, 5), state(2, 60, 13)],
            vec![state(2, 60, 13)]
        )
    );
    // Only the tombstone at 20 is left to purge (at most 1: see below).
    purge(backend, store.as_ref(), 100, 1, 1).await;
    assert_eq!(
        load(store.as_ref(), 1).await.states,
        after_purge(
            backend,
            vec![state(1, 50, 10), state(2, 5, 5)],
            vec![state(1, 50, 10)]
        )
    );
}

/// A stale write older than a kept tombstone still loses. One older than a
/// purged tombstone lands: that is why the caller purges only below the
/// oldest version a write may still carry.
pub async fn a_stale_write_older_than_a_kept_tombstone_still_loses(backend: &mut impl Backend) {
    let store = backend.open().await;
    put(
        store.as_ref(),
        vec![tombstone(1, 1, 10), tombstone(1, 2, 30)],
    )
    .await;
    purge(backend, store.as_ref(), 20, 100, 1).await;

    put(
        store.as_ref(),
        vec![
            write(1, state(2, 99, 25), false),
            write(1, state(1, 77, 5), false),
        ],
    )
    .await;
    let user = load(store.as_ref(), 1).await;
    assert_eq!(
        user.states,
        after_purge(backend, vec![state(1, 77, 5)], vec![]),
        "the kept tombstone (30) beats the stale write (25)"
    );
    assert_eq!(user.version, 30);
    // The stale writes left the kept tombstone as it was, and added none.
    purge(backend, store.as_ref(), 100, 1, 1).await;
}

/// `max` bounds the work of one purge, which removes the oldest tombstones
/// first; a purge of at most 0 removes nothing.
pub async fn max_bounds_the_work_of_one_purge_oldest_first(backend: &mut impl Backend) {
    let store = backend.open().await;
    put(
        store.as_ref(),
        (1..=5)
            .map(|channel| tombstone(9, channel, 100 + channel))
            .collect(),
    )
    .await;
    purge(backend, store.as_ref(), 1_000, 2, 2).await;

    // Probes: the two oldest (channels 1 and 2) are gone, the rest kept.
    put(
        store.as_ref(),
        (1..=5)
            .map(|channel| write(9, state(channel, 1, 50), false))
            .collect(),
    )
    .await;
    let landed = after_purge(backend, vec![state(1, 1, 50), state(2, 1, 50)], vec![]);
    let rows = load(store.as_ref(), 9).await;
    assert_eq!(rows.states, landed);
    assert_eq!(rows.version, 105);

    purge(backend, store.as_ref(), 1_000, 2, 2).await;
    purge(backend, store.as_ref(), 1_000, 2, 1).await;
    purge(backend, store.as_ref(), 1_000, 2, 0).await;
    purge(backend, store.as_ref(), 1_000, 0, 0).await;
    // Every tombstone is gone: only the probes that landed are left.
    let rows = load(store.as_ref(), 9).await;
    assert_eq!(rows.states, landed);
    assert_eq!(rows.version, after_purge(backend, 50, 105));
}

/// A tombstone overwritten by a newer write is no longer purged (the live
/// row stays); a stale tombstone loses like any stale write.
pub async fn an_overwritten_tombstone_is_not_purged(backend: &mut impl Backend) {
    let store = backend.open().await;
    put(store.as_ref(), vec![tombstone(1, 1, 5), tombstone(1, 2, 6)]).await;
    put(
        store.as_ref(),
        vec![write(1, state(1, 40, 7), false), tombstone(1, 2, 8)],
    )
    .await;
    put(store.as_ref(), vec![tombstone(1, 1, 6)]).await;
    let rows = load(store.as_ref(), 1).await;
    assert_eq!(rows.states, [state(1, 40, 7)], "the stale tombstone lost");
    assert_eq!(rows.version, 8);

    // Only the tombstone at 8 is left (at most 1: see below).
    purge(backend, store.as_ref(), 100, 1, 1).await;
    let rows = load(store.as_ref(), 1).await;
    assert_eq!(rows.states, [state(1, 40, 7)], "the live row stays");
    assert_eq!(rows.version, after_purge(backend, 7, 8));
}
