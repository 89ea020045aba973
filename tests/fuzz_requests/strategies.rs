//! Requests for the server: arbitrary field values, validly encoded, and
//! arbitrary or damaged bytes.

use proptest::prelude::*;
use prost::Message;
use readstates::api::proto;
use readstates::config::LimitsConfig;
use readstates::ids::MAX_ID;

use crate::RPCS;

/// A raw id: mostly valid and from a small range (so users recur and are
/// found cached, evicted and reloaded), often at or past a bound.
fn id() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        6 => 1..=3_000u64,
        1 => Just(0),
        1 => Just(MAX_ID),
        1 => Just(MAX_ID + 1),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

/// A raw message id: 0 is valid ("nothing") except for a mention.
fn message() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        6 => 0..=10_000u64,
        1 => Just(MAX_ID),
        1 => Just(MAX_ID + 1),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

/// A list of ids: mostly short and mixed; sometimes of valid ids, exactly
/// at the limit or one past it.
fn ids(max: usize) -> impl Strategy<Value = Vec<u64>> + Clone {
    prop_oneof![
        8 => proptest::collection::vec(id(), 0..5),
        1 => proptest::collection::vec(1..=3_000u64, max),
        1 => proptest::collection::vec(1..=3_000u64, max + 1),
    ]
}

/// A request with arbitrary field values, encoded: (RPC number, bytes).
pub fn request(limits: &LimitsConfig) -> BoxedStrategy<(usize, Vec<u8>)> {
    let acks = ids(limits.max_bulk_acks).prop_flat_map(|channels| {
        let messages = proptest::collection::vec(message(), channels.len());
        (Just(channels), messages)
    });
    let optional = || prop_oneof![Just(None), Just(Some(0)), any::<u64>().prop_map(Some)];
    prop_oneof![
        (
            id(),
            id(),
            message(),
            any::<bool>(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(user_id, channel_id, message_id, manual, mention_count)| {
                let r = proto::AckRequest {
                    user_id,
                    channel_id,
                    message_id,
                    manual,
                    mention_count,
                };
                (0, r.encode_to_vec())
            }),
        (id(), acks).prop_map(|(user_id, (channels, messages))| {
            let acks = channels
                .into_iter()
                .zip(messages)
                .map(|(channel_id, message_id)| proto::ChannelAck {
                    channel_id,
                    message_id,
                })
                .collect();
            (1, proto::BulkAckRequest { user_id, acks }.encode_to_vec())
        }),
        (
            any::<bool>(),
            any::<bool>(),
            id(),
            message(),
            ids(limits.max_mention_users)
        )
            .prop_map(|(remove, omit, channel_id, message_id, user_ids)| {
                // RemoveMentions has no field 4: it ignores the flag.
                let r = proto::AddMentionsRequest {
                    channel_id,
                    message_id,
                    user_ids,
                    omit_read_states: omit,
                };
                (if remove { 3 } else { 2 }, r.encode_to_vec())
            }),
        (id(), id(), any::<u64>()).prop_map(|(user_id, channel_id, pin_timestamp_ms)| {
            let r = proto::AckPinsRequest {
                user_id,
                channel_id,
                pin_timestamp_ms,
            };
            (4, r.encode_to_vec())
        }),
        (id(), id()).prop_map(|(user_id, channel_id)| {
            let r = proto::GetReadStateRequest {
                user_id,
                channel_id,
            };
            (5, r.encode_to_vec())
        }),
        (id(), optional()).prop_map(|(user_id, since_version)| {
            let r = proto::GetUserReadStatesRequest {
                user_id,
                since_version,
            };
            (6, r.encode_to_vec())
        }),
        (id(), ids(limits.max_delete_channels)).prop_map(|(user_id, channel_ids)| {
            let r = proto::DeleteReadStatesRequest {
                user_id,
                channel_ids,
            };
            (7, r.encode_to_vec())
        }),
    ]
    // Boxed: the nested strategy types are large enough to overflow a
    // test thread's stack in a debug build.
    .boxed()
}

/// How a valid encoding is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Bytes xor-ed with these values.
    Flip(Vec<(prop::sample::Index, u8)>),
    /// Cut short.
    Cut(prop::sample::Index),
    /// Bytes appended.
    Append(Vec<u8>),
}

/// Arbitrary bytes to any RPC, one RPC's valid request sent to another
/// (same field numbers, other meanings), or a valid request damaged, so
/// the decoder also sees near misses.
pub fn raw(limits: &LimitsConfig) -> impl Strategy<Value = (usize, Vec<u8>)> + use<> {
    let damage = prop_oneof![
        proptest::collection::vec(any::<(prop::sample::Index, u8)>(), 1..4).prop_map(Damage::Flip),
        any::<prop::sample::Index>().prop_map(Damage::Cut),
        proptest::collection::vec(any::<u8>(), 1..8).prop_map(Damage::Append),
    ];
    prop_oneof![
        2 => (0..RPCS.len(), proptest::collection::vec(any::<u8>(), 0..256)),
        1 => (request(limits), 0..RPCS.len()).prop_map(|((_, bytes), rpc)| (rpc, bytes)),
        3 => (request(limits), damage).prop_map(|((rpc, mut bytes), damage)| {
            match damage {
                Damage::Flip(flips) if !bytes.is_empty() => {
                    for (at, flip) in flips {
                        let at = at.index(bytes.len());
                        bytes[at] ^= flip;
                    }
                }
                Damage::Flip(_) => {}
                Damage::Cut(cut) => bytes.truncate(cut.index(bytes.len() + 1)),
                Damage::Append(tail) => bytes.extend(tail),
            }
            (rpc, bytes)
        }),
    ]
}
