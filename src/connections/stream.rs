//! A connection's socket as the HTTP servers read it: it fails every read
//! and write once the table has closed the connection, and leaves the table
//! when dropped.
//!
//! Closing from inside the IO, rather than by aborting the connection's
//! task, works the same under tonic (which spawns its connections itself)
//! and under our own HTTP/1 server, and for plaintext and TLS alike.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use super::table::{CallGuard, ConnectionTable, Entry, Half};

/// A socket whose connection is tracked in a [`ConnectionTable`].
pub struct TrackedStream<S> {
    inner: S,
    entry: Arc<Entry>,
    table: Arc<ConnectionTable>,
}

impl<S> TrackedStream<S> {
    pub(super) fn new(inner: S, entry: Arc<Entry>, table: Arc<ConnectionTable>) -> Self {
        Self {
            inner,
            entry,
            table,
        }
    }

    /// Returns the socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Returns a handle that marks calls on this connection, for servers
    /// that see their connection (ours of `/metrics`; tonic's calls are
    /// marked by [`CallTrackingLayer`](super::CallTrackingLayer)).
    pub fn calls(&self) -> ConnectionCalls {
        ConnectionCalls {
            entry: Arc::clone(&self.entry),
        }
    }

    /// Returns whether the server has closed this connection (a timeout or
    /// an eviction), as opposed to the client or an error.
    pub fn closed_by_server(&self) -> ClosedByServer {
        ClosedByServer(Arc::clone(&self.entry))
    }
}

/// Tells, after the stream is gone, whether the server closed it.
pub struct ClosedByServer(Arc<Entry>);

impl ClosedByServer {
    /// Returns whether the server closed the connection.
    pub fn get(&self) -> bool {
        self.0.is_closed()
    }
}

/// Marks calls on one connection.
#[derive(Clone)]
pub struct ConnectionCalls {
    entry: Arc<Entry>,
}

impl ConnectionCalls {
    /// Marks the start of a call, open until the guard is dropped; `None`
    /// once the connection is being closed.
    pub fn start(&self) -> Option<CallGuard> {
        self.entry.start_call()
    }
}

impl<S> Drop for TrackedStream<S> {
    fn drop(&mut self) {
        // Runs just before `inner` (the socket) is dropped.
        self.table.remove(&self.entry);
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server (timeout or connection cap)",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.entry.poll_closed(Half::Read, cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.entry.poll_closed(Half::Write, cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.entry.poll_closed(Half::Write, cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.entry.poll_closed(Half::Write, cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Shows calls the socket's own addresses, as tonic does for a plain
/// `TcpStream` (so `Request::remote_addr` and, under TLS,
/// `Request::peer_certs` keep working); the call tracking finds the
/// connection by them.
impl<S: Connected> Connected for TrackedStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
