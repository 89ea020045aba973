//! TLS connections for the gRPC server: accepts TCP connections and runs
//! their handshakes concurrently, handing finished TLS streams to tonic.
//!
//! Each handshake runs in its own task, so one slow or silent client cannot
//! hold up the others; handshakes in progress are capped (past the cap,
//! new connections wait in the kernel's backlog) and each has a deadline.
//! A failed handshake (plaintext, a certificate from another CA) closes
//! that connection only, and is counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::ServerTls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 1_024;

/// A handshake not finished by then is dropped with its connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished TLS connections waiting for tonic to take them.
const READY_QUEUE: usize = 64;

/// What the gRPC server reads its connections from.
pub type TlsIncoming = ReceiverStream<std::io::Result<TlsStream<TcpStream>>>;

/// Starts accepting TLS connections on `listener`. Returns them as a
/// stream, and the accepting task, which ends when the stream is dropped
/// (the server stopped), its handshakes in progress with it.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    handshake_failures: Counter,
) -> (TlsIncoming, JoinHandle<()>) {
    let (ready, receiver) = mpsc::channel(READY_QUEUE);
    let task = tokio::spawn(accept_loop(listener, tls, ready, handshake_failures));
    (ReceiverStream::new(receiver), task)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    ready: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
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
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ready.closed() => break,
        };
        while handshakes.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                // As on plaintext connections (see `server`); a socket
                // that refuses it only answers later.
                let _ = stream.set_nodelay(true);
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
            // Passed on as a plain listener would: tonic skips the passing
            // ones (a connection reset before it was accepted) and stops on
            // the others.
            Err(error) => {
                if ready.send(Err(error)).await.is_err() {
                    break;
                }
            }
        }
    }
    handshakes.shutdown().await;
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    ready: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
    handshake_failures: Counter,
) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            // A send fails only once the server has stopped taking
            // connections; this one is then closed with the rest.
            let _ = ready.send(Ok(tls)).await;
        }
        Ok(Err(error)) => {
            handshake_failures.increment(1);
            tracing::debug!(%peer, %error, "tls handshake failed");
        }
        Err(_elapsed) => {
            handshake_failures.increment(1);
            tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "tls handshake timed out");
        }
    }
}
