//! Server-assigned versions and timestamps.
//!
//! A version is `max(previous version of the user + 1, now in Unix
//! microseconds, floor)`: strictly increasing across one user's changes, and
//! usable directly as a CQL write timestamp. The floor comes from a lease
//! recorded in the store ahead of the clock (see `flush`), so a restarted
//! server never hands out a version at or below one it handed out before,
//! even after a crash. Taking the wall clock on each change keeps the hot
//! path free of shared atomics.
//!
//! The lease is also a limit on this server: versions recorded as possibly
//! handed out stop at the lease, so once the clock reaches it (the store
//! could not be told of a new lease in time) changes must wait. The clock
//! says when that is; the cache refuses writes then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long before the lease's end changes are already refused: covers the
/// moment between the check and the version's clock read.
const LEASE_MARGIN_MICROS: u64 = 100_000;

/// Hands out versions.
#[derive(Debug)]
pub struct VersionClock {
    floor: AtomicU64,
    /// Versions below this may be handed out (recorded in the store).
    lease: AtomicU64,
}

impl Default for VersionClock {
    /// Returns a clock with no floor and no lease limit.
    fn default() -> Self {
        Self::with_floor(0)
    }
}

/// The version lease ran out: no version may be handed out until the store
/// records a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the version lease ran out at {lease} (the store could not record a new one)")]
pub struct LeaseExpired {
    pub lease: u64,
}

impl VersionClock {
    /// Returns a clock that never hands out a version at or below `floor`,
    /// with no lease limit until [`VersionClock::extend_lease`].
    pub fn with_floor(floor: u64) -> Self {
        Self {
            floor: AtomicU64::new(floor),
            lease: AtomicU64::new(u64::MAX),
        }
    }

    /// Records that the store now holds `lease`: versions below it may be
    /// handed out. Set at start-up, then only by the task that renews it.
    pub fn set_lease(&self, lease: u64) {
        self.lease.store(lease, Ordering::Relaxed);
    }

    /// Raises the floor: no version at or below `floor` is handed out from
    /// now on (a slot taken over from an instance whose versions may run
    /// up to `floor`).
    pub fn raise_floor(&self, floor: u64) {
        self.floor.fetch_max(floor, Ordering::Relaxed);
    }

    /// Returns the lease in force (`u64::MAX` without one).
    pub fn lease(&self) -> u64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Returns how long after `now_micros` versions may still be handed out.
    pub fn lease_left_at(&self, now_micros: u64) -> Duration {
        let end = self.lease().saturating_sub(LEASE_MARGIN_MICROS);
        Duration::from_micros(end.saturating_sub(now_micros))
    }

    /// Checks that a version may be handed out at `now_micros`.
    pub fn check_lease_at(&self, now_micros: u64) -> Result<(), LeaseExpired> {
        let lease = self.lease();
        if now_micros.saturating_add(LEASE_MARGIN_MICROS) >= lease {
            return Err(LeaseExpired { lease });
        }
        Ok(())
    }

    /// Returns the version of a change that follows `previous`.
    pub fn next_version(&self, previous: u64) -> u64 {
        self.next_version_at(previous, unix_micros())
    }

    /// Returns the version of a change that follows `previous`, made at
    /// `now_micros` (one clock read serves the version and the timestamp).
    pub fn next_version_at(&self, previous: u64, now_micros: u64) -> u64 {
        let floor = self.floor.load(Ordering::Relaxed).saturating_add(1);
        previous.saturating_add(1).max(now_micros).max(floor)
    }
}

/// Returns the wall clock in Unix microseconds (0 before 1970).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_respect_the_floor() {
        let clock = VersionClock::with_floor(u64::MAX / 2);
        let first = clock.next_version(0);
        assert!(first > u64::MAX / 2);
        assert!(clock.next_version(first) > first);
        let now = unix_micros();
        assert!(VersionClock::default().next_version(0) >= now);
    }

    #[test]
    fn versions_are_refused_once_the_lease_runs_out() {
        let clock = VersionClock::default();
        assert_eq!(clock.check_lease_at(unix_micros()), Ok(()), "no lease yet");
        clock.set_lease(10_000_000);
        assert_eq!(clock.check_lease_at(9_000_000), Ok(()));
        assert_eq!(
            clock.check_lease_at(10_000_000),
            Err(LeaseExpired { lease: 10_000_000 })
        );
        assert_eq!(clock.lease_left_at(10_000_000), Duration::ZERO);
        clock.set_lease(20_000_000);
        assert_eq!(clock.check_lease_at(10_000_000), Ok(()));
        assert_eq!(
            clock.lease_left_at(10_000_000),
            Duration::from_micros(9_900_000)
        );
    }
}
