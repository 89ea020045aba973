//! The one mapping of the service's errors to gRPC status codes
//! (`From<ApiError> for Status`, and `From<Refusal> for Status` for the
//! auth check): no other module builds a `Status` from our own errors, so
//! every code and message a caller can see is read here.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::auth::{Authenticator, Refusal};
use crate::cache::CacheError;
use crate::cluster::Slot;
use crate::store::ErrorClass;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or out of range.
    #[error("{field} {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The cache could not serve the request.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The routing table names this instance as the holder of a user's
    /// slot, which it does not serve (its lease lapsed here, or is being
    /// renewed).
    #[error("user_id {user_id} is in slot {slot}, which this instance does not serve")]
    NotOwner { user_id: u64, slot: Slot },
    /// A call forwarded here by another instance is for a slot this one
    /// does not serve: refused rather than forwarded a second time.
    #[error(
        "user_id {user_id} is in slot {slot}: this instance is not the owner, and the call was \
         already forwarded once (no second hop, so no forwarding loop)"
    )]
    ForwardedToNonOwner { user_id: u64, slot: Slot },
    /// No instance is known to hold a user's slot.
    #[error("user_id {user_id} is in slot {slot}, whose owner is not known")]
    UnknownOwner { user_id: u64, slot: Slot },
    /// `limits.max_in_flight_calls` calls are in flight already.
    #[error(
        "overloaded: {limit} calls already in flight (limits.max_in_flight_calls); retry with backoff"
    )]
    TooManyInFlight { limit: usize },
    /// Tasks wait longer than `limits.max_queue_delay_ms` for a worker.
    #[error(
        "overloaded: tasks wait {delay_ms} ms for a worker (limits.max_queue_delay_ms = {limit_ms}); retry with backoff"
    )]
    QueueDelay { delay_ms: u128, limit_ms: u64 },
    /// `GetRouting` on an instance without `cluster.enabled`.
    #[error(
        "cluster.enabled is false on this instance: it serves every user itself, so there is no \
         slot map; send calls to any instance"
    )]
    NoSlotMap,
    /// An owner advertises an address no channel can be built for.
    #[error("the slot's owner advertises an unusable address {address}: {reason}")]
    UnusableAddress { address: String, reason: String },
    /// A forward reached no owner (no connection, a broken one).
    #[error("forwarding to {target} failed: {reason}; retry with backoff")]
    Unreachable { target: String, reason: String },
    /// A forward ran out of time: the caller's deadline
    /// (`callers_deadline`), or `cluster.forward_timeout_ms`.
    #[error("{target} did not answer a forwarded call within {budget_ms} ms")]
    ForwardTimedOut {
        target: String,
        budget_ms: u128,
        callers_deadline: bool,
    },
    /// The owner's own error answer to a forwarded call, passed on as it
    /// is (its code and message).
    #[error("the owner answered {}: {}", .0.code(), .0.message())]
    Owner(Status),
    /// A part of a split fan-out did not answer one state per user.
    #[error("{part} did not answer one read state per user of its part of the fan-out")]
    SplitMismatch { part: String },
    /// `watch.max_streams` streams are open already.
    #[error(
        "{open} WatchReadStates streams are open, the limit (watch.max_streams = {limit}); retry \
         with backoff"
    )]
    TooManyStreams { open: usize, limit: usize },
    /// A stream would follow more than `watch.max_users_per_stream` users.
    #[error(
        "the stream follows {limit} users, the limit (watch.max_users_per_stream): follow more \
         users on another stream"
    )]
    TooManyWatchedUsers { limit: usize },
    /// The server is shutting down and ends its streams.
    #[error(
        "the server is shutting down: resume each user at another instance (its owner, with a \
         cluster) from the last version received"
    )]
    ShuttingDown,
    /// This server serves no change streams.
    #[error("WatchReadStates is not served by this server")]
    NotWatching,
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            // The slot is moving, or its owner died: a new owner takes it
            // within a lease.
            ApiError::NotOwner { .. }
            | ApiError::ForwardedToNonOwner { .. }
            | ApiError::UnknownOwner { .. } => {
                Status::unavailable(format!("{error}; retry with backoff while slots move"))
            }
            // The slot stopped being served while the call ran (it is
            // being handed off, or its lease lapsed): as NotOwner.
            ApiError::Cache(CacheError::NotServed { .. }) => {
                Status::unavailable(format!("{error}; its slot is moving: retry with backoff"))
            }
            ApiError::Cache(CacheError::Backlog { .. }) => Status::unavailable(
                "write backlog full: the store is not keeping up; retry with backoff",
            ),
            // The flusher logs the lease's expiry once; not one log a call.
            ApiError::Cache(CacheError::LeaseExpired(_)) => Status::unavailable(
                "the read-state store has not confirmed new versions; retry with backoff",
            ),
            ApiError::Cache(CacheError::Load(store_error)) => match store_error.class() {
                ErrorClass::Retryable => {
                    tracing::warn!(error = %store_error, "store load failed");
                    Status::unavailable("the read-state store is unavailable; retry with backoff")
                }
                // INTERNAL, not FAILED_PRECONDITION: the fault is in the
                // service's own store (a damaged row, an altered schema, a
                // revoked permission), which nothing the caller does can fix.
                ErrorClass::Permanent => {
                    tracing::error!(error = %store_error, "store load failed, not retryable");
                    Status::internal(
                        "the read-state store failed in a way retrying will not fix; do not \
                         retry: the operator must repair the store",
                    )
                }
            },
            ApiError::TooManyInFlight { .. } | ApiError::QueueDelay { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            ApiError::NoSlotMap => Status::failed_precondition(error.to_string()),
            ApiError::UnusableAddress { .. } | ApiError::Unreachable { .. } => {
                Status::unavailable(error.to_string())
            }
            ApiError::ForwardTimedOut {
                callers_deadline: true,
                ..
            } => Status::deadline_exceeded(error.to_string()),
            ApiError::ForwardTimedOut { .. } => Status::unavailable(format!(
                "{error} (cluster.forward_timeout_ms); retry with backoff"
            )),
            // A fresh status of the same code and message: the owner's
            // metadata and details stay behind.
            ApiError::Owner(status) => Status::new(status.code(), status.message()),
            ApiError::SplitMismatch { .. } => Status::internal(error.to_string()),
            ApiError::TooManyStreams { .. } | ApiError::TooManyWatchedUsers { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            ApiError::ShuttingDown => Status::unavailable(error.to_string()),
            ApiError::NotWatching => Status::unimplemented(error.to_string()),
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NoCertificate => {
                Status::unauthenticated("a client certificate is required: connect with mutual TLS")
            }
            Refusal::NoToken => Status::unauthenticated(
                "a bearer token is required: send `authorization: Bearer <token>`",
            ),
            Refusal::UnknownToken => Status::unauthenticated("the bearer token is not valid"),
            Refusal::NotAllowed => {
                Status::permission_denied("this caller is not allowed to call readstates")
            }
        }
    }
}

/// The auth check as a tonic interceptor. It is here, not in `auth`,
/// because `auth` sits below the API: it decides who is refused and why
/// (`Refusal`, its own error type, counted and logged by
/// `Authenticator::admit`), and only this module says how a refusal reads
/// on the wire; `auth` importing this module would be an arrow back up.
impl Interceptor for Authenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.admit(&request) {
            Ok(()) => Ok(request),
            Err(refusal) => Err(refusal.into()),
        }
    }
}
