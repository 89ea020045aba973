//! The model of the README's validation rules: what a request's bytes must
//! get from the server.

use prost::Message;
use readstates::api::proto;
use readstates::config::LimitsConfig;
use readstates::ids::MAX_ID;

/// What the documented validation says a request must get.
#[derive(Debug, PartialEq)]
pub enum Expected {
    /// Not a message of the request's type: tonic's `INTERNAL`.
    Undecodable,
    /// `INVALID_ARGUMENT` naming one of these fields.
    Refused(Vec<&'static str>),
    /// An answer holding these states.
    Answered(Answer),
}

/// The states an answer must hold, as (user id, channel id) pairs.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// One per item asked for, in the request's order.
    InOrder(Vec<(u64, u64)>),
    /// One per user of a fan-out, in any order (uncached users are loaded
    /// concurrently and answered as they come).
    AnyOrder(Vec<(u64, u64)>),
    /// Any number of states, all of this user.
    OfUser(u64),
}

pub fn valid_id(raw: u64) -> bool {
    (1..=MAX_ID).contains(&raw)
}

pub fn valid_message(raw: u64) -> bool {
    raw <= MAX_ID
}

/// The fields among `checks` whose check failed.
fn invalid(checks: &[(bool, &'static str)]) -> Vec<&'static str> {
    checks
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|&(_, field)| field)
        .collect()
}

fn list_ok(len: usize, max: usize) -> bool {
    (1..=max).contains(&len)
}

/// The model of the README's validation rules for `rpc` on `bytes`.
pub fn expected(rpc: usize, bytes: &[u8], limits: &LimitsConfig) -> Expected {
    let judged = |fields: Vec<&'static str>, answer: Answer| {
        if fields.is_empty() {
            Expected::Answered(answer)
        } else {
            Expected::Refused(fields)
        }
    };
    match rpc {
        0 => match proto::AckRequest::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => judged(
                invalid(&[
                    (valid_id(r.user_id), "user_id"),
                    (valid_id(r.channel_id), "channel_id"),
                    (valid_message(r.message_id), "message_id"),
                ]),
                Answer::InOrder(vec![(r.user_id, r.channel_id)]),
            ),
        },
        1 => match proto::BulkAckRequest::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => judged(
                invalid(&[
                    (valid_id(r.user_id), "user_id"),
                    (list_ok(r.acks.len(), limits.max_bulk_acks), "acks"),
                    (
                        r.acks.iter().all(|a| valid_id(a.channel_id)),
                        "acks.channel_id",
                    ),
                    (
                        r.acks.iter().all(|a| valid_message(a.message_id)),
                        "acks.message_id",
                    ),
                ]),
                Answer::InOrder(r.acks.iter().map(|a| (r.user_id, a.channel_id)).collect()),
            ),
        },
        // RemoveMentions has AddMentions's first three fields, numbered
        // alike, but not `omit_read_states` (field 4): bytes that carry a
        // field 4 of another wire type decode as one and not the other.
        2 | 3 => {
            let decoded = if rpc == 2 {
                proto::AddMentionsRequest::decode(bytes)
                    .map(|r| (r.channel_id, r.message_id, r.user_ids, r.omit_read_states))
            } else {
                proto::RemoveMentionsRequest::decode(bytes)
                    .map(|r| (r.channel_id, r.message_id, r.user_ids, false))
            };
            match decoded {
                Err(_) => Expected::Undecodable,
                Ok((channel_id, message_id, user_ids, omit_read_states)) => judged(
                    invalid(&[
                        (valid_id(channel_id), "channel_id"),
                        (valid_id(message_id), "message_id"),
                        (
                            list_ok(user_ids.len(), limits.max_mention_users)
                                && user_ids.iter().all(|&u| valid_id(u)),
                            "user_ids",
                        ),
                    ]),
                    if omit_read_states {
                        Answer::AnyOrder(Vec::new())
                    } else {
                        Answer::AnyOrder(user_ids.iter().map(|&u| (u, channel_id)).collect())
                    },
                ),
            }
        }
        4 => match proto::AckPinsRequest::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => judged(
                invalid(&[
                    (valid_id(r.user_id), "user_id"),
                    (valid_id(r.channel_id), "channel_id"),
                ]),
                Answer::InOrder(vec![(r.user_id, r.channel_id)]),
            ),
        },
        5 => match proto::GetReadStateRequest::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => judged(
                invalid(&[
                    (valid_id(r.user_id), "user_id"),
                    (valid_id(r.channel_id), "channel_id"),
                ]),
                Answer::InOrder(vec![(r.user_id, r.channel_id)]),
            ),
        },
        6 => match proto::GetUserReadStatesRequest::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => judged(
                invalid(&[(valid_id(r.user_id), "user_id")]),
                Answer::OfUser(r.user_id),
            ),
        },
        _ => match proto::DeleteReadStatesRequest::decode(bytes) {
            Err(_) => Expected::Undecodable,
            Ok(r) => judged(
                invalid(&[
                    (valid_id(r.user_id), "user_id"),
                    (
                        list_ok(r.channel_ids.len(), limits.max_delete_channels)
                            && r.channel_ids.iter().all(|&c| valid_id(c)),
                        "channel_ids",
                    ),
                ]),
                Answer::InOrder(r.channel_ids.iter().map(|&c| (r.user_id, c)).collect()),
            ),
        },
    }
}

/// The states of an answer to `rpc` (its responses all hold states in
/// field 1, alone or repeated).
pub fn answered_states(
    rpc: usize,
    bytes: &[u8],
) -> Result<Vec<proto::ReadState>, prost::DecodeError> {
    Ok(match rpc {
        0 | 4 | 5 => proto::AckResponse::decode(bytes)?
            .read_state
            .into_iter()
            .collect(),
        _ => proto::BulkAckResponse::decode(bytes)?.read_states,
    })
}
