//! Scale-out (ARCHITECTURE.md §3): several instances over one keyspace,
//! each user served by exactly one of them at a time.
//!
//! Users map to slots by a fixed hash ([`slots`]); each slot is placed on a
//! live member by rendezvous hashing ([`placement`]); an instance serves a
//! slot only while it holds the slot's lease, written with the cluster's
//! lightweight transactions ([`lease`]), and only until its own clock says
//! the lease might have run out ([`ownership`]). A background task keeps
//! the heartbeat, the member list and the leases ([`membership`]), hands a
//! slot's users off before releasing its lease (`handoff`), and keeps the
//! routing table that sends other slots' calls to their holders
//! ([`routing`]).

mod error;
mod handoff;
pub mod lease;
mod membership;
mod metrics;
pub mod ownership;
pub mod placement;
pub mod routing;
pub mod slots;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use ::scylla::client::session_builder::SessionBuilder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::ClusterError;
pub use handoff::Handoff;
pub use metrics::{ClusterMetrics, ForwardResult, Forwards, HandoffMetrics, LeaseRenewals};
pub use ownership::Ownership;
pub use routing::{Owner, Routing, RoutingSnapshot};
pub use slots::{Slot, slot_of};

use self::lease::{Holder, Identity, LeaseTable};
use self::membership::{Membership, Timing};
use crate::cache::ServingGate;
use crate::config::{ClusterConfig, ScyllaConfig};

/// This instance's membership and slot leases, kept by a background task.
/// Dropping it stops the task as [`Cluster::stop`] does, without waiting.
pub struct Cluster {
    ownership: Arc<Ownership>,
    routing: Arc<Routing>,
    instance_id: String,
    stop: CancellationToken,
    /// `None` once stopped or abandoned.
    task: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Connects, checks the keyspace's slot count, and starts the task
    /// (which keeps the leases only: no cache is handed off).
    pub async fn start(
        scylla: &ScyllaConfig,
        config: &ClusterConfig,
        metrics: ClusterMetrics,
    ) -> Result<Self, ClusterError> {
        Self::start_with(scylla, config, metrics, |builder| builder).await
    }

    /// Like [`Cluster::start`], with `customize` applied to the driver's
    /// session builder last.
    pub async fn start_with(
        scylla: &ScyllaConfig,
        config: &ClusterConfig,
        metrics: ClusterMetrics,
        customize: impl FnOnce(SessionBuilder) -> SessionBuilder,
    ) -> Result<Self, ClusterError> {
        Self::launch(scylla, config, metrics, customize, None).await
    }

    /// Like [`Cluster::start`], for a serving instance: `handoff.engine`
    /// serves only the users of the slots held here, and a slot's users are
    /// written and evicted before its lease is released.
    pub async fn start_serving(
        scylla: &ScyllaConfig,
        config: &ClusterConfig,
        metrics: ClusterMetrics,
        handoff: Handoff,
    ) -> Result<Self, ClusterError> {
        Self::launch(scylla, config, metrics, |builder| builder, Some(handoff)).await
    }

    async fn launch(
        scylla: &ScyllaConfig,
        config: &ClusterConfig,
        metrics: ClusterMetrics,
        customize: impl FnOnce(SessionBuilder) -> SessionBuilder,
        handoff: Option<Handoff>,
    ) -> Result<Self, ClusterError> {
        let session = crate::store::connect_scylla(scylla, customize).await?;
        let me = Identity {
            holder: Holder {
                instance_id: config.instance_id.clone(),
                incarnation: new_incarnation(),
            },
            address: config.advertise_addr.clone(),
        };
        let ttl_secs = i32::try_from(config.lease_ms / 1_000).unwrap_or(i32::MAX);
        let table = LeaseTable::prepare(session, scylla, me, ttl_secs).await?;
        table.check_slot_count(config.slots).await?;
        let ownership = Arc::new(Ownership::new(config.slots));
        if let Some(handoff) = &handoff
            && !handoff
                .engine
                .set_serving_gate(Arc::clone(&ownership) as Arc<dyn ServingGate>)
        {
            return Err(ClusterError::GateTaken);
        }
        let timing = Timing {
            heartbeat: config.heartbeat(),
            serving: config.lease().saturating_sub(config.safety_margin()),
        };
        let stop = CancellationToken::new();
        let routing = Arc::new(Routing::new(config.slots, config.lease()));
        let membership = Membership::new(
            table,
            Arc::clone(&ownership),
            timing,
            metrics,
            handoff,
            Arc::clone(&routing),
        );
        let task = tokio::spawn(membership.run(stop.clone()));
        tracing::info!(
            instance_id = %config.instance_id,
            advertise_addr = %config.advertise_addr,
            slots = config.slots,
            "joined the cluster"
        );
        Ok(Self {
            ownership,
            routing,
            instance_id: config.instance_id.clone(),
            stop,
            task: Some(task),
        })
    }

    /// Returns the request path's view of the slots served here.
    pub fn ownership(&self) -> Arc<Ownership> {
        Arc::clone(&self.ownership)
    }

    /// Returns the routing table: every slot's holder, as last read.
    pub fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing)
    }

    /// Returns this instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Stops serving, releases every lease and leaves the members.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the cluster task failed");
        }
    }

    /// Stops the task at once, releasing nothing, as a crash would: the
    /// leases run out by themselves (and so does this process's serving).
    pub fn abandon(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.stop.cancel();
        }
    }
}

/// Returns a random number for this process, told apart from any earlier
/// process with the same instance id.
fn new_incarnation() -> i64 {
    // std's RandomState is seeded from the operating system's randomness.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    crate::clock::unix_micros().hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    hasher.finish() as i64
}
