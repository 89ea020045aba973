//! The versions of the batches taken from the cache and not yet written:
//! the only writes that can still arrive at the store older than a row it
//! already holds (see `purge`).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::RowWrite;

/// The lowest row version of each unwritten batch, as a multiset. A plain
/// mutex: held for one map operation, never across an `.await`.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    lowest_versions: Mutex<BTreeMap<u64, usize>>,
}

/// One batch's entry in [`InFlight`]; removed when dropped (written, or
/// given up at the shutdown deadline).
#[derive(Debug)]
pub(super) struct InFlightBatch {
    registry: Arc<InFlight>,
    lowest_version: u64,
}

impl InFlight {
    /// Registers a batch of `rows` until the returned entry is dropped.
    pub(super) fn register(self: &Arc<Self>, rows: &[RowWrite]) -> InFlightBatch {
        let lowest_version = rows
            .iter()
            .map(|row| row.state.version)
            .min()
            .unwrap_or(u64::MAX);
        *self
            .lowest_versions
            .lock()
            .entry(lowest_version)
            .or_default() += 1;
        InFlightBatch {
            registry: Arc::clone(self),
            lowest_version,
        }
    }

    /// Returns the lowest row version among the unwritten batches.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.lowest_versions.lock().keys().next().copied()
    }
}

impl Drop for InFlightBatch {
    fn drop(&mut self) {
        let mut versions = self.registry.lowest_versions.lock();
        if let Some(count) = versions.get_mut(&self.lowest_version) {
            *count -= 1;
            if *count == 0 {
                versions.remove(&self.lowest_version);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ids::{ChannelId, UserId};
    use crate::read_state::ReadState;

    /// A row of user 1 at `version`.
    pub(crate) fn row(channel: u64, version: u64) -> RowWrite {
        let mut state = ReadState::empty(ChannelId::new(channel).unwrap());
        state.version = version;
        RowWrite {
            user_id: UserId::new(1).unwrap(),
            state,
            deleted: false,
        }
    }

    #[test]
    fn the_oldest_unwritten_version_is_tracked_until_its_batch_is_done() {
        let registry = Arc::new(InFlight::default());
        assert_eq!(registry.oldest(), None);
        let first = registry.register(&[row(1, 50), row(2, 30)]);
        let second = registry.register(&[row(3, 30)]);
        let third = registry.register(&[row(4, 70)]);
        assert_eq!(registry.oldest(), Some(30));
        drop(first);
        assert_eq!(registry.oldest(), Some(30), "another batch holds 30");
        drop(second);
        assert_eq!(registry.oldest(), Some(70));
        drop(third);
        assert_eq!(registry.oldest(), None);
    }
}
