//! Slow, idle and greedy clients on both ports: header-read timeouts, the first-request deadline,
//! idle timeouts and the per-address connection cap, with real sockets.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestServer;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use platform::ConnectionLimits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

fn limits(header_read_timeout: Duration, idle_timeout: Duration) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout,
        idle_timeout,
        ..ConnectionLimits::default()
    }
}

/// Writes `chunks` one every `every` until the server closes the connection; returns how long
/// after the first write it did (or `None` if it was still open after the last chunk).
async fn trickle(addr: SocketAddr, chunks: &[&[u8]], every: Duration) -> Option<Duration> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let closed = tokio::spawn(async move {
        let mut buffer = [0u8; 1024];
        // Whatever the server answers (hyper may send nothing), the end is EOF or a reset.
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    });
    for chunk in chunks {
        if closed.is_finished() || writer.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    tokio::time::timeout(Duration::from_secs(1), closed)
        .await
        .ok()
        .map(|joined| joined.expect("reader"))
}

/// A header line every 200 ms, for 5 s: far longer than the 1 s allowed.
fn slow_headers() -> Vec<&'static [u8]> {
    let mut chunks: Vec<&[u8]> = vec![b"POST /protocol.test.v1.EchoService/Echo HTTP/1.1\r\n"];
    chunks.extend(std::iter::repeat_n(&b"x-slow: a\r\n"[..], 25));
    chunks
}

fn assert_cut_after_about_a_second(cut: Option<Duration>, what: &str) {
    let cut = cut.unwrap_or_else(|| panic!("{what}: still open after 5 s"));
    assert!(
        cut >= Duration::from_millis(800) && cut < Duration::from_secs(3),
        "{what}: cut after {cut:?}"
    );
}

#[tokio::test]
async fn a_client_trickling_headers_is_cut_after_the_header_read_timeout_on_both_ports() {
    let server = TestServer::start_configured(|config| {
        config.connections = limits(Duration::from_secs(1), Duration::from_secs(60));
    })
    .await;
    let every = Duration::from_millis(200);
    let headers = slow_headers();
    let (api, admin) = tokio::join!(
        trickle(server.addr, &headers, every),
        trickle(server.admin, &headers, every),
    );
    assert_cut_after_about_a_second(api, "API port, HTTP/1 headers");
    assert_cut_after_about_a_second(admin, "admin port, HTTP/1 headers");
}

#[tokio::test]
async fn a_connection_that_never_starts_a_request_is_cut_after_the_header_read_timeout() {
    let server = TestServer::start_configured(|config| {
        config.connections = limits(Duration::from_secs(1), Duration::from_secs(60));
    })
    .await;
    let every = Duration::from_millis(200);
    // Silence, and the HTTP/2 preface a byte at a time: hyper has not picked a protocol yet, so
    // none of its timers run.
    let silence: Vec<&[u8]> = vec![b""; 25];
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let trickled_preface: Vec<&[u8]> = preface.chunks(1).collect();
    let (silent, slow_preface, admin_silent) = tokio::join!(
        trickle(server.addr, &silence, every),
        trickle(server.addr, &trickled_preface, every),
        trickle(server.admin, &silence, every),
    );
    assert_cut_after_about_a_second(silent, "API port, nothing sent");
    assert_cut_after_about_a_second(slow_preface, "API port, HTTP/2 preface trickled");
    assert_cut_after_about_a_second(admin_silent, "admin port, nothing sent");
}

/// An HTTP/1.1 Connect call from `source`: the HTTP status, or `None` when the server closed the
/// connection without answering.
async fn echo_from(source: [u8; 4], server: SocketAddr) -> Option<u16> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind source address");
    let mut stream = socket.connect(server).await.expect("connect");
    let request = format!(
        "POST /protocol.test.v1.EchoService/Echo HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.get(9..12).and_then(|status| status.parse().ok())
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_while_other_addresses_are_served() {
    let server = TestServer::start_configured(|config| {
        config.connections = ConnectionLimits {
            max_connections_per_address: 2,
            ..limits(Duration::from_secs(10), Duration::from_secs(60))
        };
    })
    .await;
    // Two idle connections from 127.0.0.1 fill its share.
    let first = TcpStream::connect(server.addr).await.unwrap();
    let second = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    assert_eq!(
        echo_from([127, 0, 0, 1], server.addr).await,
        None,
        "a third connection from the same address is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        echo_from([127, 0, 0, 2], server.addr).await,
        Some(200),
        "another address is served"
    );

    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        echo_from([127, 0, 0, 1], server.addr).await,
        Some(200),
        "a freed slot serves the address again"
    );
    drop(second);
}

/// An HTTP/2 connection made by hand, so the test sees when the server ends it.
async fn http2_connection(
    server: &TestServer,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Instant>,
) {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let ended = tokio::spawn(async move {
        let _ = connection.await;
        Instant::now()
    });
    (sender, ended)
}

fn count_request(server: &TestServer, interval_millis: i64) -> http::Request<Full<Bytes>> {
    use prost::Message as _;
    let message = protocol_testkit::pb::CountRequest {
        up_to: 2,
        interval_millis,
        fail_at: 0,
    }
    .encode_to_vec();
    http::Request::post(server.url("/protocol.test.v1.EchoService/Count"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(common::envelope(0, &message))))
        .unwrap()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_a_quiet_stream_keeps_its_connection() {
    let server = TestServer::start_configured(|config| {
        config.connections = limits(Duration::from_secs(10), Duration::from_secs(1));
    })
    .await;

    // A stream silent for longer than the idle timeout (1.5 s between messages) is in flight,
    // so its connection stays open until it ends.
    let (mut sender, ended) = http2_connection(&server).await;
    let response = sender
        .send_request(count_request(&server, 1500))
        .await
        .expect("stream");
    let body = response.into_body().collect().await.expect("whole stream");
    let trailers = body.trailers().cloned().unwrap_or_default();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(common::envelopes(&body.to_bytes()).len(), 2);
    let finished = Instant::now();

    // Then, with nothing in flight, the connection is closed after about a second.
    let closed_at = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the idle connection was closed")
        .unwrap();
    let idle = closed_at - finished;
    assert!(
        idle >= Duration::from_millis(700) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle"
    );
}

#[tokio::test]
async fn a_header_section_over_the_limit_is_refused_on_http1_and_http2() {
    let server = TestServer::start_configured(|config| {
        config.connections = ConnectionLimits {
            max_header_bytes: 16 * 1024,
            ..ConnectionLimits::default()
        };
    })
    .await;
    let big = "a".repeat(32 * 1024);

    // HTTP/1.1: 431 Request Header Fields Too Large instead of a call.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /protocol.test.v1.EchoService/Echo HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 431"), "HTTP/1: {text}");

    // HTTP/2: the stream is answered 431, and the connection still serves small requests.
    let (mut sender, _ended) = http2_connection(&server).await;
    let mut request = count_request(&server, 0);
    request
        .headers_mut()
        .insert("x-big", http::HeaderValue::from_str(&big).unwrap());
    let refused = sender
        .send_request(request)
        .await
        .expect("an answer to the oversized request");
    assert_eq!(refused.status(), 431, "HTTP/2");
    let ok = sender
        .send_request(count_request(&server, 0))
        .await
        .expect("a small request on the same connection");
    assert_eq!(ok.status(), 200);
}
