//! The binary layout of a stored row, shared by the embedded store and the
//! value column of wide-column backends.
//!
//! Layout (little-endian), after a one-byte format tag:
//! `version u64 | last_message_id u64 | last_pin_timestamp_ms u64 |
//! updated_at_ms u64 | untracked u32 | untracked_until u64 | n u32 |
//! n pending mention ids u64`. A tombstone is the tag and the version alone.

use crate::ids::{ChannelId, MessageId};
use crate::read_state::{Mentions, ReadState};

const TAG_LIVE: u8 = 1;
const TAG_TOMBSTONE: u8 = 2;
const LIVE_FIXED_LEN: usize = 1 + 8 * 4 + 4 + 8 + 4;
const TOMBSTONE_LEN: usize = 1 + 8;

/// Why a stored row could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowDecodeError {
    /// The row is shorter or longer than its header says.
    #[error("row has {actual} bytes, expected {expected}")]
    Length { expected: usize, actual: usize },
    /// The format tag is unknown.
    #[error("unknown row format tag {0}")]
    Tag(u8),
    /// A stored id is outside the snowflake range.
    #[error("stored id out of range")]
    Id,
}

/// A decoded row: a live state, or a deletion at some version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Live(ReadState),
    Tombstone { version: u64 },
}

impl Row {
    /// Returns the version the row was written at.
    pub fn version(&self) -> u64 {
        match self {
            Row::Live(state) => state.version,
            Row::Tombstone { version } => *version,
        }
    }
}

/// Encodes a state (or its tombstone) into `out`, replacing its contents.
pub fn encode_row(state: &ReadState, deleted: bool, out: &mut Vec<u8>) {
    out.clear();
    if deleted {
        out.push(TAG_TOMBSTONE);
        out.extend_from_slice(&state.version.to_le_bytes());
        return;
    }
    let pending = state.mentions.pending();
    out.reserve(LIVE_FIXED_LEN + pending.len() * 8);
    out.push(TAG_LIVE);
    out.extend_from_slice(&state.version.to_le_bytes());
    out.extend_from_slice(&state.last_message_id.get().to_le_bytes());
    out.extend_from_slice(&state.last_pin_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&state.updated_at_ms.to_le_bytes());
    out.extend_from_slice(&state.mentions.untracked().to_le_bytes());
    out.extend_from_slice(&state.mentions.untracked_until().to_le_bytes());
    let n = u32::try_from(pending.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for id in pending.iter().take(n as usize) {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Decodes a row of `channel_id`.
pub fn decode_row(channel_id: ChannelId, bytes: &[u8]) -> Result<Row, RowDecodeError> {
    let mut reader = Reader { bytes, at: 0 };
    match reader.u8()? {
        TAG_TOMBSTONE => {
            let version = reader.u64()?;
            reader.finish(TOMBSTONE_LEN)?;
            Ok(Row::Tombstone { version })
        }
        TAG_LIVE => {
            let version = reader.u64()?;
            let last_message_id = MessageId::new(reader.u64()?).map_err(|_| RowDecodeError::Id)?;
            let last_pin_timestamp_ms = reader.u64()?;
            let updated_at_ms = reader.u64()?;
            let untracked = reader.u32()?;
            let untracked_until = reader.u64()?;
            let n = reader.u32()? as usize;
            let expected = LIVE_FIXED_LEN + n.saturating_mul(8);
            if bytes.len() != expected {
                return Err(RowDecodeError::Length {
                    expected,
                    actual: bytes.len(),
                });
            }
            let mut pending = Vec::with_capacity(n);
            for _ in 0..n {
                pending.push(reader.u64()?);
            }
            Ok(Row::Live(ReadState {
                channel_id,
                last_message_id,
                last_pin_timestamp_ms,
                updated_at_ms,
                version,
                mentions: Mentions::from_parts(pending, untracked, untracked_until),
            }))
        }
        tag => Err(RowDecodeError::Tag(tag)),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RowDecodeError> {
        let end = self.at + N;
        let Some(slice) = self.bytes.get(self.at..end) else {
            return Err(RowDecodeError::Length {
                expected: end,
                actual: self.bytes.len(),
            });
        };
        self.at = end;
        let mut array = [0u8; N];
        array.copy_from_slice(slice);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, RowDecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, RowDecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, RowDecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn finish(&self, expected: usize) -> Result<(), RowDecodeError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(RowDecodeError::Length {
                expected,
                actual: self.bytes.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReadState {
        ReadState {
            channel_id: ChannelId::new(42).unwrap(),
            last_message_id: MessageId::new(1000).unwrap(),
            last_pin_timestamp_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_123,
            version: 77,
            mentions: Mentions::from_parts(vec![1003, 1001, 1002], 4, 1500),
        }
    }

    #[test]
    fn live_rows_round_trip() {
        let state = sample();
        let mut bytes = Vec::new();
        encode_row(&state, false, &mut bytes);
        assert_eq!(decode_row(state.channel_id, &bytes), Ok(Row::Live(state)));
    }

    #[test]
    fn tombstones_round_trip() {
        let state = sample();
        let mut bytes = Vec::new();
        encode_row(&state, true, &mut bytes);
        assert_eq!(bytes.len(), TOMBSTONE_LEN);
        let row = decode_row(state.channel_id, &bytes).unwrap();
        assert_eq!(row, Row::Tombstone { version: 77 });
        assert_eq!(row.version(), 77);
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let state = sample();
        let mut bytes = Vec::new();
        encode_row(&state, false, &mut bytes);
        for len in 0..bytes.len() {
            assert!(decode_row(state.channel_id, &bytes[..len]).is_err());
        }
        bytes.push(0);
        assert!(decode_row(state.channel_id, &bytes).is_err());
        assert_eq!(
            decode_row(state.channel_id, &[9]),
            Err(RowDecodeError::Tag(9))
        );
    }
}
