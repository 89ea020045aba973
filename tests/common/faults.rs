//! A fault-injecting store for tests: wraps the embedded store, and lets a
//! test make any operation fail, slow down, or hang until released, at run
//! time. It counts every call (attempts, not only successes) and records
//! the cutoff of every tombstone purge it is asked for.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use readstates::store::{EmbeddedStore, Operation, Store, StoreError, StoreFuture, StoreLayer};
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

impl StoreLayer for FaultyStore {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }

    fn backend_name(&self) -> &'static str {
        "faulty-embedded"
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        let op = match operation {
            Operation::LoadUser { .. } => Op::Load,
            Operation::WriteBatch { .. } => Op::Write,
            Operation::LoadVersionFloor | Operation::RecordVersionFloor { .. } => Op::VersionFloor,
            Operation::Sync => Op::Sync,
            Operation::PurgeTombstones { .. } => Op::Purge,
        };
        Box::pin(async move {
            self.enter(op).await?;
            if let Operation::PurgeTombstones { below, .. } = operation {
                self.purge_cutoffs.lock().push(below);
            }
            let result = call(&self.inner).await;
            if let (Operation::WriteBatch { rows }, Ok(_)) = (operation, &result) {
                self.rows_written.fetch_add(rows, Ordering::SeqCst);
            }
            result
        })
    }
}
