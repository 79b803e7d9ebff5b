//! The Connect protocol on the wire, against a live server hosting the protocol test service:
//! unary JSON/binary/GET, errors with details, routing errors, compression, size limits,
//! deadlines, and server/client/bidi streams over HTTP/1.1 and HTTP/2.

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use prost::Message as _;
use protocol_testkit::pb;
use serde_json::json;

const ECHO: &str = "/protocol.test.v1.EchoService/Echo";

#[tokio::test]
async fn unary_json_round_trips_with_proto3_json_names_and_metadata() {
    let server = TestServer::start().await;
    let request = json!({"text": "hi", "bigNumber": "9007199254740993", "mood": "MOOD_HAPPY", "payload": "AQI=",
        "at": "2026-11-24T12:00:00Z"});
    let reply = post_json(&server, ECHO, request.clone(), &[("x-echo", "ping")]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-echo"), Some("ping"));
    assert_eq!(reply.json(), request);
}

#[tokio::test]
async fn unary_binary_protobuf_round_trips_over_http2() {
    let server = TestServer::start().await;
    let message = pb::EchoRequest {
        text: "binary".into(),
        big_number: -7,
        ..Default::default()
    };
    let request = Request::post(server.url(ECHO))
        .header("content-type", "application/proto")
        .body(Full::new(Bytes::from(message.encode_to_vec())))
        .unwrap();
    let reply = send(request, true).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/proto"));
    let answer = pb::EchoResponse::decode(reply.body.as_ref()).unwrap();
    assert_eq!((answer.text.as_str(), answer.big_number), ("binary", -7));
}

#[tokio::test]
async fn get_serves_side_effect_free_methods_from_the_query_string() {
    let server = TestServer::start().await;
    let message = pb::EchoRequest {
        text: "via get".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(message);
    let url = server.url(&format!(
        "{ECHO}?encoding=proto&base64=1&message={encoded}&connect=v1&ignored=yes"
    ));
    let reply = send(Request::get(url).body(Full::default()).unwrap(), false).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        pb::EchoResponse::decode(reply.body.as_ref()).unwrap().text,
        "via get"
    );

    let url = server.url(&format!(
        "{ECHO}?message=%7B%22text%22%3A%22json%22%7D&encoding=json"
    ));
    let reply = send(Request::get(url).body(Full::default()).unwrap(), false).await;
    assert_eq!(reply.json(), json!({"text": "json"}));

    // Methods with side effects are POST-only.
    let url = server.url("/protocol.test.v1.EchoService/Fail?encoding=json&message=%7B%7D");
    let reply = send(Request::get(url).body(Full::default()).unwrap(), false).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));
}

#[tokio::test]
async fn errors_map_codes_to_http_statuses_and_carry_details() {
    let server = TestServer::start().await;
    let reply = post_json(
        &server,
        "/protocol.test.v1.EchoService/Fail",
        json!({"code": 5, "message": "no such order"}),
        &[],
    )
    .await;
    assert_eq!(reply.status, 404);
    let error = reply.json();
    assert_eq!(error["code"], "not_found");
    assert_eq!(error["message"], "no such order");
    let types: Vec<&str> = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]);
    // The detail value is the binary message, base64 without padding.
    let value = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(error["details"][0]["value"].as_str().unwrap())
        .unwrap();
    let info = tonic_types::pb::ErrorInfo::decode(value.as_slice()).unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("TEST_FAILURE", "protocol.test")
    );

    for (code, status, name) in [
        (3, 400, "invalid_argument"),
        (7, 403, "permission_denied"),
        (16, 401, "unauthenticated"),
        (14, 503, "unavailable"),
    ] {
        let reply = post_json(
            &server,
            "/protocol.test.v1.EchoService/Fail",
            json!({"code": code}),
            &[],
        )
        .await;
        assert_eq!(
            (reply.status, reply.json()["code"].as_str().unwrap()),
            (status, name)
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let server = TestServer::start().await;
    let reply = send(
        Request::post(server.url(ECHO))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from("{\"text\": 5")))
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["code"], "invalid_argument");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("protocol.test.v1.EchoRequest")
    );

    let reply = post_json(&server, ECHO, json!({"bigNumber": "not a number"}), &[]).await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str().unwrap()),
        (400, "invalid_argument")
    );

    let reply = post_json(
        &server,
        "/protocol.test.v1.EchoService/Nope",
        json!({}),
        &[],
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str().unwrap()),
        (404, "unimplemented")
    );

    let reply = send(
        Request::post(server.url(ECHO))
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from("<a/>")))
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(reply.status, 415);

    let reply = post_json(&server, ECHO, json!({}), &[("content-encoding", "br")]).await;
    assert_eq!(reply.json()["code"], "unimplemented");
    assert!(reply.json()["message"].as_str().unwrap().contains("gzip"));

    let reply = post_json(&server, ECHO, json!({}), &[("connect-timeout-ms", "soon")]).await;
    assert_eq!(reply.json()["code"], "invalid_argument");
}

#[tokio::test]
async fn gzip_is_accepted_and_negotiated() {
    let server = TestServer::start().await;
    let text = "pickup at the curb ".repeat(200);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(json!({"text": text}).to_string().as_bytes())
        .unwrap();
    let request = Request::post(server.url(ECHO))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "br, gzip")
        .body(Full::new(Bytes::from(encoder.finish().unwrap())))
        .unwrap();
    let reply = send(request, false).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(reply.body.as_ref())
        .read_to_string(&mut inflated)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&inflated).unwrap(),
        json!({"text": text})
    );
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted_before_and_after_inflating() {
    let server = TestServer::start().await;
    let reply = post_json(
        &server,
        ECHO,
        json!({"text": "x".repeat(MAX_MESSAGE_BYTES + 1)}),
        &[],
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str().unwrap()),
        (429, "resource_exhausted")
    );

    // A small gzip body that inflates past the limit (a zip bomb) is refused too.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(
            json!({"text": "y".repeat(MAX_MESSAGE_BYTES * 4)})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < MAX_MESSAGE_BYTES);
    let request = Request::post(server.url(ECHO))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(bomb)))
        .unwrap();
    let reply = send(request, false).await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str().unwrap()),
        (429, "resource_exhausted")
    );
}

#[tokio::test]
async fn an_expired_connect_timeout_is_deadline_exceeded_not_canceled() {
    let server = TestServer::start().await;
    let started = Instant::now();
    let reply = post_json(
        &server,
        "/protocol.test.v1.EchoService/Sleep",
        json!({"millis": 3000}),
        &[("connect-timeout-ms", "200")],
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str().unwrap()),
        (504, "deadline_exceeded")
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );

    let reply = post_json(
        &server,
        "/protocol.test.v1.EchoService/Sleep",
        json!({"millis": 10}),
        &[("connect-timeout-ms", "5000")],
    )
    .await;
    assert_eq!(reply.json(), json!({"sleptMillis": "10"}));
}

fn stream_request(
    server: &TestServer,
    method: &str,
    content_type: &str,
    messages: &[Vec<u8>],
) -> Request<Full<Bytes>> {
    let body: Vec<u8> = messages
        .iter()
        .flat_map(|message| envelope(0, message))
        .collect();
    Request::post(server.url(&format!("/protocol.test.v1.EchoService/{method}")))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn server_streams_work_over_http1_with_an_end_stream_message() {
    let server = TestServer::start().await;
    let request = stream_request(
        &server,
        "Count",
        "application/connect+json",
        &[br#"{"upTo": 3}"#.to_vec()],
    );
    let reply = send(request, false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/connect+json")
    );
    let frames = envelopes(&reply.body);
    let texts: Vec<(u8, String)> = frames
        .iter()
        .map(|(flags, data)| (*flags, String::from_utf8(data.clone()).unwrap()))
        .collect();
    assert_eq!(
        texts,
        [
            (0, r#"{"number":1}"#.to_owned()),
            (0, r#"{"number":2}"#.to_owned()),
            (0, r#"{"number":3}"#.to_owned()),
            (2, "{}".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_failing_server_stream_ends_with_the_error_in_the_end_stream_message() {
    let server = TestServer::start().await;
    let request = stream_request(
        &server,
        "Count",
        "application/connect+json",
        &[br#"{"upTo": 5, "failAt": 2}"#.to_vec()],
    );
    let reply = send(request, true).await;
    let frames = envelopes(&reply.body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0], (0, br#"{"number":1}"#.to_vec()));
    let end: serde_json::Value = serde_json::from_slice(&frames[1].1).unwrap();
    assert_eq!(frames[1].0, 2);
    assert_eq!(end["error"]["code"], "aborted");
}

#[tokio::test]
async fn client_and_bidi_streams_work_over_http2() {
    let server = TestServer::start().await;
    let values: Vec<Vec<u8>> = [5i64, 7, 30]
        .iter()
        .map(|value| pb::SumRequest { value: *value }.encode_to_vec())
        .collect();
    let reply = send(
        stream_request(&server, "Sum", "application/connect+proto", &values),
        true,
    )
    .await;
    let frames = envelopes(&reply.body);
    assert_eq!(
        pb::SumResponse::decode(frames[0].1.as_slice()).unwrap(),
        pb::SumResponse {
            total: 42,
            count: 3
        }
    );
    assert_eq!(frames[1], (2, b"{}".to_vec()));

    let chat = vec![br#"{"text":"one"}"#.to_vec(), br#"{"text":"two"}"#.to_vec()];
    let reply = send(
        stream_request(&server, "Chat", "application/connect+json", &chat),
        true,
    )
    .await;
    let frames = envelopes(&reply.body);
    assert_eq!(
        frames[..2],
        [
            (0, br#"{"text":"one"}"#.to_vec()),
            (0, br#"{"text":"two"}"#.to_vec())
        ]
    );
}

#[tokio::test]
async fn a_unary_content_type_on_a_streaming_method_is_unsupported() {
    let server = TestServer::start().await;
    let reply = post_json(
        &server,
        "/protocol.test.v1.EchoService/Count",
        json!({"upTo": 1}),
        &[],
    )
    .await;
    assert_eq!(reply.status, 415);
    assert_eq!(
        reply.header("accept-post"),
        Some("application/connect+proto, application/connect+json")
    );
}

#[tokio::test]
async fn a_stream_past_its_connect_deadline_ends_with_deadline_exceeded() {
    let server = TestServer::start().await;
    let mut request = stream_request(
        &server,
        "Count",
        "application/connect+json",
        &[br#"{"upTo": 50, "intervalMillis": "100"}"#.to_vec()],
    );
    request
        .headers_mut()
        .insert("connect-timeout-ms", "350".parse().unwrap());
    let started = Instant::now();
    let reply = send(request, false).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let frames = envelopes(&reply.body);
    let (last_flags, last) = frames.last().expect("an end-stream message");
    assert_eq!(*last_flags, 2);
    let end: serde_json::Value = serde_json::from_slice(last).unwrap();
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");
    assert!(
        (1..=4).contains(&(frames.len() - 1)),
        "{} messages before the deadline",
        frames.len() - 1
    );
}
