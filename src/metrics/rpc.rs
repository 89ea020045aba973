//! The gRPC calls' latency: `readstates_rpc_duration_seconds{method,code}`,
//! one [`AtomicHistogram`] per method and status code, so recording a call
//! is an index and three relaxed atomic adds.

use std::fmt::Write as _;
use std::time::Duration;

use tonic::Code;

use super::{AtomicHistogram, LATENCY_BUCKETS, Metrics};

const RPC_DURATION: &str = "readstates_rpc_duration_seconds";

/// The gRPC status codes, 0 to 16.
const CODES: usize = 17;

/// The RPCs of `readstates.v1.ReadStates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Ack,
    BulkAck,
    AddMentions,
    RemoveMentions,
    AckPins,
    GetReadState,
    GetUserReadStates,
    DeleteReadStates,
    GetRouting,
}

impl Method {
    const ALL: [Method; 9] = [
        Method::Ack,
        Method::BulkAck,
        Method::AddMentions,
        Method::RemoveMentions,
        Method::AckPins,
        Method::GetReadState,
        Method::GetUserReadStates,
        Method::DeleteReadStates,
        Method::GetRouting,
    ];

    /// Returns the RPC's name as gRPC spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ack => "Ack",
            Method::BulkAck => "BulkAck",
            Method::AddMentions => "AddMentions",
            Method::RemoveMentions => "RemoveMentions",
            Method::AckPins => "AckPins",
            Method::GetReadState => "GetReadState",
            Method::GetUserReadStates => "GetUserReadStates",
            Method::DeleteReadStates => "DeleteReadStates",
            Method::GetRouting => "GetRouting",
        }
    }
}

/// Returns the empty histograms of every method and code, indexed by
/// `method * CODES + code`: all of them exist from the start, so recording
/// never allocates.
pub(super) fn rpc_histograms() -> Box<[AtomicHistogram]> {
    (0..Method::ALL.len() * CODES)
        .map(|_| AtomicHistogram::new(LATENCY_BUCKETS))
        .collect()
}

impl Metrics {
    /// Records one call of `method` that ended with `code`.
    pub fn record_rpc(&self, method: Method, code: Code, elapsed: Duration) {
        let code_index = (code as usize).min(CODES - 1);
        self.rpc_durations[method as usize * CODES + code_index].record_duration(elapsed);
    }

    /// Appends the RPC latency histograms in the Prometheus text format.
    pub(super) fn render_rpc(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {RPC_DURATION} gRPC call latency, by method and status code.\n# TYPE {RPC_DURATION} histogram"
        );
        for method in Method::ALL {
            for code in 0..CODES {
                let histogram = &self.rpc_durations[method as usize * CODES + code];
                // OK is always shown, so queries work before the first call.
                if code != 0 && histogram.count() == 0 {
                    continue;
                }
                let labels = format!("method=\"{}\",code=\"{}\"", method.name(), code_name(code));
                histogram.render(RPC_DURATION, &labels, out);
            }
        }
    }
}

/// Returns the gRPC name of a status code, e.g. `OK`, `INVALID_ARGUMENT`.
fn code_name(code: usize) -> &'static str {
    const NAMES: [&str; CODES] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code).copied().unwrap_or("UNKNOWN")
}
