//! The client over loopback, without a cluster: against a real readstates
//! server started in this process (the cluster off, so round-robin), and
//! against scripted fake instances (a hand-written implementation of the
//! service's generated server trait) that fail on demand, count calls, and
//! answer GetRouting with slot maps naming each other (or real servers, whose
//! change streams the client's watch follows). One binary, so the
//! server crate is linked once.

mod fake;
mod fallback;
mod retries;
mod routing;
mod service;
mod tls;
mod watch;
