//! Snowflake id newtypes, validated once at the API edge.
//!
//! Inside the service a value of these types is always valid: user and
//! channel ids are non-zero and at most `2^63 - 1` (they are stored as CQL
//! `bigint`); message ids are at most `2^63 - 1`, with 0 meaning "nothing".

use std::fmt;

/// The largest id a snowflake may carry: ids are stored as signed 64-bit.
pub const MAX_ID: u64 = i64::MAX as u64;

/// Why a raw id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was 0 (or absent, which proto3 cannot tell apart).
    #[error("is required and must be non-zero")]
    Zero,
    /// The id does not fit a signed 64-bit column.
    #[error("must be at most 9223372036854775807")]
    TooLarge,
}

macro_rules! nonzero_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u64);

        impl $name {
            /// Validates a raw id: non-zero and at most [`MAX_ID`].
            pub fn new(raw: u64) -> Result<Self, IdError> {
                match raw {
                    0 => Err(IdError::Zero),
                    raw if raw > MAX_ID => Err(IdError::TooLarge),
                    raw => Ok(Self(raw)),
                }
            }

            /// Returns the raw id.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

nonzero_id!(
    /// A user's snowflake id.
    UserId
);
nonzero_id!(
    /// A channel's snowflake id.
    ChannelId
);

/// A message's snowflake id; 0 stands for "no message" (nothing read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(u64);

impl MessageId {
    /// "No message": the acknowledged id of a channel never read.
    pub const NONE: MessageId = MessageId(0);

    /// Validates a raw message id that may be 0.
    pub fn new(raw: u64) -> Result<Self, IdError> {
        if raw > MAX_ID {
            return Err(IdError::TooLarge);
        }
        Ok(Self(raw))
    }

    /// Validates a raw message id that must name a message (non-zero).
    pub fn new_nonzero(raw: u64) -> Result<Self, IdError> {
        if raw == 0 {
            return Err(IdError::Zero);
        }
        Self::new(raw)
    }

    /// Returns the raw id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_must_be_nonzero_and_fit_bigint() {
        assert_eq!(UserId::new(0), Err(IdError::Zero));
        assert_eq!(UserId::new(MAX_ID + 1), Err(IdError::TooLarge));
        assert_eq!(UserId::new(u64::MAX), Err(IdError::TooLarge));
        assert_eq!(UserId::new(MAX_ID).map(UserId::get), Ok(MAX_ID));
        assert_eq!(ChannelId::new(1).map(ChannelId::get), Ok(1));
    }

    #[test]
    fn message_ids_may_be_zero_unless_they_name_a_message() {
        assert_eq!(MessageId::new(0), Ok(MessageId::NONE));
        assert_eq!(MessageId::new_nonzero(0), Err(IdError::Zero));
        assert_eq!(MessageId::new(MAX_ID + 1), Err(IdError::TooLarge));
    }
}
