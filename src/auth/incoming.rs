//! TLS connections for the gRPC server: takes the connections the
//! [`Acceptor`] admits and runs their handshakes concurrently, handing
//! finished TLS streams to tonic.
//!
//! Each handshake runs in its own task, so one slow or silent client cannot
//! hold up the others; handshakes in progress are capped (past the cap,
//! new connections wait in the kernel's backlog) and each has a deadline.
//! A failed handshake (plaintext, a certificate from another CA) closes
//! that connection only, and is counted. The connection table's rules
//! apply from the accept, handshake included: the first call must start
//! within `server.first_request_timeout_ms`, and the cap counts handshakes
//! in progress.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::ServerTls;
use crate::connections::{Acceptor, TrackedStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 1_024;

/// A handshake not finished by then is dropped with its connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished TLS connections waiting for tonic to take them.
const READY_QUEUE: usize = 64;

/// A TLS connection, tracked in the gRPC port's connection table.
type TlsConnection = TlsStream<TrackedStream<TcpStream>>;

/// What the gRPC server reads its connections from.
pub type TlsIncoming = ReceiverStream<std::io::Result<TlsConnection>>;

/// Starts accepting TLS connections with `acceptor`. Returns them as a
/// stream, and the accepting task, which ends when the stream is dropped
/// (the server stopped), its handshakes in progress with it.
pub fn tls_incoming(
    acceptor: Acceptor,
    tls: Arc<ServerTls>,
    handshake_failures: Counter,
) -> (TlsIncoming, JoinHandle<()>) {
    let (ready, receiver) = mpsc::channel(READY_QUEUE);
    let task = tokio::spawn(accept_loop(acceptor, tls, ready, handshake_failures));
    (ReceiverStream::new(receiver), task)
}

async fn accept_loop(
    mut acceptor: Acceptor,
    tls: Arc<ServerTls>,
    ready: mpsc::Sender<std::io::Result<TlsConnection>>,
    handshake_failures: Counter,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
            () = ready.closed() => break,
        };
        // Accept errors never come here: the acceptor backs off and
        // retries them, where tonic would skip them and ask again at once.
        let stream = tokio::select! {
            stream = acceptor.next() => stream,
            () = ready.closed() => break,
        };
        while handshakes.try_join_next().is_some() {}
        let peer = stream.get_ref().peer_addr().ok();
        // The configuration in force now: a reload applies to the
        // connections accepted after it.
        let handshake = handshake(
            TlsAcceptor::from(tls.current()),
            stream,
            peer,
            ready.clone(),
            handshake_failures.clone(),
        );
        handshakes.spawn(async move {
            let _permit = permit;
            handshake.await;
        });
    }
    handshakes.shutdown().await;
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TrackedStream<TcpStream>,
    peer: Option<SocketAddr>,
    ready: mpsc::Sender<std::io::Result<TlsConnection>>,
    handshake_failures: Counter,
) {
    let closed_by_server = stream.closed_by_server();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            // A send fails only once the server has stopped taking
            // connections; this one is then closed with the rest.
            let _ = ready.send(Ok(tls)).await;
        }
        // Closed by the connection table (first-request timeout, or evicted
        // at the cap): counted there, not as a failed handshake.
        Ok(Err(_)) if closed_by_server.get() => {}
        Ok(Err(error)) => {
            handshake_failures.increment(1);
            tracing::debug!(?peer, %error, "tls handshake failed");
        }
        Err(_elapsed) => {
            handshake_failures.increment(1);
            tracing::debug!(?peer, timeout = ?HANDSHAKE_TIMEOUT, "tls handshake timed out");
        }
    }
}
