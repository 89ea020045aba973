//! The binary layout of a stored row, shared by the embedded store and the
//! value column of wide-column backends.
//!
//! Layout (little-endian). A live row:
//! `tag 3 | fixed_len u16 | fixed fields | n u32 | n pending mention ids u64`,
//! where the fixed fields are [`FIXED_FIELDS`] in their order, each of its
//! size, `fixed_len` bytes in all. A tombstone: `tag 2 | version u64`.
//!
//! The format grows without a new tag: a field is added at the end of
//! [`FIXED_FIELDS`] only. A row written before the field existed has a
//! shorter fixed part, and the field reads as 0 (its "never set" value, as
//! every field's is); a row written by a later release has a longer one,
//! and the fields this build does not know are skipped. Rows of the first
//! format (tag 1: the same fixed fields with no `fixed_len`) still decode,
//! and are rewritten in this one by their next write.

use crate::ids::{ChannelId, MessageId};
use crate::read_state::{Mentions, ReadState};

/// The first live-row format, written until the fixed part had a length.
const TAG_LIVE_V1: u8 = 1;
const TAG_TOMBSTONE: u8 = 2;
const TAG_LIVE: u8 = 3;
const TOMBSTONE_LEN: usize = 1 + 8;

/// The fixed-size fields of a live row, in their stored order, with their
/// sizes. Only ever appended to (see the module's doc).
const FIXED_FIELDS: [(&str, usize); 6] = [
    ("version", 8),
    ("last_message_id", 8),
    ("last_pin_timestamp_ms", 8),
    ("updated_at_ms", 8),
    ("untracked", 4),
    ("untracked_until", 8),
];

/// The fixed part's length as this build writes it.
const FIXED_LEN: usize = {
    let mut len = 0;
    let mut at = 0;
    while at < FIXED_FIELDS.len() {
        len += FIXED_FIELDS[at].1;
        at += 1;
    }
    len
};

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
    let ReadState {
        channel_id: _,
        last_message_id,
        last_pin_timestamp_ms,
        updated_at_ms,
        version,
        mentions,
    } = state;
    let pending = mentions.pending();
    out.reserve(1 + 2 + FIXED_LEN + 4 + pending.len() * 8);
    out.push(TAG_LIVE);
    out.extend_from_slice(&(FIXED_LEN as u16).to_le_bytes());
    // In the order of FIXED_FIELDS.
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&last_message_id.get().to_le_bytes());
    out.extend_from_slice(&last_pin_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&updated_at_ms.to_le_bytes());
    out.extend_from_slice(&mentions.untracked().to_le_bytes());
    out.extend_from_slice(&mentions.untracked_until().to_le_bytes());
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
        TAG_LIVE_V1 => decode_live(channel_id, &mut reader, FIXED_LEN),
        TAG_LIVE => {
            let fixed_len = usize::from(u16::from_le_bytes(reader.take()?));
            decode_live(channel_id, &mut reader, fixed_len)
        }
        tag => Err(RowDecodeError::Tag(tag)),
    }
}

/// Decodes a live row's fixed part of `fixed_len` bytes and its pending
/// mentions; `reader` stands at the fixed part.
fn decode_live(
    channel_id: ChannelId,
    reader: &mut Reader<'_>,
    fixed_len: usize,
) -> Result<Row, RowDecodeError> {
    let start = reader.at;
    let end = start.saturating_add(fixed_len);
    let fixed = reader.bytes.get(start..end).ok_or(RowDecodeError::Length {
        expected: end,
        actual: reader.bytes.len(),
    })?;
    // A field past the end of a shorter fixed part reads as 0; fields past
    // the end of FIXED_FIELDS (a later release's) are skipped.
    let mut fields = Reader {
        bytes: fixed,
        at: 0,
    };
    let version = fields.u64_or_zero();
    let last_message_id = MessageId::new(fields.u64_or_zero()).map_err(|_| RowDecodeError::Id)?;
    let last_pin_timestamp_ms = fields.u64_or_zero();
    let updated_at_ms = fields.u64_or_zero();
    let untracked = fields.u32_or_zero();
    let untracked_until = fields.u64_or_zero();
    reader.at = end;
    let n = reader.u32()? as usize;
    let expected = reader.at.saturating_add(n.saturating_mul(8));
    if reader.bytes.len() != expected {
        return Err(RowDecodeError::Length {
            expected,
            actual: reader.bytes.len(),
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

    /// Reads a field of the fixed part: 0 where the part ends before it.
    fn u64_or_zero(&mut self) -> u64 {
        self.u64().unwrap_or_else(|_| {
            self.at = self.bytes.len();
            0
        })
    }

    fn u32_or_zero(&mut self) -> u32 {
        self.u32().unwrap_or_else(|_| {
            self.at = self.bytes.len();
            0
        })
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

    /// Rows as the release before this format wrote them (tag 1), kept as
    /// bytes: they must decode for as long as a data file may hold them.
    const V1_LIVE: &str = "014d00000000000000e8030000000000000068e5cf8b0100007b68e5cf8b01000004000000dc0500000000000003000000e903000000000000ea03000000000000eb03000000000000";
    const V1_TOMBSTONE: &str = "024d00000000000000";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rows_written_by_the_previous_release_decode() {
        let state = sample();
        assert_eq!(
            decode_row(state.channel_id, &hex(V1_LIVE)),
            Ok(Row::Live(state.clone()))
        );
        assert_eq!(
            decode_row(state.channel_id, &hex(V1_TOMBSTONE)),
            Ok(Row::Tombstone { version: 77 })
        );
        let mut bytes = Vec::new();
        encode_row(&state, true, &mut bytes);
        assert_eq!(bytes, hex(V1_TOMBSTONE), "tombstones did not change");
    }

    /// The live row of `sample` with its fixed part cut to `fixed_len`
    /// bytes, or grown by zeros to it.
    fn with_fixed_len(fixed_len: usize) -> Vec<u8> {
        let state = sample();
        let mut bytes = Vec::new();
        encode_row(&state, false, &mut bytes);
        let tail = bytes.split_off(3 + FIXED_LEN);
        bytes.truncate(3 + fixed_len.min(FIXED_LEN));
        bytes.resize(3 + fixed_len, 0);
        bytes[1..3].copy_from_slice(&(fixed_len as u16).to_le_bytes());
        bytes.extend_from_slice(&tail);
        bytes
    }

    #[test]
    fn a_row_of_a_later_release_skips_the_fields_this_one_does_not_know() {
        let state = sample();
        let later = with_fixed_len(FIXED_LEN + 12);
        assert_eq!(decode_row(state.channel_id, &later), Ok(Row::Live(state)));
    }

    #[test]
    fn a_row_from_before_a_field_was_added_reads_it_as_zero() {
        let state = sample();
        // Written before `untracked_until` (the last field) existed.
        let earlier = with_fixed_len(FIXED_LEN - 8);
        let Ok(Row::Live(decoded)) = decode_row(state.channel_id, &earlier) else {
            panic!("did not decode");
        };
        assert_eq!(decoded.mentions.untracked_until(), 0);
        assert_eq!(decoded.mentions.untracked(), 4);
        assert_eq!(decoded.last_message_id, state.last_message_id);
        assert_eq!(decoded.mentions.pending(), state.mentions.pending());
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
