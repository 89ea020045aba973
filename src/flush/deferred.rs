//! Loads the users whose mentions wait in an inbox (see `cache::inbox`),
//! so that those mentions are merged and written within the flush delay
//! even when no request for the user comes.
//!
//! The loads run at background priority (behind the loads that requests
//! wait for), a bounded number at once. A load that fails puts the user
//! back, and the loader waits out a backoff before its next load: the
//! mentions stay in memory, counted against the dirty backlog, until the
//! store answers. On shutdown it goes on until no mention is deferred (the
//! server takes no calls by then), or until `give_up` is cancelled.

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::cache::Cache;
use crate::ids::UserId;
use crate::store::Store;

/// Loads for deferred mentions in flight at once: as many as one fan-out
/// call may start (a cluster store serves loads in parallel; the embedded
/// store queues them for its reader threads, behind requests' loads).
const CONCURRENCY: usize = 32;

/// The deferred loader.
pub(super) struct DeferredLoader {
    pub(super) cache: Arc<Cache>,
    pub(super) store: Arc<dyn Store>,
    pub(super) backoff: Backoff,
}

impl DeferredLoader {
    /// Loads deferred users as they come until `shutdown` is cancelled,
    /// then until none is left or `give_up` is cancelled.
    pub(super) async fn run(self, shutdown: CancellationToken, give_up: CancellationToken) {
        let mut backoff = self.backoff.clone();
        let mut ready = Vec::new();
        let mut loads = FuturesUnordered::new();
        // After a failed load, no new load starts before this.
        let mut paused_until: Option<Instant> = None;
        loop {
            let stopping = shutdown.is_cancelled();
            if stopping && loads.is_empty() && self.cache.deferred_mentions() == 0 {
                return;
            }
            if paused_until.is_some_and(|until| until <= Instant::now()) {
                paused_until = None;
            }
            if paused_until.is_none() {
                if ready.is_empty() {
                    self.cache.take_deferred_users(&mut ready);
                }
                while loads.len() < CONCURRENCY {
                    let Some(user_id) = ready.pop() else {
                        break;
                    };
                    loads.push(self.load(user_id));
                }
            }
            let idle = loads.is_empty() && paused_until.is_none();
            tokio::select! {
                () = give_up.cancelled() => return,
                () = shutdown.cancelled(), if !stopping => {}
                () = self.cache.deferred_ready(), if idle && !stopping => {}
                () = sleep_until(paused_until), if paused_until.is_some() => {}
                Some(loaded) = loads.next() => {
                    if loaded {
                        backoff.reset();
                    } else {
                        paused_until = Some(Instant::now() + backoff.next_wait());
                    }
                }
            }
        }
    }

    /// Loads one user, merging its inbox; puts it back if the load failed.
    async fn load(&self, user_id: UserId) -> bool {
        match self.cache.load_deferred(self.store.as_ref(), user_id).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, user_id = user_id.get(), "loading a user for its deferred mentions failed; retrying");
                self.cache.requeue_deferred(user_id);
                false
            }
        }
    }
}

async fn sleep_until(until: Option<Instant>) {
    if let Some(until) = until {
        tokio::time::sleep_until(until).await;
    }
}
