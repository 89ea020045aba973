//! The readstates gRPC service (or the no-op server) as a load target.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    GetUserReadStatesRequest, RemoveMentionsRequest,
};

use crate::workload::Op;

/// Requests are spread round-robin over several HTTP/2 connections.
pub struct GrpcTarget {
    clients: Vec<ReadStatesClient<Channel>>,
    next: AtomicUsize,
    omit_mention_states: bool,
    call_timeout: Option<Duration>,
}

impl GrpcTarget {
    /// Opens `connections` HTTP/2 connections to `addr` (several addresses,
    /// comma-separated, share the connections round-robin: instances of one
    /// cluster), retrying for up to `wait` while the servers start. With
    /// `omit_mention_states`, AddMentions asks for no states back; with
    /// `call_timeout`, every call carries that deadline.
    pub async fn connect(
        addr: &str,
        connections: usize,
        wait: Duration,
        omit_mention_states: bool,
        call_timeout: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let mut endpoints = Vec::new();
        for addr in addr
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
        {
            let uri = if addr.contains("://") {
                addr.to_string()
            } else {
                format!("http://{addr}")
            };
            let endpoint = Endpoint::from_shared(uri.clone())
                .with_context(|| format!("invalid address {uri}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                // The channel's request queue: large enough that the generator
                // never waits on it before HTTP/2 flow control does.
                .buffer_size(16 * 1024);
            endpoints.push((uri, endpoint));
        }
        anyhow::ensure!(!endpoints.is_empty(), "no address in --addr {addr:?}");
        let deadline = Instant::now() + wait;
        let mut clients = Vec::with_capacity(connections);
        for index in 0..connections.max(endpoints.len()) {
            let (uri, endpoint) = &endpoints[index % endpoints.len()];
            // Each Endpoint::connect opens its own TCP connection.
            let channel = loop {
                match endpoint.connect().await {
                    Ok(channel) => break channel,
                    // Not up yet: try again shortly.
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => {
                        return Err(error).with_context(|| format!("connecting to {uri}"));
                    }
                }
            };
            clients.push(ReadStatesClient::new(channel));
        }
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            omit_mention_states,
            call_timeout,
        })
    }

    /// Wraps a request message, with the deadline every call carries
    /// (sent as `grpc-timeout`) if one is set.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.call_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    fn client(&self) -> ReadStatesClient<Channel> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[index].clone()
    }

    /// Acknowledges every one of `channels` for `user` at `message` in one
    /// BulkAck (for `warm`); returns how many states the server answered
    /// with.
    pub async fn bulk_ack(
        &self,
        user: u64,
        channels: &[u64],
        message: u64,
    ) -> Result<usize, tonic::Status> {
        let acks = channels
            .iter()
            .map(|&channel_id| ChannelAck {
                channel_id,
                message_id: message,
            })
            .collect();
        let response = self
            .client()
            .bulk_ack(BulkAckRequest {
                user_id: user,
                acks,
            })
            .await?;
        Ok(response.into_inner().read_states.len())
    }

    /// Issues one operation; an error is reported as its gRPC code.
    pub async fn execute(&self, op: &Op) -> Result<(), String> {
        let mut client = self.client();
        let result = match op {
            Op::Connect { user } => client
                .get_user_read_states(self.request(GetUserReadStatesRequest {
                    user_id: *user,
                    since_version: None,
                }))
                .await
                .map(drop),
            Op::Ack {
                user,
                channel,
                message,
            } => client
                .ack(self.request(AckRequest {
                    user_id: *user,
                    channel_id: *channel,
                    message_id: *message,
                    manual: false,
                    mention_count: None,
                }))
                .await
                .map(drop),
            Op::AddMentions {
                channel,
                message,
                users,
            } => client
                .add_mentions(self.request(AddMentionsRequest {
                    channel_id: *channel,
                    message_id: *message,
                    user_ids: users.to_vec(),
                    omit_read_states: self.omit_mention_states,
                }))
                .await
                .map(drop),
            Op::RemoveMentions {
                channel,
                message,
                users,
            } => client
                .remove_mentions(self.request(RemoveMentionsRequest {
                    channel_id: *channel,
                    message_id: *message,
                    user_ids: users.to_vec(),
                }))
                .await
                .map(drop),
            Op::AckPins {
                user,
                channel,
                pin_timestamp_ms,
            } => client
                .ack_pins(self.request(AckPinsRequest {
                    user_id: *user,
                    channel_id: *channel,
                    pin_timestamp_ms: *pin_timestamp_ms,
                }))
                .await
                .map(drop),
        };
        // The code, then (after a tab) the message, which the report keeps
        // one sample of per code.
        result.map_err(|status| format!("grpc:{:?}\t{}", status.code(), status.message()))
    }
}
