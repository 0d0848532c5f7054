//! The gate in front of the gRPC services: a tower layer that admits every call before its
//! handler runs and puts the principal on the request.

use std::sync::Arc;
use std::task::{Context, Poll};

use lethe_config::logging::{join_trace, TraceContext};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use tracing::Instrument;

use super::admission::Call;
use super::authenticate::{is_long_poll, Api};
use super::principal::Principal;
use super::Gatekeeper;

#[derive(Clone)]
pub(crate) struct GateLayer {
    pub(crate) gate: Arc<Gatekeeper>,
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    gate: Arc<Gatekeeper>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule for cloned services).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        let path = request.uri().path().to_string();
        // Every call runs in a span of its trace: the caller's (W3C `traceparent`) or a new one.
        let parent = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let span = tracing::info_span!(
            "rpc",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "server",
            method = %path,
            trace_id = tracing::field::Empty,
        );
        let trace = join_trace(&span, parent.as_ref());
        Box::pin(
            async move {
                let api = Api::of(&path);
                if api == Api::Open {
                    return inner.call(request).await;
                }
                let client_certificate = has_client_certificate(&request);
                let headers = std::mem::take(request.headers_mut());
                let admitted = gate
                    .admit(Call {
                        api,
                        path: &path,
                        headers: &headers,
                        client_certificate,
                        long_poll: is_long_poll(&path),
                        trace: Some(trace),
                    })
                    .await;
                *request.headers_mut() = headers;
                // Held, with its permits, until the handler answers.
                let pass = match admitted {
                    Ok(pass) => pass,
                    Err(status) => return Ok(status.into_http()),
                };
                match &pass.principal {
                    Principal::Tenant(caller) => {
                        request.extensions_mut().insert(caller.clone());
                    }
                    Principal::Admin(operator) => {
                        request.extensions_mut().insert(operator.clone());
                    }
                    Principal::Worker(worker) => {
                        request.extensions_mut().insert(worker.clone());
                    }
                    Principal::Anyone => {}
                }
                tracing::debug!("call");
                let answer = inner.call(request).await;
                drop(pass);
                answer
            }
            .instrument(span),
        )
    }
}

/// Whether the TLS handshake verified a client certificate (against the workers' CA: the
/// server accepts no other).
fn has_client_certificate<B>(request: &http::Request<B>) -> bool {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .is_some_and(|certs| !certs.is_empty())
}
