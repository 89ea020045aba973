//! A store wrapper that times every operation, counts failures, and runs
//! each operation in a `store` tracing span (a child of the calling RPC's
//! span).

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use crate::ids::UserId;
use crate::metrics::{Metrics, StoreErrorClass, StoreOperation};
use crate::store::{ErrorClass, LoadPriority, RowWrite, Store, StoreError, StoreFuture, UserRows};

/// Any store, measured.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn measure<'a, T: 'a>(
        &'a self,
        operation: StoreOperation,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        let span =
            tracing::debug_span!("store", operation = ?operation, backend = self.inner.backend());
        Box::pin(
            async move {
                let started = Instant::now();
                let result = call.await;
                self.metrics
                    .record_store(operation, started.elapsed(), failure_class(&result));
                if let Err(error) = &result {
                    tracing::debug!(%error, "store operation failed");
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Returns the `class` label of a failed operation, or `None` if it
/// succeeded.
fn failure_class<T>(result: &Result<T, StoreError>) -> Option<StoreErrorClass> {
    // Mapped here, in the store's room, so that metrics imports nothing of
    // the store.
    result.as_ref().err().map(|error| match error.class() {
        ErrorClass::Retryable => StoreErrorClass::Retryable,
        ErrorClass::Permanent => StoreErrorClass::Permanent,
    })
}

impl Store for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn load_user(&self, user_id: UserId, priority: LoadPriority) -> StoreFuture<'_, UserRows> {
        self.measure(
            StoreOperation::LoadUser,
            self.inner.load_user(user_id, priority),
        )
    }

    fn write_batch(&self, rows: Arc<[RowWrite]>) -> StoreFuture<'_, ()> {
        self.measure(StoreOperation::WriteBatch, self.inner.write_batch(rows))
    }

    fn load_version_floor(&self) -> StoreFuture<'_, u64> {
        self.measure(
            StoreOperation::LoadVersionFloor,
            self.inner.load_version_floor(),
        )
    }

    fn record_version_floor(&self, floor: u64) -> StoreFuture<'_, ()> {
        self.measure(
            StoreOperation::RecordVersionFloor,
            self.inner.record_version_floor(floor),
        )
    }

    fn sync(&self) -> StoreFuture<'_, ()> {
        self.measure(StoreOperation::Sync, self.inner.sync())
    }

    fn purge_tombstones(&self, below: u64, max: usize) -> StoreFuture<'_, usize> {
        self.inner.purge_tombstones(below, max)
    }
}
