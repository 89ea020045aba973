//! The sections of how calls are taken in and watched: `[server]`, the
//! gRPC listener and its connections; `[limits]`, what one call may ask
//! and how many may run; `[metrics]`, the Prometheus endpoint; and
//! `[log]`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `limits.max_in_flight_calls` when the configuration does not say.
pub const DEFAULT_MAX_IN_FLIGHT_CALLS: usize = 10_000;

/// The most calls one connection may have open. The HTTP/2 layer (h2) guards
/// against floods of small DATA frames with a per-connection budget of about
/// 512 KiB at the default window, charged about 230 bytes for each request
/// not yet read; past it, it closes the connection (GOAWAY
/// `ENHANCE_YOUR_CALM`) and every call on it fails. On an overloaded server,
/// every open stream can hold an unread request, so the stream limit stays
/// below that budget: 2048 streams are about 470 KiB.
pub const MAX_STREAMS_PER_CONNECTION: usize = 2048;

/// The gRPC listener and request handling.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gRPC API listens on.
    pub listen_addr: SocketAddr,
    /// Calls open at once on one connection, advertised to clients as the
    /// HTTP/2 stream limit: a client queues further calls until one ends
    /// (one that ignores the limit gets `UNAVAILABLE`). At most
    /// [`MAX_STREAMS_PER_CONNECTION`].
    pub max_concurrent_requests_per_connection: usize,
    /// A request running longer than this is cancelled (`CANCELLED`/deadline).
    pub request_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long calls in flight may take to finish
    /// before their connections are closed and the final flush starts.
    pub drain_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long the drain and the final flush may take
    /// before the process gives up and exits non-zero.
    pub shutdown_timeout_ms: u64,
    /// Most connections open at once; past it the longest-idle connection
    /// is closed to make room (or, if every one has a call open, the new
    /// one). Lowered at start to fit three quarters of the open-files
    /// limit, less `metrics.max_connections`.
    pub max_connections: usize,
    /// A connection that has not started a call this long after its
    /// accept (TLS handshake included) is closed.
    pub first_request_timeout_ms: u64,
    /// A connection with no call open for this long is closed.
    pub idle_timeout_ms: u64,
    /// HTTP/2 pings to each connection this often (0: none); a client that
    /// does not answer within `keepalive_timeout_ms` is disconnected.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
}

/// Request size limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most user ids in one AddMentions/RemoveMentions.
    pub max_mention_users: usize,
    /// Most acks in one BulkAck.
    pub max_bulk_acks: usize,
    /// Most channel ids in one DeleteReadStates.
    pub max_delete_channels: usize,
    /// Most ReadStates calls in flight at once, over all connections; a
    /// call past it is refused at once with `RESOURCE_EXHAUSTED` rather
    /// than queued into a timeout. Health and reflection are not counted.
    pub max_in_flight_calls: usize,
    /// Largest request message, in bytes; a larger one is refused with
    /// `OUT_OF_RANGE` before it is decoded.
    pub max_request_bytes: usize,
    /// While tasks wait longer than this for a runtime worker (the server
    /// is short of CPU), new calls are refused at once with
    /// `RESOURCE_EXHAUSTED`; 0 turns the check off. See `overload`.
    pub max_queue_delay_ms: u64,
}

/// Change streams (`WatchReadStates`, ARCHITECTURE.md §1.3).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Most streams open at once; past it a new one is refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// Most users one stream follows at once; a subscription past it ends
    /// the stream with `RESOURCE_EXHAUSTED`.
    pub max_users_per_stream: usize,
    /// Changes one stream holds for its subscriber, over all its users
    /// (about 80 bytes each). A user whose change finds the buffer full
    /// falls behind: its events are dropped, and once the subscriber has
    /// read the buffer down, the user is caught up again from the last
    /// version sent. Writes never wait for a subscriber.
    pub buffer_events: usize,
    /// The shortest time between two messages of one stream, in ms: the
    /// events of a busy stream wait up to this long and leave together
    /// (one message, one HTTP/2 frame and one write for many events),
    /// while the first event after a quiet spell leaves at once. 0 sends
    /// each batch as soon as it is queued.
    pub coalesce_ms: u64,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Address of the `/metrics` HTTP endpoint.
    pub listen_addr: SocketAddr,
    /// Most connections open at once; past it the longest-idle one is
    /// closed to make room, so a new scrape always gets through.
    pub max_connections: usize,
    /// A connection whose request headers have not all arrived this long
    /// after its accept, or after its previous response (a kept-alive
    /// connection left idle), is closed.
    pub header_read_timeout_ms: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `readstates=debug`; `RUST_LOG`
    /// takes precedence when set.
    pub level: String,
    /// Emit JSON lines instead of human-readable text.
    pub json: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_concurrent_requests_per_connection: 1024,
            request_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
            shutdown_timeout_ms: 60_000,
            max_connections: 10_000,
            first_request_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_mention_users: 10_000,
            max_bulk_acks: 1_000,
            max_delete_channels: 1_000,
            max_in_flight_calls: DEFAULT_MAX_IN_FLIGHT_CALLS,
            max_request_bytes: 1 << 20,
            max_queue_delay_ms: 0,
        }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            max_streams: 1_024,
            max_users_per_stream: 100_000,
            buffer_events: 8_192,
            coalesce_ms: 5,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_connections: 16,
            header_read_timeout_ms: 5_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            json: false,
        }
    }
}

impl ServerConfig {
    /// Returns the HTTP/2 keepalive ping interval, `None` when off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }

    /// Returns how long a keepalive ping may wait for its answer.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }
}
