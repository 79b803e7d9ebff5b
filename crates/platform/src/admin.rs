//! The admin port: Prometheus `/metrics` and a liveness `/healthz` (which says when the fast path
//! runs degraded), apart from the API port so it can stay private to the cluster.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::interceptors::Metrics;

/// Serves the admin endpoints until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Metrics, degraded: fastpath::Degraded) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, degraded) = (metrics.clone(), degraded.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (metrics, degraded) = (metrics.clone(), degraded.clone());
                async move { Ok::<_, Infallible>(answer(&request, &metrics, &degraded)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
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
