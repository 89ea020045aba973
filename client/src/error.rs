//! The errors of building a client and of reading its slot map. Calls
//! themselves fail with the service's `tonic::Status`, as it answered them
//! (or as the connection failed), so that callers match on gRPC codes.

use tonic::Status;

use crate::routing::SlotMapError;

/// Why a client could not be built, or its slot map not read.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No address was given to reach the service at.
    #[error("no address given: pass at least one host:port to addresses()")]
    NoAddresses,
    /// An address is not a usable gRPC endpoint.
    #[error("address {address:?} is not usable: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bearer token cannot be sent in a gRPC header.
    #[error("the bearer token is not valid in a gRPC header: use visible ASCII characters only")]
    InvalidToken,
    /// The TLS certificates or key cannot be used.
    #[error("the TLS configuration is unusable: {0}")]
    Tls(String),
    /// The service's slot map cannot be routed by (an unknown slot hash,
    /// a malformed map).
    #[error(transparent)]
    SlotMap(#[from] SlotMapError),
    /// No address answered `GetRouting` with a slot map or with
    /// `FAILED_PRECONDITION` (the cluster is off): none could be reached,
    /// or each refused the call (a missing or wrong token, say).
    #[error("GetRouting failed at every address ({tried} tried); the last failure: {status}")]
    GetRoutingFailed {
        /// How many addresses were tried.
        tried: usize,
        /// The last one's failure.
        status: Box<Status>,
    },
}
