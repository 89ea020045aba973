//! Request validation at the edge, and the one mapping of errors to gRPC
//! status codes (`From<ApiError> for Status`).

use tonic::Status;

use super::proto;
use crate::cache::{CacheError, StateView};
use crate::cluster::Slot;
use crate::ids::{ChannelId, IdError, MessageId, UserId};
use crate::store::ErrorClass;

/// Why a request failed.
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
        }
    }
}

pub(super) fn invalid(field: &'static str, error: IdError) -> ApiError {
    ApiError::InvalidArgument {
        field,
        reason: error.to_string(),
    }
}

pub(super) fn user_id(field: &'static str, raw: u64) -> Result<UserId, ApiError> {
    UserId::new(raw).map_err(|error| invalid(field, error))
}

pub(super) fn channel_id(field: &'static str, raw: u64) -> Result<ChannelId, ApiError> {
    ChannelId::new(raw).map_err(|error| invalid(field, error))
}

pub(super) fn message_id(field: &'static str, raw: u64) -> Result<MessageId, ApiError> {
    MessageId::new(raw).map_err(|error| invalid(field, error))
}

pub(super) fn mentioned_message_id(field: &'static str, raw: u64) -> Result<MessageId, ApiError> {
    MessageId::new_nonzero(raw).map_err(|error| invalid(field, error))
}

pub(super) fn list_length(field: &'static str, len: usize, max: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::InvalidArgument {
            field,
            reason: "must not be empty".to_owned(),
        });
    }
    if len > max {
        return Err(ApiError::InvalidArgument {
            field,
            reason: format!("has {len} entries, more than the limit of {max}"),
        });
    }
    Ok(())
}

pub(super) fn to_proto(user_id: UserId, view: StateView) -> proto::ReadState {
    proto::ReadState {
        user_id: user_id.get(),
        channel_id: view.channel_id.get(),
        last_message_id: view.last_message_id.get(),
        mention_count: view.mention_count,
        last_pin_timestamp_ms: view.last_pin_timestamp_ms,
        updated_at_ms: view.updated_at_ms,
        version: view.version,
    }
}

pub(super) fn parse_user_ids(raw: &[u64], max: usize) -> Result<Vec<UserId>, ApiError> {
    list_length("user_ids", raw.len(), max)?;
    raw.iter().map(|&raw| user_id("user_ids", raw)).collect()
}
