//! The admin port: Prometheus `/metrics` and a liveness `/healthz` (which says when the fast path
//! runs degraded), apart from the API port so it can stay private to the cluster.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::interceptors::Metrics;
use crate::listener::{ConnectionLimits, Listener};

/// Serves the admin endpoints until the task is aborted, within the same connection limits as the
/// API port (HTTP/1 only: hyper's header-read timeout also closes idle keep-alive connections).
pub async fn serve(
    mut listener: Listener,
    limits: ConnectionLimits,
    metrics: Metrics,
    degraded: fastpath::Degraded,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    loop {
        let (stream, _, slot) = listener.accept().await;
        let (metrics, degraded, builder) = (metrics.clone(), degraded.clone(), builder.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: Request<Incoming>| {
                let (metrics, degraded) = (metrics.clone(), degraded.clone());
                async move { Ok::<_, Infallible>(answer(&request, &metrics, &degraded)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(
    request: &Request<Incoming>,
    metrics: &Metrics,
    degraded: &fastpath::Degraded,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        // Live either way; degraded means Redis failed and local fallbacks are answering.
        "/healthz" if degraded.is_degraded() => (
            StatusCode::OK,
            "text/plain",
            "degraded: redis unavailable, local fallbacks in use\n".to_owned(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
