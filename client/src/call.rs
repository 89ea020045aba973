//! One call, from the caller's request to its answer: each attempt goes to
//! the target the router names, carries the bearer token and the deadline
//! (as `grpc-timeout`, and enforced here too, so a silent connection times
//! out), and a failure is retried or returned as the [`RetryPolicy`]
//! decides. A failure that says the slot map moved refreshes the map at
//! once; the retry waits for that refresh (and its backoff) so that it
//! goes to the new owner.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::error::ConnectError;
use crate::proto::GetRoutingRequest;
use crate::proto::read_states_client::ReadStatesClient as GrpcClient;
use crate::retry::{Jitter, RetryBudget, RetryPolicy, Rpc, Verdict};
use crate::router::Router;
use crate::routing::{SlotMap, hints_map_moved};

/// The generated client of one channel.
pub(crate) type Stub = GrpcClient<Channel>;

/// What every clone of a client shares.
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) policy: RetryPolicy,
    pub(crate) budget: RetryBudget,
    pub(crate) jitter: Jitter,
    /// `Bearer <token>`, when the client was given one.
    pub(crate) authorization: Option<AsciiMetadataValue>,
    /// The deadline of the client's own calls (`GetRouting`).
    pub(crate) deadline: Duration,
}

impl Shared {
    /// Sends `message` to the owner of `user_id` (to any instance when
    /// `None`) with `send`, each attempt within `deadline`, retrying per
    /// the policy; returns the answer or the last failure.
    pub(crate) async fn unary<Req, Resp, Dispatch, Answer>(
        self: &Arc<Self>,
        rpc: Rpc,
        user_id: Option<u64>,
        message: &Req,
        deadline: Duration,
        send: Dispatch,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        Dispatch: Fn(Stub, Request<Req>) -> Answer,
        Answer: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut attempt = 1;
        loop {
            let target = self.router.target(user_id);
            let request = self.request(message.clone(), deadline);
            let answer = tokio::time::timeout(deadline, send(Stub::new(target.channel), request));
            let status = match answer.await {
                Ok(Ok(response)) => {
                    self.budget.record_success();
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) if lost_connection(&status) => Status::unavailable(format!(
                    "{} at {}: the connection failed ({}: {})",
                    rpc.method(),
                    target.address,
                    status.code().description(),
                    status.message()
                )),
                Ok(Err(status)) if !timed_out(&status) => status,
                Ok(Err(_)) | Err(_) => Status::deadline_exceeded(format!(
                    "{} at {} did not answer within the deadline of {} ms",
                    rpc.method(),
                    target.address,
                    deadline.as_millis()
                )),
            };
            // A lost connection may mean the instance has gone, and its
            // slots with it.
            let map_moved = hints_map_moved(&status) || status.code() == Code::Unavailable;
            let verdict =
                self.policy
                    .decide(rpc, &status, attempt, &self.budget, self.jitter.next());
            match verdict {
                Verdict::Retry { after } => {
                    tracing::debug!(
                        rpc = rpc.method(),
                        code = ?status.code(),
                        detail = status.message(),
                        address = %target.address,
                        attempt,
                        backoff_ms = after.as_millis() as u64,
                        "retrying a failed call"
                    );
                    if map_moved {
                        let refresh = tokio::time::timeout(
                            deadline.max(after),
                            self.refresh(Some(target.generation)),
                        );
                        let _ = tokio::join!(refresh, tokio::time::sleep(after));
                    } else {
                        tokio::time::sleep(after).await;
                    }
                    attempt += 1;
                }
                Verdict::Return(reason) => {
                    tracing::debug!(
                        rpc = rpc.method(),
                        code = ?status.code(),
                        address = %target.address,
                        attempt,
                        ?reason,
                        "returning a failed call"
                    );
                    if map_moved {
                        let shared = Arc::clone(self);
                        tokio::spawn(async move { shared.refresh(Some(target.generation)).await });
                    }
                    return Err(status);
                }
            }
        }
    }

    /// Returns `message` as a request with the deadline and the token.
    fn request<T>(&self, message: T, deadline: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(deadline);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// Reads the slot map again and routes by it, unless the map in use
    /// is no longer that of generation `seen` (another refresh replaced it
    /// meanwhile). A failed read keeps the map in use; a map that cannot
    /// be routed by (an unknown slot hash) is dropped for round-robin.
    pub(crate) async fn refresh(&self, seen: Option<u64>) -> Result<(), ConnectError> {
        let _flight = self.router.refreshing.lock().await;
        if seen.is_some_and(|seen| seen != self.router.generation()) {
            return Ok(());
        }
        match self.fetch_map().await {
            Ok(map) => {
                self.router.install(map);
                Ok(())
            }
            Err(ConnectError::SlotMap(error)) => {
                tracing::error!(%error, "the slot map cannot be routed by; sending calls round-robin");
                self.router.install(None);
                Err(ConnectError::SlotMap(error))
            }
            Err(error) => {
                tracing::warn!(%error, "reading the slot map failed; keeping the one in use");
                Err(error)
            }
        }
    }

    /// Reads `GetRouting` from the first instance that answers: the map,
    /// or `None` when the cluster is off (`FAILED_PRECONDITION`).
    pub(crate) async fn fetch_map(&self) -> Result<Option<SlotMap>, ConnectError> {
        let targets = self.router.routing_targets();
        let tried = targets.len();
        let mut last = Status::unavailable("no instance to ask");
        for (address, channel) in targets {
            let request = self.request(GetRoutingRequest {}, self.deadline);
            let mut stub = Stub::new(channel);
            match tokio::time::timeout(self.deadline, stub.get_routing(request)).await {
                Ok(Ok(response)) => {
                    return Ok(Some(SlotMap::from_response(response.into_inner())?));
                }
                Ok(Err(status)) if status.code() == Code::FailedPrecondition => return Ok(None),
                Ok(Err(status)) if !timed_out(&status) => last = status,
                Ok(Err(_)) | Err(_) => {
                    last = Status::deadline_exceeded(format!(
                        "GetRouting at {address} did not answer within {} ms",
                        self.deadline.as_millis()
                    ));
                }
            }
            tracing::debug!(%address, code = ?last.code(), detail = last.message(), "GetRouting failed");
        }
        Err(ConnectError::GetRoutingFailed {
            tried,
            status: Box::new(last),
        })
    }
}

/// Returns whether the attempt failed on its connection rather than with
/// an answer of the instance: a status made here, from a transport error
/// (it has a source; one read off the wire has none), such as `UNKNOWN`
/// "transport error" (a reset connection), `CANCELLED` (the connection
/// closed under the call) or `INTERNAL` (an HTTP/2 `GOAWAY` or reset). The
/// call may or may not have been applied, as after a timeout: it is
/// `UNAVAILABLE` to the retry policy.
fn lost_connection(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unknown | Code::Cancelled | Code::Internal | Code::Unavailable
    ) && std::error::Error::source(status).is_some_and(|source| !is_timeout(source))
}

/// Returns whether `error`, or an error it wraps, is tonic's timeout.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Returns whether the attempt's deadline passed: tonic's client ended it
/// at its `grpc-timeout` itself (`CANCELLED`, with a `TimeoutExpired`
/// source), or the instance's server did (`CANCELLED` "Timeout expired",
/// tonic's answer when a call outlives its `grpc-timeout` there), where the
/// gRPC spec, and so the retry policy, says `DEADLINE_EXCEEDED`.
fn timed_out(status: &Status) -> bool {
    if status.code() != Code::Cancelled {
        return false;
    }
    status.message() == "Timeout expired"
        || std::error::Error::source(status).is_some_and(is_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_of_the_connection_is_told_from_an_answer() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(lost_connection(&Status::from_error(Box::new(reset))));
        // The same codes read off the wire are the instance's answers.
        assert!(!lost_connection(&Status::unknown("transport error")));
        assert!(!lost_connection(&Status::internal("h2 protocol error")));
        assert!(!lost_connection(&Status::cancelled(
            "operation was canceled"
        )));
    }

    #[test]
    fn an_instance_that_timed_out_the_call_is_a_passed_deadline() {
        assert!(timed_out(&Status::cancelled("Timeout expired")));
        assert!(!timed_out(&Status::cancelled("the caller went away")));
        assert!(!timed_out(&Status::unavailable("Timeout expired")));
    }
}
