//! What the gRPC port serves beside ReadStates: standard health checking
//! (`grpc.health.v1`), with a name that says whether the store takes writes,
//! and server reflection in both versions.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::proto;

/// The `grpc.health.v1` name whose status says whether the store takes the
/// write-behind's writes: `NOT_SERVING` while it refuses them (see
/// `flush::health`). The service's own status stays `SERVING`: cached
/// reads, and changes until the dirty backlog fills, still work.
pub const STORE_HEALTH: &str = "readstates.store";

/// Health and reflection requests carry a service, symbol or file name (a
/// few hundred bytes at most), and they answer anyone, credentials or not:
/// a small fixed limit instead of `limits.max_request_bytes`. It also
/// bounds what reflection echoes back: an unknown symbol comes back whole
/// in a NOT_FOUND message, which tonic-reflection writes and we cannot
/// trim; under 4 KiB it stays within a client's default header list
/// (16 KiB) even when every byte is percent-encoded.
pub const PROBE_MAX_REQUEST_BYTES: usize = 4 * 1024;

/// Returns the reflection builder over this service's and health's
/// descriptors; the caller builds both versions: much tooling (Python's
/// grpcio-reflection, older grpcurl, Postman and Evans builds) speaks only
/// v1alpha.
pub fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps [`STORE_HEALTH`] in step with the write-behind's view of the
/// store until the shutdown starts.
pub async fn report_store_health(
    reporter: HealthReporter,
    mut failing: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        let status = if *failing.borrow_and_update() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        reporter.set_service_status(STORE_HEALTH, status).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = failing.changed() => if changed.is_err() { return },
        }
    }
}
