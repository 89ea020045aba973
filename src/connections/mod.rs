//! Connections on the gRPC and `/metrics` ports, bounded and reaped, so
//! that idle or silent sockets cannot exhaust the process's file
//! descriptors and starve real callers and scrapes.
//!
//! Each port has a [`ConnectionTable`] with a cap (`server.max_connections`,
//! `metrics.max_connections`, fitted under the open-files limit): past it
//! the longest-idle connection is closed to make room, those that never
//! started a call first, and a new one is refused only when every
//! connection has a call open. A connection whose first call has not
//! started within the first-request timeout of its accept, or with no call
//! open for the idle timeout, is closed. The [`Acceptor`] accepts into the
//! table, backing off (and logging sparingly) when accepting fails, and
//! reaps it between accepts; [`TrackedStream`] is the socket the HTTP
//! servers read, which fails once the table closes it; gRPC calls are
//! marked open by [`CallTrackingLayer`], `/metrics` requests by
//! [`ConnectionCalls`].

mod acceptor;
mod calls;
mod incoming;
mod limits;
mod metrics;
mod stream;
mod table;

pub use acceptor::Acceptor;
pub use calls::{CallTracking, CallTrackingLayer};
pub use incoming::{PlainIncoming, plain_incoming};
pub use limits::{ConnectionLimits, open_files_limit, port_limits};
pub use metrics::{AcceptFailure, ConnectionMetrics, ListenerPort, PortConnections, ReapReason};
pub use stream::{ClosedByServer, ConnectionCalls, TrackedStream};
pub use table::{Admission, CallGuard, ConnectionKey, ConnectionTable};
