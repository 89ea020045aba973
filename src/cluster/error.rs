//! Why the cluster's ownership could not start or a lease request failed.

use crate::store::{PrepareFailed, ScyllaError};

/// An error of the cluster's membership and leases.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The session to the cluster could not be opened.
    #[error(transparent)]
    Connect(#[from] ScyllaError),
    /// A statement could not be prepared: the keyspace lacks the cluster
    /// tables.
    #[error(transparent)]
    Prepare(#[from] PrepareFailed),
    /// A request to the cluster failed or timed out (a lightweight
    /// transaction that timed out may still have been applied).
    #[error("{action} failed: {message}")]
    Request {
        action: &'static str,
        message: String,
    },
    /// The cluster answered with rows this build cannot read.
    #[error("{action}: unexpected result: {message}")]
    Unreadable {
        action: &'static str,
        message: String,
    },
    /// The cache already takes its serving gate from another membership.
    #[error("the cache already serves the slots of another cluster membership")]
    GateTaken,
    /// The keyspace was set up with another slot count.
    #[error(
        "cluster.slots is {configured}, but keyspace {keyspace} is divided into {recorded} \
         slots: every instance of a keyspace must use the same count; set cluster.slots = \
         {recorded}"
    )]
    SlotCount {
        keyspace: String,
        configured: u32,
        recorded: i64,
    },
}
