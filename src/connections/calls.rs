//! Marks every gRPC call (ReadStates, health and reflection alike) as open
//! on its connection, from the moment tonic routes it until its response
//! body is done: a connection is idle, and may be reaped or evicted, only
//! when none is open. A health `Watch` stream keeps its connection, and
//! HTTP/2 pings, which are no call, do not.
//!
//! tonic spawns its connections itself and shows a call nothing of its
//! connection but the addresses it puts in the request's extensions, so
//! the connection is looked up by them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, StdError, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;

use super::table::{ConnectionKey, ConnectionTable};

/// Adds [`CallTracking`] to a tonic server (`Server::builder().layer(..)`).
#[derive(Clone)]
pub struct CallTrackingLayer {
    table: Arc<ConnectionTable>,
}

impl CallTrackingLayer {
    /// Marks calls in `table`, the one the server's connections come from.
    pub fn new(table: Arc<ConnectionTable>) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for CallTrackingLayer {
    type Service = CallTracking<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTracking {
            inner,
            table: Arc::clone(&self.table),
        }
    }
}

/// Marks each call open on its connection while it runs.
#[derive(Clone)]
pub struct CallTracking<S> {
    inner: S,
    table: Arc<ConnectionTable>,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for CallTracking<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    ResponseBody::Error: Into<StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    // Boxed, as tonic's own layers box theirs: one allocation per call.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let call = connection_key(&request).and_then(|key| self.table.start_call(&key));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| match call {
                // The call stays open while the body is streamed; the
                // guard goes with the body when hyper drops it.
                Some(call) => Body::new(body.map_frame(move |frame| {
                    let _open = &call;
                    frame
                })),
                None => Body::new(body),
            }))
        })
    }
}

/// Returns the connection a call came on, by the addresses tonic put in its
/// extensions (plaintext or TLS).
fn connection_key<B>(request: &http::Request<B>) -> Option<ConnectionKey> {
    let extensions = request.extensions();
    let addresses = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    })?;
    Some(ConnectionKey {
        local: addresses.local_addr()?,
        peer: addresses.remote_addr()?,
    })
}
