//! A live server with the protocol test service on a free port, and a small raw HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use platform::{CorsConfig, Server, ServerConfig};
use tokio::sync::oneshot;

pub const ALLOWED_ORIGIN: &str = "https://shop.example.com";
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A running server; stops when dropped (or through `shutdown`).
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), platform::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with_grace(Duration::from_secs(5)).await
    }

    pub async fn start_with_grace(shutdown_grace: Duration) -> TestServer {
        Self::start_configured(|config| config.shutdown_grace = shutdown_grace).await
    }

    /// A server with the test defaults, changed by `configure`.
    pub async fn start_configured(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = ServerConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cors: CorsConfig {
                allowed_origins: vec![ALLOWED_ORIGIN.to_owned()],
            },
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(5),
            max_message_bytes: MAX_MESSAGE_BYTES,
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..ServerConfig::default()
        };
        configure(&mut config);
        let bound = Server::new(config)
            .add_service(
                protocol_testkit::Echo::server(),
                protocol_testkit::FILE_DESCRIPTOR_SET,
            )
            .bind()
            .await
            .expect("bind");
        let addr = bound.local_addr();
        let admin = bound.admin_addr().expect("admin port");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins graceful shutdown (like SIGTERM) and returns the serve task.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<Result<(), platform::ServerError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A collected HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// Sends a request over HTTP/1.1 or HTTP/2 with prior knowledge (h2c).
pub async fn send(request: Request<Full<Bytes>>, http2: bool) -> Reply {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    let client: Client<HttpConnector, Full<Bytes>> = builder.build_http();
    let response: Response<_> = client.request(request).await.expect("request");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A Connect unary JSON POST over HTTP/1.1 with extra headers.
pub async fn post_json(
    server: &TestServer,
    path: &str,
    body: serde_json::Value,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::post(server.url(path))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request"),
        false,
    )
    .await
}

/// Frames a message in the 5-byte envelope.
pub fn envelope(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Splits a body into (flags, message) envelopes.
pub fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    assert!(body.is_empty(), "trailing bytes after envelopes");
    out
}
