//! Following users' changes (ARCHITECTURE.md §1.3): the registry of who
//! watches which user, which is the engine's change hook, and each
//! stream's bounded outbox of events. The gRPC stream that subscribes
//! users and sends their events is `api::watch`; this room knows nothing of
//! gRPC.

mod metrics;
mod outbox;
mod registry;

pub use metrics::WatchMetrics;
pub use outbox::{Changes, EndReason, Event, Outbox, Taken};
pub use registry::Watchers;
