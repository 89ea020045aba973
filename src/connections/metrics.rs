//! The metrics of the connections on the gRPC and `/metrics` ports: `readstates_connections_open{port}`, the connections the
//! server closed itself, `readstates_connections_reaped_total{port,reason}`,
//! and `readstates_connection_accept_errors_total{port,error}`. Together
//! they show idle sockets piling up, the cap biting and a process that has
//! run out of file descriptors. Beside them, the TLS handshakes that failed
//! on the gRPC port.

use crate::metrics::{Counter, Gauge, Metrics, label_values};

const OPEN: &str = "readstates_connections_open";
const REAPED: &str = "readstates_connections_reaped_total";
const ACCEPT_ERRORS: &str = "readstates_connection_accept_errors_total";

/// The listening ports whose connections are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerPort {
    /// The gRPC API, plaintext or TLS.
    Grpc,
    /// The `/metrics` endpoint.
    Metrics,
}

impl ListenerPort {
    /// Returns the `port` label's value.
    pub fn name(self) -> &'static str {
        match self {
            ListenerPort::Grpc => "grpc",
            ListenerPort::Metrics => "metrics",
        }
    }
}

label_values! {
    /// Why the server closed a connection itself: the `reason` label (its
    /// counter's index).
    pub enum ReapReason {
        /// No call started within the first-request timeout of its accept
        /// (TLS handshake included).
        FirstRequestTimeout => "first_request_timeout",
        /// No call open for the idle timeout.
        Idle => "idle",
        /// The longest-idle connection, closed to make room for a new one at
        /// the cap (or when accepting ran out of file descriptors).
        Evicted => "evicted",
        /// A new connection, closed at once: the cap was reached and every
        /// connection had a call open.
        Refused => "refused",
    }
}

label_values! {
    /// Why accepting a connection failed: the `error` label (its counter's
    /// index).
    pub enum AcceptFailure {
        /// The process or the system has no file descriptor left (EMFILE,
        /// ENFILE).
        FdLimit => "fd_limit",
        /// Anything else.
        Other => "other",
    }
}

/// One port's connection metrics.
#[derive(Clone)]
pub struct PortConnections {
    /// Connections open now (those being closed included: they still hold
    /// their descriptors).
    pub open: Gauge,
    /// Indexed by [`ReapReason`].
    reaped: [Counter; ReapReason::VALUES.len()],
    /// Indexed by [`AcceptFailure`].
    accept_failures: [Counter; AcceptFailure::VALUES.len()],
}

impl PortConnections {
    /// Handles that record nothing anyone reads (for unit tests).
    pub fn noop() -> Self {
        Self {
            open: Gauge::noop(),
            reaped: std::array::from_fn(|_| Counter::noop()),
            accept_failures: std::array::from_fn(|_| Counter::noop()),
        }
    }

    /// Counts one connection the server closed for `reason`.
    pub fn record_reaped(&self, reason: ReapReason) {
        self.reaped[reason as usize].increment(1);
    }

    /// Counts one failed accept.
    pub fn record_accept_failure(&self, failure: AcceptFailure) {
        self.accept_failures[failure as usize].increment(1);
    }

    fn register(metrics: &Metrics, port: ListenerPort) -> Self {
        let port = ("port", port.name());
        Self {
            open: metrics.gauge_with(OPEN, &[port]),
            reaped: ReapReason::VALUES
                .map(|reason| metrics.counter_with(REAPED, &[port, ("reason", reason)])),
            accept_failures: AcceptFailure::VALUES
                .map(|error| metrics.counter_with(ACCEPT_ERRORS, &[port, ("error", error)])),
        }
    }
}

/// The connection metrics of both ports.
pub struct ConnectionMetrics {
    grpc: PortConnections,
    metrics: PortConnections,
    /// TLS handshakes on the gRPC port that failed or timed out.
    pub tls_handshake_failures: Counter,
}

impl ConnectionMetrics {
    /// Registers the gauges and counters with `recorder`.
    pub fn register(metrics: &Metrics) -> Self {
        metrics.describe_gauge(
            OPEN,
            "Connections open on the port (port=\"grpc\" or \"metrics\"), those being closed included.",
        );
        metrics.describe_counter(
            REAPED,
            "Connections the server closed itself, by port and reason: \"first_request_timeout\" (no call started within server.first_request_timeout_ms or metrics.header_read_timeout_ms of the accept), \"idle\" (no call open for server.idle_timeout_ms; on the metrics port, no request headers within metrics.header_read_timeout_ms of the previous response), \"evicted\" (the longest-idle connection, closed to make room at the connection cap or when out of file descriptors), \"refused\" (a new connection closed at once: at the cap with a call open on every connection).",
        );
        metrics.describe_counter(
            ACCEPT_ERRORS,
            "Failed accepts, by port and error: \"fd_limit\" (EMFILE or ENFILE: no file descriptor left; accepting backs off up to 1 s) or \"other\".",
        );
        Self {
            grpc: PortConnections::register(metrics, ListenerPort::Grpc),
            metrics: PortConnections::register(metrics, ListenerPort::Metrics),
            tls_handshake_failures: metrics.counter(
                "readstates_tls_handshake_failures_total",
                "TLS handshakes on the gRPC port that failed (plaintext, a certificate from another CA) or timed out.",
            ),
        }
    }

    /// Returns `port`'s handles.
    pub fn port(&self, port: ListenerPort) -> PortConnections {
        match port {
            ListenerPort::Grpc => self.grpc.clone(),
            ListenerPort::Metrics => self.metrics.clone(),
        }
    }
}
