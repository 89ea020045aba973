//! Request validation at the edge: a raw field becomes a typed id, or an
//! `ApiError::InvalidArgument` naming the field.

use super::status::ApiError;
use crate::ids::{ChannelId, IdError, MessageId, UserId};

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

pub(super) fn parse_user_ids(raw: &[u64], max: usize) -> Result<Vec<UserId>, ApiError> {
    list_length("user_ids", raw.len(), max)?;
    raw.iter().map(|&raw| user_id("user_ids", raw)).collect()
}
