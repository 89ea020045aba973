//! The stored-row codec on arbitrary rows: decoding never panics, and a
//! decodable row survives re-encoding.

use std::cell::Cell;

use proptest::prelude::*;
use readstates::ids::{ChannelId, MAX_ID};
use readstates::read_state::ReadState;
use readstates::store::{Row, decode_row, encode_row};

use crate::runner;

/// The fixed part of a live row as this release writes it (see
/// `src/store/row.rs`).
const FIXED_LEN: usize = 8 * 4 + 4 + 8;

/// Bytes for the row decoder: arbitrary, or a row laid out field by field
/// (see `src/store/row.rs`) in the current format (tag 3, with a fixed part
/// that may be shorter or longer than this release's) or the first one
/// (tag 1), or with any tag, any values, and a count of mention ids that
/// may disagree with the ids that follow.
fn row_bytes() -> impl Strategy<Value = Vec<u8>> {
    let live = (
        prop_oneof![3 => Just(3u8), 1 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![3 => Just(FIXED_LEN), 1 => 0..FIXED_LEN + 16],
        any::<[u64; 4]>(),
        any::<(u32, u64)>(),
        proptest::collection::vec(prop_oneof![1..20u64, any::<u64>()], 0..6),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(
            |(tag, fixed_len, [version, last, pin, updated], (untracked, until), ids, n, cut)| {
                let last = if last % 2 == 0 {
                    last % (MAX_ID + 1)
                } else {
                    last
                };
                let mut fixed = Vec::new();
                for field in [version, last, pin, updated] {
                    fixed.extend_from_slice(&field.to_le_bytes());
                }
                fixed.extend_from_slice(&untracked.to_le_bytes());
                fixed.extend_from_slice(&until.to_le_bytes());
                let mut bytes = vec![tag];
                if tag == 3 {
                    fixed.resize(fixed_len, 0x5A);
                    bytes.extend_from_slice(&(fixed_len as u16).to_le_bytes());
                }
                bytes.extend_from_slice(&fixed);
                let n = n.unwrap_or(ids.len() as u32);
                bytes.extend_from_slice(&n.to_le_bytes());
                for id in ids {
                    bytes.extend_from_slice(&id.to_le_bytes());
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            },
        );
    let tombstone =
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..2)).prop_map(|(version, tail)| {
            let mut bytes = vec![2];
            bytes.extend_from_slice(&version.to_le_bytes());
            bytes.extend(tail);
            bytes
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..80),
        4 => live,
        1 => tombstone,
    ]
}

/// Re-encodes a decoded row.
fn encode(channel_id: ChannelId, row: &Row) -> Vec<u8> {
    let mut bytes = Vec::new();
    match row {
        Row::Live(state) => encode_row(state, false, &mut bytes),
        Row::Tombstone { version } => {
            let state = ReadState {
                version: *version,
                ..ReadState::empty(channel_id)
            };
            encode_row(&state, true, &mut bytes);
        }
    }
    bytes
}

/// The mention ids a live row's bytes hold after its fixed fields, and
/// whether the row is laid out exactly as this release writes it.
fn stored_ids(bytes: &[u8]) -> (Vec<u64>, bool) {
    let (ids_at, current) = match bytes.first() {
        Some(3) => {
            let fixed_len = bytes
                .get(1..3)
                .map_or(0, |len| u16::from_le_bytes([len[0], len[1]]) as usize);
            (3 + fixed_len + 4, fixed_len == FIXED_LEN)
        }
        _ => (1 + FIXED_LEN + 4, false),
    };
    let ids = bytes
        .get(ids_at..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|id| u64::from_le_bytes(id.try_into().unwrap_or_default()))
        .collect();
    (ids, current)
}

#[test]
fn the_row_codec_never_panics_and_round_trips() {
    let channel_id = ChannelId::new(42).unwrap();
    let (live, tombstones) = (Cell::new(0), Cell::new(0));
    runner(4_000)
        .run(&row_bytes(), |bytes| {
            let Ok(row) = decode_row(channel_id, &bytes) else {
                return Ok(());
            };
            let encoded = encode(channel_id, &row);
            prop_assert_eq!(decode_row(channel_id, &encoded), Ok(row.clone()));
            prop_assert_eq!(&encode(channel_id, &row), &encoded, "not deterministic");
            match &row {
                Row::Live(state) => {
                    live.set(live.get() + 1);
                    let (mut ids, current) = stored_ids(&bytes);
                    // In this release's layout, with the stored ids already
                    // ascending and distinct: nothing to tidy, so the row
                    // re-encodes to the very same bytes.
                    if current && ids.windows(2).all(|pair| pair[0] < pair[1]) {
                        prop_assert_eq!(&encoded, &bytes);
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    prop_assert_eq!(state.mentions.pending(), &ids[..]);
                    // Re-encoded in this release's layout, whatever it read.
                    prop_assert_eq!(encoded.len(), 3 + FIXED_LEN + 4 + 8 * ids.len());
                }
                Row::Tombstone { .. } => {
                    tombstones.set(tombstones.get() + 1);
                    prop_assert_eq!(&encoded, &bytes);
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        live.get() > 0 && tombstones.get() > 0,
        "the strategy made no decodable live row or tombstone"
    );
}
