//! Server-assigned versions and timestamps.
//!
//! A version is `max(previous version of the user + 1, now in Unix
//! microseconds, floor)`: strictly increasing across one user's changes, and
//! usable directly as a CQL write timestamp. The floor comes from a lease
//! recorded in the store ahead of the clock (see `flush`), so a restarted
//! server never hands out a version at or below one it handed out before,
//! even after a crash. Taking the wall clock on each change keeps the hot
//! path free of shared atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far ahead of the clock the recorded version lease runs.
pub const VERSION_LEASE_MICROS: u64 = 120_000_000;

/// Hands out versions.
#[derive(Debug, Default)]
pub struct VersionClock {
    floor: AtomicU64,
}

impl VersionClock {
    /// Returns a clock that never hands out a version at or below `floor`.
    pub fn with_floor(floor: u64) -> Self {
        Self {
            floor: AtomicU64::new(floor),
        }
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
}
