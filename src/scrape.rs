//! The `/metrics` endpoint: a small HTTP/1.1 server on its own listener,
//! serving what [`Metrics::render`] writes.
//!
//! Its connections are bounded like the gRPC port's (see `connections`): a
//! cap that closes the longest-idle connection to make room, so a new
//! scrape always gets through however many sockets sit idle; and a
//! deadline on each request's headers, counted from the accept or from the
//! previous response, so a slow, silent or idle client cannot hold a
//! connection.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method as HttpMethod, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connections::{
    Acceptor, ConnectionLimits, ConnectionTable, ListenerPort, PortConnections,
};
use crate::metrics::Metrics;

/// Serves `GET /metrics` until `shutdown` is cancelled, within `limits`
/// (whose first-request and idle timeouts are the header-read timeout).
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    port_metrics: PortConnections,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    // Bounded by the table's cap: a connection task ends once its
    // connection is closed, and the table counts it until then.
    let connections = TaskTracker::new();
    let table = Arc::new(ConnectionTable::new(limits, port_metrics.clone()));
    let mut acceptor = Acceptor::new(listener, table, port_metrics, ListenerPort::Metrics.name());
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            stream = acceptor.next() => stream,
        };
        let metrics = Arc::clone(&metrics);
        let shutdown = shutdown.clone();
        let calls = stream.calls();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                // Open until the page is written: an idle connection is one
                // between a response and the next request's headers.
                let call = calls.start();
                let response = respond(&request, &metrics).map(|body| {
                    body.map_frame(move |frame| {
                        let _open = &call;
                        frame
                    })
                });
                async move { Ok::<_, Infallible>(response) }
            });
            // The table closes (and counts) connections whose headers are
            // late; hyper's own timer, a little later, is the backstop.
            let header_read_backstop = limits.first_request_timeout + limits.reap_period() * 2;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_backstop)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "metrics connection failed");
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&HttpMethod::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
