//! A store wrapper that times every operation, counts failures, and runs
//! each operation in a `store` tracing span (a child of the calling RPC's
//! span).

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::{Metrics, StoreErrorClass, StoreOperation};
use crate::store::{ErrorClass, Operation, Store, StoreError, StoreFuture, StoreLayer};

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

impl StoreLayer for MeteredStore {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    /// Measures every operation but the tombstone purge.
    fn around<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        let measured = match operation {
            Operation::LoadUser { .. } => StoreOperation::LoadUser,
            Operation::WriteBatch { .. } => StoreOperation::WriteBatch,
            Operation::LoadVersionFloor => StoreOperation::LoadVersionFloor,
            Operation::RecordVersionFloor { .. } => StoreOperation::RecordVersionFloor,
            Operation::Sync => StoreOperation::Sync,
            Operation::PurgeTombstones { .. } => return call(self.inner()),
        };
        // Started here, as the inner store's own call would be.
        self.measure(measured, call(self.inner()))
    }
}
