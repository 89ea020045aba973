//! The gRPC calls' latency: `readstates_rpc_duration_seconds{method,code}`,
//! one [`AtomicHistogram`] per method and status code, so recording a call
//! is an index and three relaxed atomic adds.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::metrics::{AtomicHistogram, Histograms, LATENCY_BUCKETS, Metrics, render_histograms};

const RPC_DURATION: &str = "readstates_rpc_duration_seconds";

/// Status codes 0 to 16; anything else counts as the last.
const CODES: usize = 17;

/// The `method` label.
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

    /// The method's name, as in the proto.
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

/// The latency histograms of every method and status code.
pub(super) struct CallLatency {
    /// Indexed by `method * CODES + code`.
    durations: Box<[AtomicHistogram]>,
}

impl CallLatency {
    /// Registers the histograms with `metrics`, once per server.
    pub(super) fn register(metrics: &Metrics) -> Arc<Self> {
        let latency = Arc::new(Self {
            durations: (0..Method::ALL.len() * CODES)
                .map(|_| AtomicHistogram::new(LATENCY_BUCKETS))
                .collect(),
        });
        metrics.register_histograms(Arc::clone(&latency) as Arc<dyn Histograms>);
        latency
    }

    /// Records one call's latency and status code.
    pub(super) fn record(&self, method: Method, code: Code, elapsed: Duration) {
        let code_index = (code as usize).min(CODES - 1);
        self.durations[method as usize * CODES + code_index].record_duration(elapsed);
    }
}

impl Histograms for CallLatency {
    fn render(&self, out: &mut String) {
        let members = Method::ALL.into_iter().flat_map(|method| {
            (0..CODES).filter_map(move |code| {
                let histogram = &self.durations[method as usize * CODES + code];
                // OK is always shown, so queries work before the first call.
                (code == 0 || histogram.count() > 0).then(|| {
                    let labels =
                        format!("method=\"{}\",code=\"{}\"", method.name(), code_name(code));
                    (labels, histogram)
                })
            })
        });
        render_histograms(
            out,
            RPC_DURATION,
            "gRPC call latency, by method and status code.",
            members,
        );
    }
}

/// The `code` label: the status code's name.
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
