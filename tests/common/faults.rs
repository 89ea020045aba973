//! A fault-injecting store for tests: wraps the embedded store, and lets a
//! test make any operation fail, slow down, or hang until released, at run
//! time. It counts every call (attempts, not only successes) and records
//! the cutoff of every tombstone purge it is asked for.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use readstates::ids::UserId;
use readstates::store::{
    EmbeddedStore, LoadPriority, RowWrite, Store, StoreError, StoreFuture, UserRows,
};
use tokio::sync::watch;

/// What an operation does instead of (or before) its real work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Works normally.
    None,
    /// Fails with `StoreError::Unavailable`.
    Error,
    /// Works, after this delay.
    Latency(Duration),
    /// Waits until the fault is changed, then does what the new one says.
    Hang,
}

/// The operations a fault can be set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Load,
    Write,
    /// Recording (and loading) the version floor: the version lease.
    VersionFloor,
    Sync,
    Purge,
}

const OPS: usize = 5;

/// One operation's fault and call counts.
struct Switch {
    fault: watch::Sender<Fault>,
    /// Calls started, and calls that are waiting in a hang now.
    calls: AtomicUsize,
    hanging: AtomicUsize,
}

/// The embedded store with switchable faults.
pub struct FaultyStore {
    pub inner: EmbeddedStore,
    switches: [Switch; OPS],
    rows_written: AtomicUsize,
    purge_cutoffs: Mutex<Vec<u64>>,
}

impl FaultyStore {
    pub fn open(data_dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            inner: EmbeddedStore::open(data_dir).unwrap(),
            switches: std::array::from_fn(|_| Switch {
                fault: watch::Sender::new(Fault::None),
                calls: AtomicUsize::new(0),
                hanging: AtomicUsize::new(0),
            }),
            rows_written: AtomicUsize::new(0),
            purge_cutoffs: Mutex::new(Vec::new()),
        })
    }

    /// Sets the fault of `op`; releases the calls that hang in it.
    pub fn set(&self, op: Op, fault: Fault) {
        self.switches[op as usize].fault.send_replace(fault);
    }

    /// Returns the calls of `op` so far (failed and hung ones included).
    pub fn calls(&self, op: Op) -> usize {
        self.switches[op as usize].calls.load(Ordering::SeqCst)
    }

    /// Returns the calls of `op` hanging now.
    pub fn hanging(&self, op: Op) -> usize {
        self.switches[op as usize].hanging.load(Ordering::SeqCst)
    }

    /// Returns the rows of the batches written successfully.
    pub fn rows_written(&self) -> usize {
        self.rows_written.load(Ordering::SeqCst)
    }

    /// Returns the `below` argument of every purge call so far.
    pub fn purge_cutoffs(&self) -> Vec<u64> {
        self.purge_cutoffs.lock().clone()
    }

    /// Applies the fault of `op` to one call.
    async fn enter(&self, op: Op) -> Result<(), StoreError> {
        let switch = &self.switches[op as usize];
        switch.calls.fetch_add(1, Ordering::SeqCst);
        let mut fault = *switch.fault.borrow();
        if fault == Fault::Hang {
            switch.hanging.fetch_add(1, Ordering::SeqCst);
            let mut changes = switch.fault.subscribe();
            let released = changes.wait_for(|fault| *fault != Fault::Hang).await;
            switch.hanging.fetch_sub(1, Ordering::SeqCst);
            fault = released.map_or(Fault::Error, |fault| *fault);
        }
        match fault {
            Fault::None | Fault::Hang => Ok(()),
            Fault::Error => Err(StoreError::Unavailable(format!("injected {op:?} error"))),
            Fault::Latency(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }
}

impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        "faulty-embedded"
    }

    fn load_user(&self, user_id: UserId, priority: LoadPriority) -> StoreFuture<'_, UserRows> {
        Box::pin(async move {
            self.enter(Op::Load).await?;
            self.inner.load_user(user_id, priority).await
        })
    }

    fn write_batch(&self, rows: Arc<[RowWrite]>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.enter(Op::Write).await?;
            let count = rows.len();
            self.inner.write_batch(rows).await?;
            self.rows_written.fetch_add(count, Ordering::SeqCst);
            Ok(())
        })
    }

    fn load_version_floor(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.enter(Op::VersionFloor).await?;
            self.inner.load_version_floor().await
        })
    }

    fn record_version_floor(&self, floor: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.enter(Op::VersionFloor).await?;
            self.inner.record_version_floor(floor).await
        })
    }

    fn sync(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.enter(Op::Sync).await?;
            self.inner.sync().await
        })
    }

    fn purge_tombstones(&self, below: u64, max: usize) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            self.enter(Op::Purge).await?;
            self.purge_cutoffs.lock().push(below);
            self.inner.purge_tombstones(below, max).await
        })
    }
}
