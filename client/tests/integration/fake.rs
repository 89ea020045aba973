//! A scripted instance: a hand-written implementation of the service's
//! generated server trait, on a loopback port, that records every call
//! (method, users, arrival time, metadata) and answers from a script:
//! the next queued step first (a failure, or a stall), then a standing
//! failure if set, then success. Successful answers echo the request's
//! users, each state marked with the instance's `marker` in
//! `updated_at_ms`, so a test can tell which instance answered for which
//! user. Its change streams end subscriptions as scripted (`watch`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use readstates::api::proto::read_states_server::{ReadStates, ReadStatesServer};
use readstates::api::proto::*;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

mod watch;

/// What the instance does with a call before answering it.
pub enum Step {
    /// Fails it with this status.
    Fail(Status),
    /// Waits this long, then answers as if no step were queued.
    Stall(Duration),
}

/// One call the instance received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub user_ids: Vec<u64>,
    pub at: Instant,
    pub grpc_timeout: Option<String>,
    pub authorization: Option<String>,
}

/// The script and the record of one fake instance.
pub struct Script {
    marker: u64,
    steps: Mutex<VecDeque<Step>>,
    always: Mutex<Option<Status>>,
    routing: Mutex<Result<GetRoutingResponse, Status>>,
    calls: Mutex<Vec<Call>>,
    /// How its change streams answer subscriptions.
    pub watch: watch::WatchScript,
}

impl Script {
    /// Queues steps for the next calls (GetRouting is never scripted).
    pub fn then(&self, steps: impl IntoIterator<Item = Step>) {
        self.steps.lock().extend(steps);
    }

    /// Fails every call (after the queued steps) with `status`.
    pub fn always_fail(&self, status: Status) {
        *self.always.lock() = Some(status);
    }

    /// Answers GetRouting with `map` (FAILED_PRECONDITION until set).
    pub fn set_routing(&self, map: GetRoutingResponse) {
        *self.routing.lock() = Ok(map);
    }

    /// Returns the calls received, GetRouting excluded.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .iter()
            .filter(|call| call.method != "GetRouting")
            .cloned()
            .collect()
    }

    /// Returns how many GetRouting calls were received.
    pub fn routing_reads(&self) -> usize {
        let calls = self.calls.lock();
        calls
            .iter()
            .filter(|call| call.method == "GetRouting")
            .count()
    }

    /// Returns every user of the calls received, in arrival order.
    pub fn users(&self) -> Vec<u64> {
        self.calls()
            .into_iter()
            .flat_map(|call| call.user_ids)
            .collect()
    }

    fn state(&self, user_id: u64, channel_id: u64, message_id: u64) -> ReadState {
        ReadState {
            user_id,
            channel_id,
            last_message_id: message_id,
            updated_at_ms: self.marker,
            version: 1,
            ..ReadState::default()
        }
    }

    /// Records a call and plays the script for it.
    async fn play<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
        user_ids: Vec<u64>,
    ) -> Result<(), Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        self.calls.lock().push(Call {
            method,
            user_ids,
            at: Instant::now(),
            grpc_timeout: header("grpc-timeout"),
            authorization: header("authorization"),
        });
        if method == "GetRouting" {
            return Ok(());
        }
        let step = self.steps.lock().pop_front();
        match step {
            Some(Step::Fail(status)) => return Err(status),
            // A stalled call takes no later step: its caller may have given
            // up on it long before it ends.
            Some(Step::Stall(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        match self.always.lock().clone() {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }
}

/// A fake instance serving on loopback until dropped.
pub struct Fake {
    pub addr: SocketAddr,
    pub script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Fake {
    /// Starts an instance whose answers carry `marker`.
    pub async fn start(marker: u64) -> Self {
        let script = Arc::new(Script {
            marker,
            steps: Mutex::new(VecDeque::new()),
            always: Mutex::new(None),
            routing: Mutex::new(Err(Status::failed_precondition(
                "cluster.enabled is false on this instance",
            ))),
            calls: Mutex::new(Vec::new()),
            watch: watch::WatchScript::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = ReadStatesServer::new(Instance(Arc::clone(&script)));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            addr,
            script,
            server,
        }
    }

    /// Returns its `host:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

struct Instance(Arc<Script>);

#[tonic::async_trait]
impl ReadStates for Instance {
    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let ack = *request.get_ref();
        self.0.play("Ack", &request, vec![ack.user_id]).await?;
        let read_state = self.0.state(ack.user_id, ack.channel_id, ack.message_id);
        Ok(Response::new(AckResponse {
            read_state: Some(read_state),
        }))
    }

    async fn bulk_ack(
        &self,
        request: Request<BulkAckRequest>,
    ) -> Result<Response<BulkAckResponse>, Status> {
        let bulk = request.get_ref().clone();
        self.0.play("BulkAck", &request, vec![bulk.user_id]).await?;
        let read_states = bulk
            .acks
            .iter()
            .map(|ack| self.0.state(bulk.user_id, ack.channel_id, ack.message_id))
            .collect();
        Ok(Response::new(BulkAckResponse { read_states }))
    }

    async fn add_mentions(
        &self,
        request: Request<AddMentionsRequest>,
    ) -> Result<Response<AddMentionsResponse>, Status> {
        let fan_out = request.get_ref().clone();
        let users = fan_out.user_ids.clone();
        self.0.play("AddMentions", &request, users).await?;
        let read_states = match fan_out.omit_read_states {
            true => Vec::new(),
            false => fan_out
                .user_ids
                .iter()
                .map(|&user_id| self.0.state(user_id, fan_out.channel_id, 0))
                .collect(),
        };
        Ok(Response::new(AddMentionsResponse { read_states }))
    }

    async fn remove_mentions(
        &self,
        request: Request<RemoveMentionsRequest>,
    ) -> Result<Response<RemoveMentionsResponse>, Status> {
        let fan_out = request.get_ref().clone();
        let users = fan_out.user_ids.clone();
        self.0.play("RemoveMentions", &request, users).await?;
        let read_states = fan_out
            .user_ids
            .iter()
            .map(|&user_id| self.0.state(user_id, fan_out.channel_id, 0))
            .collect();
        Ok(Response::new(RemoveMentionsResponse { read_states }))
    }

    async fn ack_pins(
        &self,
        request: Request<AckPinsRequest>,
    ) -> Result<Response<AckPinsResponse>, Status> {
        let pins = *request.get_ref();
        self.0.play("AckPins", &request, vec![pins.user_id]).await?;
        let read_state = self.0.state(pins.user_id, pins.channel_id, 0);
        Ok(Response::new(AckPinsResponse {
            read_state: Some(read_state),
        }))
    }

    async fn get_read_state(
        &self,
        request: Request<GetReadStateRequest>,
    ) -> Result<Response<GetReadStateResponse>, Status> {
        let get = *request.get_ref();
        self.0
            .play("GetReadState", &request, vec![get.user_id])
            .await?;
        let read_state = self.0.state(get.user_id, get.channel_id, 0);
        Ok(Response::new(GetReadStateResponse {
            read_state: Some(read_state),
        }))
    }

    async fn get_user_read_states(
        &self,
        request: Request<GetUserReadStatesRequest>,
    ) -> Result<Response<GetUserReadStatesResponse>, Status> {
        let user_id = request.get_ref().user_id;
        self.0
            .play("GetUserReadStates", &request, vec![user_id])
            .await?;
        Ok(Response::new(GetUserReadStatesResponse {
            read_states: vec![self.0.state(user_id, 1, 0)],
            version: 1,
            ..GetUserReadStatesResponse::default()
        }))
    }

    async fn delete_read_states(
        &self,
        request: Request<DeleteReadStatesRequest>,
    ) -> Result<Response<DeleteReadStatesResponse>, Status> {
        let delete = request.get_ref().clone();
        self.0
            .play("DeleteReadStates", &request, vec![delete.user_id])
            .await?;
        let read_states = delete
            .channel_ids
            .iter()
            .map(|&channel_id| self.0.state(delete.user_id, channel_id, 0))
            .collect();
        Ok(Response::new(DeleteReadStatesResponse { read_states }))
    }

    async fn get_routing(
        &self,
        request: Request<GetRoutingRequest>,
    ) -> Result<Response<GetRoutingResponse>, Status> {
        self.0.play("GetRouting", &request, Vec::new()).await?;
        let routing = self.0.routing.lock().clone();
        routing.map(Response::new)
    }

    type WatchReadStatesStream = watch::Events;

    async fn watch_read_states(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchReadStatesStream>, Status> {
        Ok(Response::new(watch::serve(
            Arc::clone(&self.0),
            request.into_inner(),
        )))
    }
}

/// Returns a slot map of `slot_count` slots over `owners` (instance id,
/// address), each slot's holder chosen by `holder` (an index in `owners`,
/// or `None` for unknown).
pub fn slot_map(
    slot_count: u32,
    owners: &[(&str, String)],
    holder: impl Fn(u32) -> Option<usize>,
) -> GetRoutingResponse {
    GetRoutingResponse {
        slot_count,
        slot_hash: "splitmix64-mod".to_owned(),
        owners: owners
            .iter()
            .map(|(instance_id, address)| SlotOwner {
                instance_id: (*instance_id).to_owned(),
                address: address.clone(),
            })
            .collect(),
        slot_owners: (0..slot_count)
            .map(|slot| holder(slot).map_or(0, |index| index as u32 + 1))
            .collect(),
    }
}
