//! A store that wraps another and changes only what differs: a
//! [`StoreLayer`] names its inner store, and every operation goes through
//! its [`StoreLayer::around`] to the inner store's own. Each layer (timing,
//! injected latency, the tests' faults and counters) writes only its
//! difference, not six forwards.

use std::sync::Arc;

use super::{LoadPriority, RowWrite, Store, StoreFuture, UserRows};
use crate::ids::UserId;

/// One operation of [`Store`] and its arguments, as a layer sees it in
/// [`StoreLayer::around`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    LoadUser {
        user_id: UserId,
        priority: LoadPriority,
    },
    /// A batch of `rows` rows.
    WriteBatch {
        rows: usize,
    },
    LoadVersionFloor,
    RecordVersionFloor {
        floor: u64,
    },
    Sync,
    PurgeTombstones {
        below: u64,
        max: usize,
    },
}

/// A store over an inner one, which changes only what differs. Every type
/// that implements it is a [`Store`] whose operations go through
/// [`StoreLayer::around`]. (Its methods are named apart from [`Store`]'s,
/// so that a layer's own type never has two methods of one name.)
pub trait StoreLayer: Send + Sync + 'static {
    /// Returns the wrapped store.
    fn inner(&self) -> &dyn Store;

    /// Returns the name [`Store::backend`] reports: the inner store's by
    /// default.
    fn backend_name(&self) -> &'static str {
        self.inner().backend()
    }

    /// Wraps one operation; `call` starts it on the inner store. The
    /// default starts it and adds nothing (no allocation).
    fn around<'a, T: Send + 'a>(
        &'a self,
        _operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        call(self.inner())
    }
}

impl<Layer: StoreLayer> Store for Layer {
    fn backend(&self) -> &'static str {
        self.backend_name()
    }

    fn load_user(&self, user_id: UserId, priority: LoadPriority) -> StoreFuture<'_, UserRows> {
        let operation = Operation::LoadUser { user_id, priority };
        self.around(operation, move |inner| inner.load_user(user_id, priority))
    }

    fn expedite_load(&self, user_id: UserId) {
        self.inner().expedite_load(user_id);
    }

    fn write_batch(&self, rows: Arc<[RowWrite]>) -> StoreFuture<'_, ()> {
        let operation = Operation::WriteBatch { rows: rows.len() };
        self.around(operation, move |inner| inner.write_batch(rows))
    }

    fn load_version_floor(&self) -> StoreFuture<'_, u64> {
        self.around(Operation::LoadVersionFloor, |inner| {
            inner.load_version_floor()
        })
    }

    fn record_version_floor(&self, floor: u64) -> StoreFuture<'_, ()> {
        self.around(Operation::RecordVersionFloor { floor }, move |inner| {
            inner.record_version_floor(floor)
        })
    }

    fn sync(&self) -> StoreFuture<'_, ()> {
        self.around(Operation::Sync, |inner| inner.sync())
    }

    fn purge_tombstones(&self, below: u64, max: usize) -> StoreFuture<'_, usize> {
        let operation = Operation::PurgeTombstones { below, max };
        self.around(operation, move |inner| inner.purge_tombstones(below, max))
    }

    fn deletion_horizon(&self) -> u64 {
        self.inner().deletion_horizon()
    }
}
