//! Malformed input on every protocol — gRPC, gRPC-web (binary and text), Connect unary (JSON and
//! proto), Connect GET and Connect streams — against the real commerce contract (its validation
//! rules and error domains) with handlers that count their calls. Each case asserts the exact code,
//! that no handler ran, and that the server keeps serving.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::checkout::v1::menu_service_server::{MenuService, MenuServiceServer};
use commerce_api::commerce::checkout::v1::order_service_server::{
    OrderService, OrderServiceServer,
};
use commerce_api::commerce::checkout::v1::{
    CreateLocationRequest, CreateLocationResponse, GetLocationRequest, GetLocationResponse,
    Location, Order, WatchOrderRequest, WatchOrderResponse,
};
use common::{Reply, envelope, envelopes, send};
use http::{HeaderValue, Request};
use http_body_util::Full;
use platform::interceptors::{AuthConfig, Claims, InterceptorConfig, mint_hs256};
use platform::{Server, ServerConfig};
use prost::Message as _;
use tonic::codegen::BoxStream;

const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const GET_LOCATION: &str = "/commerce.checkout.v1.MenuService/GetLocation";
const WATCH_ORDER: &str = "/commerce.checkout.v1.OrderService/WatchOrder";
const CREATE_LOCATION: &str = "/commerce.checkout.v1.MenuService/CreateLocation";
const SECRET: &[u8] = b"malformed-input-secret";

/// Handlers that count every call that reaches them and echo the id they were given.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl MenuService for Counting {
    async fn get_location(
        &self,
        request: tonic::Request<GetLocationRequest>,
    ) -> Result<tonic::Response<GetLocationResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(GetLocationResponse {
            location: Some(Location {
                location_id: request.into_inner().location_id,
                ..Location::default()
            }),
        }))
    }

    async fn create_location(
        &self,
        request: tonic::Request<CreateLocationRequest>,
    ) -> Result<tonic::Response<CreateLocationResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(CreateLocationResponse {
            location: request.into_inner().location,
        }))
    }
}

#[tonic::async_trait]
impl OrderService for Counting {
    async fn watch_order(
        &self,
        request: tonic::Request<WatchOrderRequest>,
    ) -> Result<tonic::Response<BoxStream<WatchOrderResponse>>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let order = Order {
            order_id: request.into_inner().order_id,
            ..Order::default()
        };
        let updates = tokio_stream::iter([Ok(WatchOrderResponse { order: Some(order) })]);
        Ok(tonic::Response::new(Box::pin(updates)))
    }
}

struct Api {
    addr: SocketAddr,
    handler: Counting,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Api {
    /// A server without authentication: every method reaches its handler when the input is good.
    async fn start() -> Api {
        Self::start_with(InterceptorConfig::default()).await
    }

    /// A server that verifies tokens (see [`token`]).
    async fn start_authenticated() -> Api {
        Self::start_with(InterceptorConfig {
            auth: Some(AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                ..AuthConfig::default()
            }),
            ..InterceptorConfig::default()
        })
        .await
    }

    async fn start_with(interceptors: InterceptorConfig) -> Api {
        let config = ServerConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_message_bytes: MAX_MESSAGE_BYTES,
            interceptors,
            ..ServerConfig::default()
        };
        let handler = Counting::default();
        let bound = Server::new(config)
            .add_service(MenuServiceServer::new(handler.clone()), FILE_DESCRIPTOR_SET)
            .add_service(
                OrderServiceServer::new(handler.clone()),
                FILE_DESCRIPTOR_SET,
            )
            .bind()
            .await
            .expect("bind");
        let addr = bound.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        Api {
            addr,
            handler,
            _stop: stop,
        }
    }

    fn calls(&self) -> usize {
        self.handler.calls.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A well-formed call still reaches the handler (the server kept serving).
    async fn assert_still_serving(&self) {
        let before = self.calls();
        let outcome = self
            .call(
                Protocol::Grpc,
                GET_LOCATION,
                // GetLocation is public: with authentication on it needs only the tenant header.
                &[("commerce-tenant", "tenant-a")],
                &frame(0, &location("loc-1")),
            )
            .await;
        assert_eq!(outcome.code, "ok", "{outcome:?}");
        assert_eq!(self.calls(), before + 1);
    }

    /// Sends `body` (already in the protocol's framing, before gRPC-web-text's base64) to `path`.
    async fn call(
        &self,
        protocol: Protocol,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Outcome {
        let wire = match protocol {
            Protocol::GrpcWebText => base64::engine::general_purpose::STANDARD
                .encode(body)
                .into_bytes(),
            _ => body.to_vec(),
        };
        let headers = headers
            .iter()
            .map(|(name, value)| (*name, HeaderValue::from_str(value).unwrap()))
            .collect();
        self.call_raw(protocol, path, headers, wire).await
    }

    /// Sends `wire` as it is (no base64 for gRPC-web-text), with header values as raw bytes.
    async fn call_raw(
        &self,
        protocol: Protocol,
        path: &str,
        headers: Vec<(&str, HeaderValue)>,
        wire: Vec<u8>,
    ) -> Outcome {
        let (content_type, http2) = match protocol {
            Protocol::Grpc => ("application/grpc", true),
            Protocol::GrpcWeb => ("application/grpc-web+proto", false),
            Protocol::GrpcWebText => ("application/grpc-web-text", false),
            Protocol::ConnectProto => ("application/proto", false),
            Protocol::ConnectJson => ("application/json", false),
            Protocol::ConnectStreamProto => ("application/connect+proto", false),
            Protocol::ConnectStreamJson => ("application/connect+json", false),
        };
        let mut request = Request::post(self.url(path))
            .header("content-type", content_type)
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let reply = send(request.body(Full::new(Bytes::from(wire))).unwrap(), http2).await;
        Outcome::of(protocol, &reply)
    }

    /// A Connect GET of `path` with `query`.
    async fn get(&self, path: &str, query: &str) -> Outcome {
        let request = Request::get(format!("{}?{query}", self.url(path)))
            .body(Full::<Bytes>::default())
            .unwrap();
        Outcome::of(Protocol::ConnectJson, &send(request, false).await)
    }
}

/// A token of tenant `tenant-a` with `scopes`, signed for [`Api::start_authenticated`].
fn token(scopes: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    mint_hs256(
        SECRET,
        &Claims {
            sub: "tester".into(),
            tenant: "tenant-a".into(),
            scope: scopes.into(),
            exp,
        },
    )
    .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    GrpcWeb,
    GrpcWebText,
    ConnectProto,
    ConnectJson,
    ConnectStreamProto,
    ConnectStreamJson,
}

const GRPC_FAMILY: [Protocol; 3] = [Protocol::Grpc, Protocol::GrpcWeb, Protocol::GrpcWebText];

/// The outcome of a call on any protocol: the code as Connect names it, and the ErrorInfo reason.
#[derive(Debug)]
struct Outcome {
    code: String,
    reason: Option<String>,
    message: String,
}

impl Outcome {
    fn of(protocol: Protocol, reply: &Reply) -> Outcome {
        match protocol {
            Protocol::Grpc => Outcome::from_grpc_metadata(
                reply
                    .trailers
                    .as_ref()
                    .filter(|trailers| trailers.contains_key("grpc-status"))
                    .unwrap_or(&reply.headers),
            ),
            Protocol::GrpcWeb | Protocol::GrpcWebText => {
                if reply.headers.contains_key("grpc-status") {
                    return Outcome::from_grpc_metadata(&reply.headers);
                }
                let body = if protocol == Protocol::GrpcWebText {
                    decode_concatenated_base64(&reply.body)
                } else {
                    reply.body.to_vec()
                };
                let trailer = envelopes(&body)
                    .into_iter()
                    .find(|(flags, _)| flags & 0x80 != 0)
                    .unwrap_or_else(|| panic!("no trailer frame in {reply:?}"));
                let mut trailers = http::HeaderMap::new();
                for line in String::from_utf8_lossy(&trailer.1).split("\r\n") {
                    if let Some((name, value)) = line.split_once(':') {
                        trailers.insert(
                            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                            value.trim().parse().unwrap(),
                        );
                    }
                }
                Outcome::from_grpc_metadata(&trailers)
            }
            Protocol::ConnectProto | Protocol::ConnectJson => {
                if reply.status == 200 {
                    return Outcome::ok();
                }
                Outcome::from_connect_error(&reply.json())
            }
            Protocol::ConnectStreamProto | Protocol::ConnectStreamJson => {
                let end = envelopes(&reply.body)
                    .into_iter()
                    .find(|(flags, _)| flags & 0x02 != 0)
                    .unwrap_or_else(|| panic!("no end-stream message in {reply:?}"));
                let end: serde_json::Value = serde_json::from_slice(&end.1).unwrap();
                match end.get("error") {
                    Some(error) => Outcome::from_connect_error(error),
                    None => Outcome::ok(),
                }
            }
        }
    }

    fn ok() -> Outcome {
        Outcome {
            code: "ok".into(),
            reason: None,
            message: String::new(),
        }
    }

    fn from_grpc_metadata(metadata: &http::HeaderMap) -> Outcome {
        let code: i32 = metadata
            .get("grpc-status")
            .unwrap_or_else(|| panic!("no grpc-status in {metadata:?}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let status = tonic::Status::from_header_map(metadata);
        let reason = status.as_ref().and_then(|status| {
            use tonic_types::StatusExt as _;
            status
                .get_error_details()
                .error_info()
                .map(|info| info.reason.clone())
        });
        Outcome {
            code: connect::Code::from_grpc(code).name().to_owned(),
            reason,
            message: status
                .map(|status| status.message().to_owned())
                .unwrap_or_default(),
        }
    }

    fn from_connect_error(error: &serde_json::Value) -> Outcome {
        let reason = error["details"].as_array().and_then(|details| {
            let detail = details
                .iter()
                .find(|detail| detail["type"] == "google.rpc.ErrorInfo")?;
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(detail["value"].as_str()?)
                .ok()?;
            Some(
                tonic_types::pb::ErrorInfo::decode(bytes.as_slice())
                    .ok()?
                    .reason,
            )
        });
        Outcome {
            code: error["code"].as_str().unwrap_or_default().to_owned(),
            reason,
            message: error["message"].as_str().unwrap_or_default().to_owned(),
        }
    }

    fn assert(&self, code: &str, reason: Option<&str>, what: &str) {
        assert_eq!(
            (self.code.as_str(), self.reason.as_deref()),
            (code, reason),
            "{what}: {self:?}"
        );
    }
}

/// gRPC-web-text answers are base64 chunks, each padded on its own.
fn decode_concatenated_base64(text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while !rest.is_empty() {
        let end = rest
            .find('=')
            .map(|at| at + rest[at..].chars().take_while(|c| *c == '=').count())
            .unwrap_or(rest.len());
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(&rest[..end])
                .unwrap(),
        );
        rest = &rest[end..];
    }
    out
}

fn frame(flags: u8, message: &[u8]) -> Vec<u8> {
    envelope(flags, message)
}

fn location(id: &str) -> Vec<u8> {
    GetLocationRequest {
        location_id: id.to_owned(),
    }
    .encode_to_vec()
}

/// A request the contract refuses (`location_id` is at most 64 characters).
fn invalid_location() -> Vec<u8> {
    location(&"x".repeat(100))
}

#[tokio::test]
async fn a_request_followed_by_a_second_frame_is_refused_before_the_handler_on_grpc_and_grpc_web() {
    let api = Api::start().await;
    for protocol in GRPC_FAMILY {
        // The bypass: an invalid request hidden in front of an empty second frame.
        let mut body = frame(0, &invalid_location());
        body.extend(frame(0, b""));
        api.call(protocol, GET_LOCATION, &[], &body).await.assert(
            "unimplemented",
            Some("MALFORMED_REQUEST"),
            &format!("{protocol:?}"),
        );
        // A valid request with a second one is refused the same way.
        let mut body = frame(0, &location("loc-1"));
        body.extend(frame(0, &location("loc-2")));
        api.call(protocol, GET_LOCATION, &[], &body).await.assert(
            "unimplemented",
            Some("MALFORMED_REQUEST"),
            &format!("{protocol:?}"),
        );
        // So is the one request of a server stream.
        let mut body = frame(0, &watch("o-1"));
        body.extend(frame(0, b""));
        api.call(protocol, WATCH_ORDER, &[], &body).await.assert(
            "unimplemented",
            Some("MALFORMED_REQUEST"),
            &format!("{protocol:?}"),
        );
    }
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}

fn watch(order_id: &str) -> Vec<u8> {
    WatchOrderRequest {
        order_id: order_id.to_owned(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_second_request_envelope_on_a_connect_server_stream_is_refused_before_the_handler() {
    let api = Api::start().await;
    let mut body = frame(0, &watch("o-1"));
    body.extend(frame(0, &watch("o-2")));
    api.call(Protocol::ConnectStreamProto, WATCH_ORDER, &[], &body)
        .await
        .assert("unimplemented", None, "two request envelopes");
    assert_eq!(api.calls(), 0, "no handler ran");
    let one = api
        .call(
            Protocol::ConnectStreamProto,
            WATCH_ORDER,
            &[],
            &frame(0, &watch("o-1")),
        )
        .await;
    one.assert("ok", None, "one request envelope");
    assert_eq!(api.calls(), 1);
}

#[tokio::test]
async fn truncated_frames_lying_lengths_and_trailing_bytes_are_invalid_argument_before_the_handler()
{
    let api = Api::start().await;
    let valid = frame(0, &location("loc-1"));
    let mut lying_long = valid.clone();
    lying_long[4] += 10;
    let mut lying_short = valid.clone();
    lying_short[4] -= 3;
    let mut trailing = valid.clone();
    trailing.extend([0, 0]);
    let cases: [(&str, Vec<u8>); 6] = [
        ("empty body", Vec::new()),
        ("half a header", vec![0, 0, 0]),
        ("truncated message", valid[..valid.len() - 2].to_vec()),
        ("length longer than the body", lying_long),
        ("length shorter than the body", lying_short),
        ("trailing bytes", trailing),
    ];
    for protocol in GRPC_FAMILY {
        for (what, body) in &cases {
            api.call(protocol, GET_LOCATION, &[], body).await.assert(
                "invalid_argument",
                Some("MALFORMED_REQUEST"),
                &format!("{protocol:?} {what}"),
            );
        }
    }
    // A frame that is whole but not the method's message does not decode either.
    let garbage = frame(0, &[0xff, 0xff, 0xff]);
    api.call(Protocol::Grpc, GET_LOCATION, &[], &garbage)
        .await
        .assert("invalid_argument", Some("MALFORMED_REQUEST"), "garbage");
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}

#[tokio::test]
async fn a_compressed_frame_needs_a_supported_grpc_encoding_and_is_validated_after_inflating() {
    let api = Api::start().await;
    let gzip = |message: &[u8]| frame(1, &connect::Compression::Gzip.compress(message));
    for protocol in GRPC_FAMILY {
        let what = format!("{protocol:?}");
        api.call(protocol, GET_LOCATION, &[], &gzip(&location("loc-1")))
            .await
            .assert("invalid_argument", Some("MALFORMED_REQUEST"), &what);
        api.call(
            protocol,
            GET_LOCATION,
            &[("grpc-encoding", "br")],
            &gzip(&location("loc-1")),
        )
        .await
        .assert("unimplemented", Some("MALFORMED_REQUEST"), &what);
        api.call(
            protocol,
            GET_LOCATION,
            &[("grpc-encoding", "gzip")],
            &frame(1, b"not gzip at all"),
        )
        .await
        .assert("invalid_argument", Some("MALFORMED_REQUEST"), &what);
        api.call(
            protocol,
            GET_LOCATION,
            &[("grpc-encoding", "gzip")],
            &gzip(&invalid_location()),
        )
        .await
        .assert("invalid_argument", Some("VALIDATION_FAILED"), &what);
    }
    assert_eq!(api.calls(), 0, "no handler ran");
    // A valid compressed request reaches the handler as the message it carried.
    let reply = send(
        Request::post(api.url(GET_LOCATION))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-encoding", "gzip")
            .body(Full::new(Bytes::from(gzip(&location("loc-gz")))))
            .unwrap(),
        true,
    )
    .await;
    let frames = envelopes(&reply.body);
    let answer = GetLocationResponse::decode(frames[0].1.as_slice()).unwrap();
    assert_eq!(answer.location.unwrap().location_id, "loc-gz");
    assert_eq!(api.calls(), 1);
}

#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_on_every_protocol() {
    let api = Api::start().await;
    let big = location(&"x".repeat(MAX_MESSAGE_BYTES + 1));
    for protocol in GRPC_FAMILY {
        let outcome = api.call(protocol, GET_LOCATION, &[], &frame(0, &big)).await;
        outcome.assert(
            "resource_exhausted",
            Some("MESSAGE_TOO_LARGE"),
            &format!("{protocol:?}"),
        );
        assert!(
            outcome.message.contains(&MAX_MESSAGE_BYTES.to_string()),
            "the message names the limit: {outcome:?}"
        );
        // A header announcing more than the limit is refused from the header alone.
        api.call(protocol, GET_LOCATION, &[], &[0, 0x7f, 0xff, 0xff, 0xff])
            .await
            .assert(
                "resource_exhausted",
                Some("MESSAGE_TOO_LARGE"),
                &format!("{protocol:?} announced"),
            );
    }
    // The Connect layer refuses before translating, so its errors carry no platform ErrorInfo.
    let outcome = api
        .call(Protocol::ConnectProto, GET_LOCATION, &[], &big)
        .await;
    outcome.assert("resource_exhausted", None, "Connect proto");
    let json = serde_json::json!({"locationId": "x".repeat(MAX_MESSAGE_BYTES)}).to_string();
    let outcome = api
        .call(Protocol::ConnectJson, GET_LOCATION, &[], json.as_bytes())
        .await;
    outcome.assert("resource_exhausted", None, "Connect JSON");
    let outcome = api
        .call(
            Protocol::ConnectStreamProto,
            WATCH_ORDER,
            &[],
            &frame(0, &big),
        )
        .await;
    outcome.assert("resource_exhausted", None, "Connect stream");
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}

#[tokio::test]
async fn bad_base64_in_grpc_web_text_is_invalid_argument_before_the_handler() {
    let api = Api::start().await;
    for wire in [&b"!!!! not base64 !!!!"[..], b"AAAAB", b"A", b"AA=A"] {
        api.call_raw(
            Protocol::GrpcWebText,
            GET_LOCATION,
            Vec::new(),
            wire.to_vec(),
        )
        .await
        .assert(
            "invalid_argument",
            Some("MALFORMED_REQUEST"),
            &String::from_utf8_lossy(wire),
        );
    }
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}

/// `depth` nested JSON arrays.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Sends a GetLocation (WatchOrder for the stream) JSON request on every Connect shape.
async fn connect_json_everywhere(api: &Api, location: &str, watch: &str) -> [Outcome; 3] {
    [
        api.call(
            Protocol::ConnectJson,
            GET_LOCATION,
            &[],
            location.as_bytes(),
        )
        .await,
        api.get(
            GET_LOCATION,
            &format!("encoding=json&message={}", percent_encode(location)),
        )
        .await,
        api.call(
            Protocol::ConnectStreamJson,
            WATCH_ORDER,
            &[],
            &frame(0, watch.as_bytes()),
        )
        .await,
    ]
}

#[tokio::test]
async fn deeply_nested_requests_are_refused_where_the_contract_has_no_nesting() {
    let api = Api::start().await;
    // Nesting where the contract expects a string: invalid_argument from the JSON decoder.
    let location = format!(r#"{{"locationId":{}}}"#, nested(3000));
    let watch = format!(r#"{{"orderId":{}}}"#, nested(3000));
    for (outcome, shape) in connect_json_everywhere(&api, &location, &watch)
        .await
        .iter()
        .zip(["Connect JSON", "Connect GET", "Connect stream"])
    {
        outcome.assert("invalid_argument", None, shape);
    }
    // Protobuf: 3000 nested groups in an unknown field, past the decoder's recursion limit.
    let mut groups = vec![0x7b; 3000]; // field 15, start group
    groups.extend(vec![0x7c; 3000]); // field 15, end group
    for protocol in GRPC_FAMILY.into_iter().chain([Protocol::ConnectProto]) {
        api.call(protocol, GET_LOCATION, &[], &framed_for(protocol, &groups))
            .await
            .assert(
                "invalid_argument",
                Some("MALFORMED_REQUEST"),
                &format!("{protocol:?} nested groups"),
            );
    }
    assert_eq!(api.calls(), 0, "no handler ran");

    // Deep nesting in a field the contract does not know is skipped without recursing (newer
    // clients may send fields this server lacks): the call is served, the server survives.
    let location = format!(
        r#"{{"locationId":"loc-1","fromTheFuture":{}}}"#,
        nested(3000)
    );
    let watch = format!(r#"{{"orderId":"o-1","fromTheFuture":{}}}"#, nested(3000));
    for (outcome, shape) in connect_json_everywhere(&api, &location, &watch)
        .await
        .iter()
        .zip(["Connect JSON", "Connect GET", "Connect stream"])
    {
        outcome.assert("ok", None, shape);
    }
    assert_eq!(api.calls(), 3);
    api.assert_still_serving().await;
}

/// `message` as `protocol` carries it: framed for gRPC and gRPC-web, bare for Connect unary.
fn framed_for(protocol: Protocol, message: &[u8]) -> Vec<u8> {
    match protocol {
        Protocol::ConnectProto | Protocol::ConnectJson => message.to_vec(),
        _ => frame(0, message),
    }
}

/// A gzip bomb: `zeros` zero bytes, compressed about a thousandfold.
fn gzip_bomb(zeros: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0u8; zeros]).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn gzip_bombs_are_resource_exhausted_on_every_protocol_without_inflating_them_whole() {
    let api = Api::start().await;
    let bomb = gzip_bomb(16 * 1024 * 1024);
    assert!(bomb.len() < MAX_MESSAGE_BYTES, "the bomb itself is small");
    for protocol in GRPC_FAMILY {
        api.call(
            protocol,
            GET_LOCATION,
            &[("grpc-encoding", "gzip")],
            &frame(1, &bomb),
        )
        .await
        .assert(
            "resource_exhausted",
            Some("MESSAGE_TOO_LARGE"),
            &format!("{protocol:?}"),
        );
    }
    api.call(
        Protocol::ConnectProto,
        GET_LOCATION,
        &[("content-encoding", "gzip")],
        &bomb,
    )
    .await
    .assert("resource_exhausted", None, "Connect unary");
    api.call(
        Protocol::ConnectStreamProto,
        WATCH_ORDER,
        &[("connect-content-encoding", "gzip")],
        &frame(1, &bomb),
    )
    .await
    .assert("resource_exhausted", None, "Connect stream");
    let small_bomb = gzip_bomb(4 * 1024 * 1024);
    let message = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&small_bomb);
    api.get(
        GET_LOCATION,
        &format!("encoding=proto&base64=1&compression=gzip&message={message}"),
    )
    .await
    .assert("resource_exhausted", None, "Connect GET");
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_invalid_argument_on_every_protocol() {
    let api = Api::start().await;
    // GetLocationRequest.location_id (field 1, a string) holding bytes that are not UTF-8.
    let bad = [0x0a, 0x03, 0xff, 0xfe, 0xfd];
    for protocol in GRPC_FAMILY.into_iter().chain([Protocol::ConnectProto]) {
        api.call(protocol, GET_LOCATION, &[], &framed_for(protocol, &bad))
            .await
            .assert(
                "invalid_argument",
                Some("MALFORMED_REQUEST"),
                &format!("{protocol:?}"),
            );
    }
    let message = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bad);
    api.get(
        GET_LOCATION,
        &format!("encoding=proto&base64=1&message={message}"),
    )
    .await
    .assert("invalid_argument", Some("MALFORMED_REQUEST"), "Connect GET");
    api.call(
        Protocol::ConnectJson,
        GET_LOCATION,
        &[],
        b"{\"locationId\":\"\xff\xfe\"}",
    )
    .await
    .assert("invalid_argument", None, "Connect JSON");
    api.call(
        Protocol::ConnectStreamProto,
        WATCH_ORDER,
        &[],
        &frame(0, &bad),
    )
    .await
    .assert(
        "invalid_argument",
        Some("MALFORMED_REQUEST"),
        "Connect stream",
    );
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}

#[tokio::test]
async fn malformed_connect_streams_are_refused_before_the_handler() {
    let api = Api::start().await;
    let valid = frame(0, &watch("o-1"));
    let mut lying = valid.clone();
    lying[4] += 10;
    let cases: [(&str, Vec<u8>); 5] = [
        ("truncated envelope", valid[..valid.len() - 2].to_vec()),
        ("length longer than the body", lying),
        (
            "compressed flag without an encoding",
            frame(1, &watch("o-1")),
        ),
        ("end-stream flag from the client", frame(2, b"{}")),
        ("no envelope at all", Vec::new()),
    ];
    for (what, body) in cases {
        let outcome = api
            .call(Protocol::ConnectStreamProto, WATCH_ORDER, &[], &body)
            .await;
        assert_eq!(outcome.code, "invalid_argument", "{what}: {outcome:?}");
    }
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}

fn header(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap()
}

#[tokio::test]
async fn headers_that_are_not_utf8_are_refused_with_the_code_of_the_header_they_break() {
    let api = Api::start_authenticated().await;
    let body = |protocol| framed_for(protocol, &location("loc-1"));
    for protocol in [Protocol::Grpc, Protocol::GrpcWeb, Protocol::ConnectProto] {
        let what = |header: &str| format!("{protocol:?} {header}");
        api.call_raw(
            protocol,
            GET_LOCATION,
            vec![("authorization", header(b"Bearer \xff\xfe"))],
            body(protocol),
        )
        .await
        .assert(
            "unauthenticated",
            Some("TOKEN_INVALID"),
            &what("authorization"),
        );
        api.call_raw(
            protocol,
            GET_LOCATION,
            vec![("commerce-tenant", header(b"caf\xe9"))],
            body(protocol),
        )
        .await
        .assert(
            "invalid_argument",
            Some("TENANT_MISSING"),
            &what("commerce-tenant"),
        );
    }
    for protocol in [Protocol::Grpc, Protocol::GrpcWeb] {
        api.call_raw(
            protocol,
            GET_LOCATION,
            vec![
                ("commerce-tenant", header(b"tenant-a")),
                ("grpc-timeout", header(b"5\xffS")),
            ],
            body(protocol),
        )
        .await
        .assert(
            "invalid_argument",
            Some("MALFORMED_REQUEST"),
            &format!("{protocol:?} grpc-timeout"),
        );
    }
    api.call_raw(
        Protocol::ConnectProto,
        GET_LOCATION,
        vec![
            ("commerce-tenant", header(b"tenant-a")),
            ("connect-timeout-ms", header(b"5\xff")),
        ],
        body(Protocol::ConnectProto),
    )
    .await
    .assert("invalid_argument", None, "connect-timeout-ms");
    // A key that is not printable ASCII, on a method that requires one.
    let create = CreateLocationRequest {
        location: Some(Location {
            display_name: "Harbour".into(),
            time_zone: "UTC".into(),
            currency_code: "USD".into(),
            ..Location::default()
        }),
    }
    .encode_to_vec();
    api.call_raw(
        Protocol::Grpc,
        CREATE_LOCATION,
        vec![
            (
                "authorization",
                header(format!("Bearer {}", token("checkout.menu.write")).as_bytes()),
            ),
            ("idempotency-key", header(b"key-\xff")),
        ],
        frame(0, &create),
    )
    .await
    .assert(
        "invalid_argument",
        Some("VALIDATION_FAILED"),
        "idempotency-key",
    );
    assert_eq!(api.calls(), 0, "no handler ran");
    api.assert_still_serving().await;
}
