//! gRPC and gRPC-web on the same port as Connect, health, reflection-backed services, CORS, and
//! graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use prost::Message as _;
use protocol_testkit::pb;
use protocol_testkit::pb::echo_service_client::EchoServiceClient;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_types::StatusExt as _;

async fn grpc_client(server: &TestServer) -> EchoServiceClient<tonic::transport::Channel> {
    EchoServiceClient::connect(server.url(""))
        .await
        .expect("connect")
}

#[tokio::test]
async fn grpc_unary_streams_and_error_details_pass_through_untouched() {
    let server = TestServer::start().await;
    let mut client = grpc_client(&server).await;

    let mut request = tonic::Request::new(pb::EchoRequest {
        text: "grpc".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-echo", "meta".parse().unwrap());
    let response = client.echo(request).await.expect("echo");
    assert_eq!(response.metadata().get("x-echo").unwrap(), "meta");
    assert_eq!(response.into_inner().text, "grpc");

    let status = client
        .fail(pb::FailRequest {
            code: 9,
            message: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|info| info.reason.as_str()),
        Some("TEST_FAILURE")
    );
    assert_eq!(
        details.bad_request().map(|bad| bad.field_violations.len()),
        Some(1)
    );

    let numbers: Vec<i32> = client
        .count(pb::CountRequest {
            up_to: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|item| item.unwrap().number)
        .collect()
        .await;
    assert_eq!(numbers, [1, 2, 3, 4]);
}

#[tokio::test]
async fn grpc_deadlines_cut_slow_calls_short() {
    let server = TestServer::start().await;
    let mut client = grpc_client(&server).await;
    let mut request = tonic::Request::new(pb::SleepRequest { millis: 3000 });
    request.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let status = client.sleep(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
}

/// Count sends a message every 100 ms for 100 s: far longer than the deadlines below.
const LONG_COUNT: pb::CountRequest = pb::CountRequest {
    up_to: 1000,
    interval_millis: 100,
    fail_at: 0,
};

/// The messages a stream cut at a 450 ms deadline sent first: 1, 2, … in order, a few of them.
fn assert_counted_until_the_deadline(numbers: &[i32]) {
    let expected: Vec<i32> = (1..=numbers.len() as i32).collect();
    assert_eq!(numbers, expected, "messages before the deadline, in order");
    assert!((1..=4).contains(&numbers.len()), "{numbers:?}");
}

#[tokio::test]
async fn a_grpc_server_stream_past_its_deadline_ends_with_deadline_exceeded_after_its_messages() {
    let server = TestServer::start().await;
    let mut client = grpc_client(&server).await;
    let mut request = tonic::Request::new(LONG_COUNT);
    request.set_timeout(Duration::from_millis(450));
    let started = Instant::now();
    let mut stream = client.count(request).await.expect("stream").into_inner();
    let mut numbers = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Err(_) => panic!("the stream outlived its deadline by seconds"),
            Ok(Some(Ok(message))) => numbers.push(message.number),
            Ok(Some(Err(status))) => break status,
            Ok(None) => panic!("the stream ended ok after {numbers:?}"),
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .map(|info| info.reason.as_str()),
        Some("DEADLINE_EXCEEDED")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_counted_until_the_deadline(&numbers);
}

#[tokio::test]
async fn a_grpc_web_server_stream_past_its_deadline_ends_with_deadline_exceeded_in_its_trailer_frame()
 {
    let server = TestServer::start().await;
    let request = Request::post(server.url("/protocol.test.v1.EchoService/Count"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("grpc-timeout", "450m")
        .body(Full::new(Bytes::from(envelope(
            0,
            &LONG_COUNT.encode_to_vec(),
        ))))
        .unwrap();
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(5), send(request, false))
        .await
        .expect("the stream outlived its deadline by seconds");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 200);
    let frames = envelopes(&reply.body);
    let (trailer_flags, trailer) = frames.last().expect("a trailer frame");
    assert_eq!(*trailer_flags, 0x80, "trailer frame last");
    let trailer = String::from_utf8(trailer.clone()).unwrap();
    assert!(trailer.contains("grpc-status:4"), "{trailer}");
    assert!(trailer.contains("grpc-message:"), "{trailer}");
    assert!(trailer.contains("grpc-status-details-bin:"), "{trailer}");
    let numbers: Vec<i32> = frames[..frames.len() - 1]
        .iter()
        .map(|(flags, data)| {
            assert_eq!(*flags, 0, "a message frame");
            pb::CountResponse::decode(data.as_slice()).unwrap().number
        })
        .collect();
    assert_counted_until_the_deadline(&numbers);
}

#[tokio::test]
async fn grpc_web_binary_works_over_http1_with_trailers_in_the_body() {
    let server = TestServer::start().await;
    let message = pb::EchoRequest {
        text: "web".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let request = Request::post(server.url("/protocol.test.v1.EchoService/Echo"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Full::new(Bytes::from(envelope(0, &message))))
        .unwrap();
    let reply = send(request, false).await;
    assert_eq!(reply.status, 200);
    let frames = envelopes(&reply.body);
    assert_eq!(
        pb::EchoResponse::decode(frames[0].1.as_slice())
            .unwrap()
            .text,
        "web"
    );
    assert_eq!(frames[1].0, 0x80, "trailer frame");
    let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

#[tokio::test]
async fn grpc_web_text_is_base64_on_the_wire() {
    use base64::Engine as _;
    let server = TestServer::start().await;
    let message = pb::EchoRequest {
        text: "text".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let body = base64::engine::general_purpose::STANDARD.encode(envelope(0, &message));
    let request = Request::post(server.url("/protocol.test.v1.EchoService/Echo"))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = send(request, false).await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    let decoded = decode_concatenated_base64(std::str::from_utf8(&reply.body).unwrap());
    let frames = envelopes(&decoded);
    assert_eq!(
        pb::EchoResponse::decode(frames[0].1.as_slice())
            .unwrap()
            .text,
        "text"
    );
}

/// gRPC-web-text encodes each frame on its own, padding included: decode one padded chunk at a time.
fn decode_concatenated_base64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    let mut decoded = Vec::new();
    let mut chunk = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        chunk.push(c);
        let padding_ends = c == '=' && chars.peek() != Some(&'=');
        if padding_ends || chars.peek().is_none() {
            decoded.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(&chunk)
                    .unwrap(),
            );
            chunk.clear();
        }
    }
    decoded
}

#[tokio::test]
async fn health_reports_registered_services_as_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "protocol.test.v1.EchoService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn cors_preflight_allows_configured_origins_only() {
    let server = TestServer::start().await;
    let preflight = |origin: &str| {
        Request::options(server.url("/protocol.test.v1.EchoService/Echo"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,connect-protocol-version,authorization",
            )
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let allowed = send(preflight(ALLOWED_ORIGIN), false).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    let allowed_headers = allowed
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_owned();
    for header in [
        "content-type",
        "connect-protocol-version",
        "authorization",
        "x-grpc-web",
    ] {
        assert!(
            allowed_headers.contains(header),
            "{header} not in {allowed_headers}"
        );
    }
    let denied = send(preflight("https://evil.example.net"), false).await;
    assert_eq!(denied.header("access-control-allow-origin"), None);

    // Actual responses expose the gRPC-web status headers to allowed origins.
    let request = Request::post(server.url("/protocol.test.v1.EchoService/Echo"))
        .header("origin", ALLOWED_ORIGIN)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    let reply = send(request, false).await;
    let exposed = reply
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-status-details-bin"),
        "{exposed}"
    );
}

#[tokio::test]
async fn cors_exposes_every_platform_header_a_browser_must_read() {
    let server = TestServer::start().await;
    let preflight = Request::options(server.url("/protocol.test.v1.EchoService/Charge"))
        .header("origin", ALLOWED_ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,idempotency-key,if-none-match",
        )
        .body(Full::<Bytes>::default())
        .unwrap();
    let preflight = send(preflight, false).await;
    assert_eq!(preflight.status, 200);
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_owned();
    for header in ["idempotency-key", "if-none-match"] {
        assert!(allowed.contains(header), "{header} not in {allowed}");
    }

    // A replayed idempotent call: the browser must be able to read the replay mark.
    let charge = || {
        Request::post(server.url("/protocol.test.v1.EchoService/Charge"))
            .header("origin", ALLOWED_ORIGIN)
            .header("content-type", "application/json")
            .header("idempotency-key", "cors-replay-1")
            .body(Full::new(Bytes::from(r#"{"account":"a","amount":"5"}"#)))
            .unwrap()
    };
    assert_eq!(send(charge(), false).await.status, 200);
    let replay = send(charge(), false).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let exposed = replay
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_owned();
    for header in [
        "idempotent-replayed",
        "retry-after",
        "etag",
        "grpc-status-details-bin",
        "x-request-id",
    ] {
        assert!(exposed.contains(header), "{header} not in {exposed}");
    }
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_call_finish() {
    let mut server = TestServer::start_with_grace(Duration::from_secs(5)).await;
    let mut client = grpc_client(&server).await;
    let slow = tokio::spawn(async move { client.sleep(pb::SleepRequest { millis: 1000 }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let serving = server.begin_shutdown();
    let answer = slow.await.unwrap().expect("in-flight call completes");
    assert_eq!(answer.into_inner().slept_millis, 1000);
    serving.await.unwrap().expect("clean exit");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown waited {:?}",
        started.elapsed()
    );
    // No new connections after shutdown.
    assert!(EchoServiceClient::connect(server.url("")).await.is_err());
}

#[tokio::test]
async fn health_watch_sees_not_serving_when_shutdown_begins() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mut server = TestServer::start_with_grace(Duration::from_millis(500)).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "protocol.test.v1.EchoService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let serving = server.begin_shutdown();
    let update = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("an update");
    assert_eq!(
        update.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    serving.await.unwrap().expect("clean exit");
}

/// The ErrorInfo reason and whether a RetryInfo came with a `grpc-status-details-bin` value.
fn reason_and_retry(details_bin: &str) -> (String, bool) {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details_bin.trim_end_matches('='))
        .unwrap();
    let status = tonic_types::pb::Status::decode(bytes.as_slice()).unwrap();
    let mut reason = String::new();
    let mut retry = false;
    for detail in status.details {
        if detail.type_url.ends_with("google.rpc.ErrorInfo") {
            reason = tonic_types::pb::ErrorInfo::decode(detail.value.as_slice())
                .unwrap()
                .reason;
        }
        retry |= detail.type_url.ends_with("google.rpc.RetryInfo");
    }
    (reason, retry)
}

#[tokio::test]
async fn shutdown_ends_open_streams_at_once_with_unavailable_and_a_retry_hint_on_every_protocol() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mut server = TestServer::start_configured(|config| {
        config.shutdown_delay = Duration::from_millis(500);
        config.shutdown_grace = Duration::from_secs(10);
    })
    .await;

    // gRPC: a stream that would run for 100 s.
    let mut client = grpc_client(&server).await;
    let mut grpc_stream = client.count(LONG_COUNT).await.unwrap().into_inner();
    assert_eq!(grpc_stream.next().await.unwrap().unwrap().number, 1);
    // gRPC-web and Connect over HTTP/1.1, collected whole when they end.
    let web = Request::post(server.url("/protocol.test.v1.EchoService/Count"))
        .header("content-type", "application/grpc-web+proto")
        .body(Full::new(Bytes::from(envelope(
            0,
            &LONG_COUNT.encode_to_vec(),
        ))))
        .unwrap();
    let web = tokio::spawn(send(web, false));
    let connect = Request::post(server.url("/protocol.test.v1.EchoService/Count"))
        .header("content-type", "application/connect+json")
        .body(Full::new(Bytes::from(envelope(
            0,
            br#"{"upTo": 1000, "intervalMillis": "100"}"#,
        ))))
        .unwrap();
    let connect = tokio::spawn(send(connect, false));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let serving = server.begin_shutdown();
    // During the window health answers NOT_SERVING on a new connection.
    let channel = tonic::transport::Endpoint::from_shared(server.url(""))
        .unwrap()
        .connect()
        .await
        .expect("still accepting during the window");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "protocol.test.v1.EchoService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::NotServing as i32);

    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), grpc_stream.next()).await {
            Err(_) => panic!("the stream was held open"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(status))) => break status,
            Ok(None) => panic!("the stream ended ok"),
        }
    };
    let ended = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|info| info.reason.as_str()),
        Some("SERVER_SHUTTING_DOWN")
    );
    assert!(details.retry_info().is_some(), "a retry hint");
    assert!(
        ended >= Duration::from_millis(400) && ended < Duration::from_secs(3),
        "ended {ended:?} after shutdown began (window 500 ms, grace 10 s)"
    );

    let web = tokio::time::timeout(Duration::from_secs(5), web)
        .await
        .expect("gRPC-web stream ended")
        .unwrap();
    let frames = envelopes(&web.body);
    let (flags, trailer) = frames.last().expect("a trailer frame");
    assert_eq!(*flags, 0x80);
    let trailer = String::from_utf8(trailer.clone()).unwrap();
    assert!(trailer.contains("grpc-status:14"), "{trailer}");
    let details_bin = trailer
        .split("\r\n")
        .find_map(|line| line.strip_prefix("grpc-status-details-bin:"))
        .expect("details");
    assert_eq!(
        reason_and_retry(details_bin.trim()),
        ("SERVER_SHUTTING_DOWN".to_owned(), true)
    );

    let connect = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .expect("Connect stream ended")
        .unwrap();
    let frames = envelopes(&connect.body);
    let (flags, end) = frames.last().expect("an end-stream message");
    assert_eq!(*flags, 0x02);
    let end: serde_json::Value = serde_json::from_slice(end).unwrap();
    assert_eq!(end["error"]["code"], "unavailable", "{end}");
    let types: Vec<&str> = end["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|detail| detail["type"].as_str())
        .collect();
    assert!(
        types.contains(&"google.rpc.ErrorInfo") && types.contains(&"google.rpc.RetryInfo"),
        "{end}"
    );

    serving.await.unwrap().expect("clean exit");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the server waited {:?} for streams it had ended",
        started.elapsed()
    );
}

#[tokio::test]
async fn deprecated_methods_answer_with_deprecation_headers_and_count_their_callers() {
    let server = TestServer::start().await;
    let request = Request::post(server.url("/protocol.test.v1.EchoService/EchoLegacy"))
        .header("content-type", "application/json")
        .header("commerce-tenant", "tenant-q")
        .body(Full::new(Bytes::from(r#"{"text":"old"}"#)))
        .unwrap();
    let reply = send(request, false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("deprecation"), Some("true"));
    assert_eq!(reply.header("sunset"), Some("2027-06-30"));
    let current = send(
        Request::post(server.url("/protocol.test.v1.EchoService/Echo"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from("{}")))
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(
        current.header("deprecation"),
        None,
        "only deprecated methods are marked"
    );

    let metrics = send(
        Request::get(format!("http://{}/metrics", server.admin))
            .body(Full::default())
            .unwrap(),
        false,
    )
    .await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.lines()
            .any(|line| line.starts_with("rpc_deprecated_calls_total{")
                && line.contains("EchoService/EchoLegacy")
                && line.ends_with(" 1")),
        "{text}"
    );
}
