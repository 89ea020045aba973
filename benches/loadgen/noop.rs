//! A no-op `readstates.v1.ReadStates` server: fixed, valid responses and no
//! work (or a fixed spin of CPU per call, `--spin-us`), served with the same
//! tonic settings as the real server (request timeout, per-connection
//! concurrency limit, load shedding), so the same harness measures the
//! framework's ceiling on this machine.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use readstates::api::proto::read_states_server::{ReadStates, ReadStatesServer};
use readstates::api::proto::{
    AckPinsRequest, AckPinsResponse, AckRequest, AckResponse, AddMentionsRequest,
    AddMentionsResponse, BulkAckRequest, BulkAckResponse, DeleteReadStatesRequest,
    DeleteReadStatesResponse, GetReadStateRequest, GetReadStateResponse, GetRoutingRequest,
    GetRoutingResponse, GetUserReadStatesRequest, GetUserReadStatesResponse, ReadState,
    RemoveMentionsRequest, RemoveMentionsResponse, WatchRequest,
};

/// A fixed timestamp for every response.
const UPDATED_AT_MS: u64 = 1_700_000_000_000;

fn state(user_id: u64, channel_id: u64, last_message_id: u64) -> ReadState {
    ReadState {
        user_id,
        channel_id,
        last_message_id,
        mention_count: 0,
        last_pin_timestamp_ms: 0,
        updated_at_ms: UPDATED_AT_MS,
        version: 1,
    }
}

/// Answers every call at once, or after spinning `spin` of CPU time on the
/// worker (`noop-server --spin-us`): the floor of a server that costs that
/// much more per call.
#[derive(Debug, Default)]
pub struct Noop {
    spin: Duration,
}

impl Noop {
    /// Busy-waits `spin` on the calling thread (no system call, no yield).
    fn work(&self) {
        if self.spin.is_zero() {
            return;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < self.spin {
            std::hint::spin_loop();
        }
    }
}

#[tonic::async_trait]
impl ReadStates for Noop {
    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.work();
        let request = request.into_inner();
        Ok(Response::new(AckResponse {
            read_state: Some(state(
                request.user_id,
                request.channel_id,
                request.message_id,
            )),
        }))
    }

    async fn bulk_ack(
        &self,
        request: Request<BulkAckRequest>,
    ) -> Result<Response<BulkAckResponse>, Status> {
        self.work();
        let request = request.into_inner();
        Ok(Response::new(BulkAckResponse {
            read_states: request
                .acks
                .iter()
                .map(|ack| state(request.user_id, ack.channel_id, ack.message_id))
                .collect(),
        }))
    }

    async fn add_mentions(
        &self,
        request: Request<AddMentionsRequest>,
    ) -> Result<Response<AddMentionsResponse>, Status> {
        self.work();
        let request = request.into_inner();
        Ok(Response::new(AddMentionsResponse {
            read_states: request
                .user_ids
                .iter()
                .map(|user| state(*user, request.channel_id, 0))
                .collect(),
        }))
    }

    async fn remove_mentions(
        &self,
        request: Request<RemoveMentionsRequest>,
    ) -> Result<Response<RemoveMentionsResponse>, Status> {
        self.work();
        let request = request.into_inner();
        Ok(Response::new(RemoveMentionsResponse {
            read_states: request
                .user_ids
                .iter()
                .map(|user| state(*user, request.channel_id, 0))
                .collect(),
        }))
    }

    async fn ack_pins(
        &self,
        request: Request<AckPinsRequest>,
    ) -> Result<Response<AckPinsResponse>, Status> {
        self.work();
        let request = request.into_inner();
        let mut read_state = state(request.user_id, request.channel_id, 0);
        read_state.last_pin_timestamp_ms = request.pin_timestamp_ms;
        Ok(Response::new(AckPinsResponse {
            read_state: Some(read_state),
        }))
    }

    async fn get_read_state(
        &self,
        request: Request<GetReadStateRequest>,
    ) -> Result<Response<GetReadStateResponse>, Status> {
        self.work();
        let request = request.into_inner();
        Ok(Response::new(GetReadStateResponse {
            read_state: Some(state(request.user_id, request.channel_id, 0)),
        }))
    }

    async fn get_user_read_states(
        &self,
        _request: Request<GetUserReadStatesRequest>,
    ) -> Result<Response<GetUserReadStatesResponse>, Status> {
        self.work();
        Ok(Response::new(GetUserReadStatesResponse {
            version: 1,
            ..GetUserReadStatesResponse::default()
        }))
    }

    async fn delete_read_states(
        &self,
        request: Request<DeleteReadStatesRequest>,
    ) -> Result<Response<DeleteReadStatesResponse>, Status> {
        self.work();
        let request = request.into_inner();
        Ok(Response::new(DeleteReadStatesResponse {
            read_states: request
                .channel_ids
                .iter()
                .map(|channel| state(request.user_id, *channel, 0))
                .collect(),
        }))
    }

    async fn get_routing(
        &self,
        _request: Request<GetRoutingRequest>,
    ) -> Result<Response<GetRoutingResponse>, Status> {
        // As readstates answers with the cluster off.
        Err(Status::failed_precondition(
            "no cluster: one instance serves every user",
        ))
    }

    type WatchReadStatesStream = readstates::api::WatchStream;

    async fn watch_read_states(
        &self,
        _request: Request<tonic::Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchReadStatesStream>, Status> {
        Err(Status::unimplemented(
            "the no-op server has no change streams",
        ))
    }
}

/// Serves the no-op service on `addr` until SIGTERM or SIGINT, each call
/// spinning `spin` first.
pub async fn serve(addr: SocketAddr, spin: Duration) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    // Same line format as the real server, so scripts can wait for it.
    println!("noop-server listening grpc_addr={bound}");
    tonic::transport::Server::builder()
        // The real server's defaults (readstates.example.toml).
        .timeout(Duration::from_millis(10_000))
        .concurrency_limit_per_connection(4096)
        .load_shed(true)
        .add_service(ReadStatesServer::new(Noop { spin }))
        .serve_with_incoming_shutdown(
            // TCP_NODELAY, as the real server sets it: without it a
            // response's later writes wait for the client's delayed ACK.
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
                accepted.inspect(|stream| {
                    let _ = stream.set_nodelay(true);
                })
            }),
            async {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            },
        )
        .await
        .context("serving the no-op service")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_spins_at_least_its_spin() {
        let spin = Duration::from_millis(3);
        let started = std::time::Instant::now();
        Noop { spin }.work();
        assert!(started.elapsed() >= spin, "{:?}", started.elapsed());
    }
}
