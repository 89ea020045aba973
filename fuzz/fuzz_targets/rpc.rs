//! Every `ReadStates` RPC on arbitrary bytes, through the real service over
//! a real cache, flusher and embedded store (built once per process).
//!
//! The first byte picks the RPC; the rest are the request's protobuf bytes,
//! decoded with prost as tonic decodes them (bytes prost refuses are what
//! tonic answers itself, before any handler runs, so they end the case).
//! Asserted: no panic; a refusal is one of the codes the API documents
//! (`INVALID_ARGUMENT` naming one of the request's fields, `UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED`), never `INTERNAL` or `UNKNOWN`; and an answer holds
//! what the call promises (the ids asked for, one state per listed item).

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use readstates::api::ReadStatesService;
use readstates::api::proto::{self, read_states_server::ReadStates};
use readstates::config::Config;
use readstates::engine::Engine;
use readstates::ids::MAX_ID;
use readstates::metrics::Metrics;
use readstates::store::{EmbeddedStore, Store};
use tokio::runtime::Runtime;
use tonic::{Code, Request, Response, Status};

/// The service and what keeps it running for the life of the process.
struct Harness {
    runtime: Runtime,
    service: ReadStatesService,
    _data_dir: tempfile::TempDir,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

impl Harness {
    /// Wires the service as `server::start` does (the same `Engine`),
    /// without the network: a small cache (so evictions and reloads happen)
    /// and a short flush delay (so the flusher writes and the store is read
    /// back).
    fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = Config::default();
        config.cache.capacity = 20_000;
        config.cache.partitions = 8;
        config.flush.delay_ms = 200;
        config.flush.tick_ms = 50;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let service = runtime.block_on(async {
            let store = EmbeddedStore::open(data_dir.path()).expect("the embedded store opens");
            let metrics = Metrics::new();
            let engine = Engine::open(&config, Arc::new(store), &metrics)
                .await
                .expect("the engine starts");
            // Never stopped: the write-behind runs until the process exits.
            let background = engine.start().expect("the engine's tasks start");
            std::mem::forget(background);
            ReadStatesService::new(engine, config.limits.clone(), &metrics)
        });
        Self {
            runtime,
            service,
            _data_dir: data_dir,
        }
    }
}

/// Checks a call's outcome; returns the answer if there was one.
fn outcome<T>(rpc: &str, fields: &[&str], result: Result<Response<T>, Status>) -> Option<T> {
    match result {
        Ok(response) => Some(response.into_inner()),
        Err(status) => {
            match status.code() {
                Code::InvalidArgument => {
                    let field = status.message().split(' ').next().unwrap_or_default();
                    assert!(
                        fields.contains(&field),
                        "{rpc}: INVALID_ARGUMENT names no field of the request: {status:?}"
                    );
                }
                Code::Unavailable | Code::ResourceExhausted => {}
                _ => panic!("{rpc}: an undocumented status for a request: {status:?}"),
            }
            None
        }
    }
}

/// Checks what every returned state holds: the user asked for, valid ids.
fn check_state(rpc: &str, state: &proto::ReadState, user_id: Option<u64>) {
    assert!(
        (1..=MAX_ID).contains(&state.user_id) && (1..=MAX_ID).contains(&state.channel_id),
        "{rpc}: a state with an invalid id: {state:?}"
    );
    assert!(
        state.last_message_id <= MAX_ID,
        "{rpc}: a state with an invalid message id: {state:?}"
    );
    if let Some(user_id) = user_id {
        assert_eq!(state.user_id, user_id, "{rpc}: another user's state");
    }
}

fn one_state(
    rpc: &str,
    state: Option<proto::ReadState>,
    user_id: u64,
    channel_id: u64,
) -> proto::ReadState {
    let state = state.unwrap_or_else(|| panic!("{rpc}: an answer without its state"));
    check_state(rpc, &state, Some(user_id));
    assert_eq!(
        state.channel_id, channel_id,
        "{rpc}: another channel's state"
    );
    state
}

async fn call(service: &ReadStatesService, rpc: u8, bytes: &[u8]) {
    match rpc % 8 {
        0 => {
            let Ok(request) = proto::AckRequest::decode(bytes) else {
                return;
            };
            let fields = ["user_id", "channel_id", "message_id"];
            let answer = service.ack(Request::new(request)).await;
            if let Some(answer) = outcome("Ack", &fields, answer) {
                let state = one_state(
                    "Ack",
                    answer.read_state,
                    request.user_id,
                    request.channel_id,
                );
                if request.manual {
                    assert_eq!(state.last_message_id, request.message_id, "Ack: manual ack");
                    assert_eq!(
                        state.mention_count,
                        request.mention_count.unwrap_or(0),
                        "Ack: manual ack's count"
                    );
                } else {
                    assert!(
                        state.last_message_id >= request.message_id,
                        "Ack: went back"
                    );
                }
            }
        }
        1 => {
            let Ok(request) = proto::BulkAckRequest::decode(bytes) else {
                return;
            };
            let fields = ["user_id", "acks", "acks.channel_id", "acks.message_id"];
            let (user_id, acks) = (request.user_id, request.acks.len());
            let answer = service.bulk_ack(Request::new(request)).await;
            if let Some(answer) = outcome("BulkAck", &fields, answer) {
                assert_eq!(answer.read_states.len(), acks, "BulkAck: one state per ack");
                for state in &answer.read_states {
                    check_state("BulkAck", state, Some(user_id));
                }
            }
        }
        2 | 3 => {
            let (name, fields) = if rpc % 8 == 2 {
                ("AddMentions", ["channel_id", "message_id", "user_ids"])
            } else {
                ("RemoveMentions", ["channel_id", "message_id", "user_ids"])
            };
            // The two requests have the same fields.
            let Ok(request) = proto::AddMentionsRequest::decode(bytes) else {
                return;
            };
            let users = request.user_ids.len();
            let answer = if rpc % 8 == 2 {
                outcome(
                    name,
                    &fields,
                    service.add_mentions(Request::new(request)).await,
                )
                .map(|answer| answer.read_states)
            } else {
                let request = proto::RemoveMentionsRequest {
                    channel_id: request.channel_id,
                    message_id: request.message_id,
                    user_ids: request.user_ids,
                };
                outcome(
                    name,
                    &fields,
                    service.remove_mentions(Request::new(request)).await,
                )
                .map(|answer| answer.read_states)
            };
            if let Some(states) = answer {
                assert_eq!(states.len(), users, "{name}: one state per user");
                for state in &states {
                    check_state(name, state, None);
                }
            }
        }
        4 => {
            let Ok(request) = proto::AckPinsRequest::decode(bytes) else {
                return;
            };
            let fields = ["user_id", "channel_id"];
            let answer = service.ack_pins(Request::new(request)).await;
            if let Some(answer) = outcome("AckPins", &fields, answer) {
                let state = one_state(
                    "AckPins",
                    answer.read_state,
                    request.user_id,
                    request.channel_id,
                );
                assert!(
                    state.last_pin_timestamp_ms >= request.pin_timestamp_ms,
                    "AckPins: went back"
                );
            }
        }
        5 => {
            let Ok(request) = proto::GetReadStateRequest::decode(bytes) else {
                return;
            };
            let fields = ["user_id", "channel_id"];
            let answer = service.get_read_state(Request::new(request)).await;
            if let Some(answer) = outcome("GetReadState", &fields, answer) {
                one_state(
                    "GetReadState",
                    answer.read_state,
                    request.user_id,
                    request.channel_id,
                );
            }
        }
        6 => {
            let Ok(request) = proto::GetUserReadStatesRequest::decode(bytes) else {
                return;
            };
            let fields = ["user_id"];
            let answer = service.get_user_read_states(Request::new(request)).await;
            if let Some(answer) = outcome("GetUserReadStates", &fields, answer) {
                for state in &answer.read_states {
                    check_state("GetUserReadStates", state, Some(request.user_id));
                    assert!(
                        state.version <= answer.version,
                        "GetUserReadStates: a state newer than the user"
                    );
                    assert!(
                        state.version > request.since_version.unwrap_or(0),
                        "GetUserReadStates: a state not changed since since_version"
                    );
                }
            }
        }
        _ => {
            let Ok(request) = proto::DeleteReadStatesRequest::decode(bytes) else {
                return;
            };
            let fields = ["user_id", "channel_ids"];
            let (user_id, channels) = (request.user_id, request.channel_ids.len());
            let answer = service.delete_read_states(Request::new(request)).await;
            if let Some(answer) = outcome("DeleteReadStates", &fields, answer) {
                assert_eq!(
                    answer.read_states.len(),
                    channels,
                    "DeleteReadStates: one per channel"
                );
                for state in &answer.read_states {
                    check_state("DeleteReadStates", state, Some(user_id));
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&rpc, bytes)) = data.split_first() else {
        return;
    };
    let harness = HARNESS.get_or_init(Harness::start);
    harness.runtime.block_on(call(&harness.service, rpc, bytes));
});
