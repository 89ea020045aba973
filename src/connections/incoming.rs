//! Plaintext connections for the gRPC server: admitted by the [`Acceptor`]
//! and handed to tonic through a short queue (TLS connections go through
//! `auth::incoming`, which runs their handshakes first).
//!
//! tonic's own listener stream would hand it every accept error, which it
//! skips and asks again for at once: out of file descriptors, that spins.

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::acceptor::Acceptor;
use super::stream::TrackedStream;

/// Admitted connections waiting for tonic to take them.
const READY_QUEUE: usize = 64;

/// What the gRPC server reads its plaintext connections from.
pub type PlainIncoming = ReceiverStream<std::io::Result<TrackedStream<TcpStream>>>;

/// Starts accepting with `acceptor`. Returns the connections as a stream,
/// and the accepting task, which ends when the stream is dropped (the
/// server stopped taking connections).
pub fn plain_incoming(acceptor: Acceptor) -> (PlainIncoming, JoinHandle<()>) {
    let (ready, receiver) = mpsc::channel(READY_QUEUE);
    let task = tokio::spawn(accept_loop(acceptor, ready));
    (ReceiverStream::new(receiver), task)
}

async fn accept_loop(
    mut acceptor: Acceptor,
    ready: mpsc::Sender<std::io::Result<TrackedStream<TcpStream>>>,
) {
    loop {
        let stream = tokio::select! {
            stream = acceptor.next() => stream,
            () = ready.closed() => break,
        };
        // A send fails only once the server has stopped taking
        // connections; this one is then closed with the rest.
        if ready.send(Ok(stream)).await.is_err() {
            break;
        }
    }
}
