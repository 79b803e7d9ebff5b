//! The contract-tests runner: every case in `contract-tests/cases/*.json`, against the live
//! `commerce` binary, over Connect JSON, Connect binary, gRPC and gRPC-web — and every protocol
//! must give the case's expected outcome. The case format is described in contract-tests/README.md.

mod common;

use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor, SerializeOptions};
use serde::Deserialize;
use serde_json::Value;

const PROTOCOLS: [&str; 4] = ["connect-json", "connect-proto", "grpc", "grpc-web"];

#[derive(Deserialize)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    method: String,
    #[serde(default)]
    auth: Option<Auth>,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    request: Value,
    #[serde(default)]
    protocols: Option<Vec<String>>,
    expect: Expect,
}

#[derive(Deserialize)]
struct Auth {
    scopes: Vec<String>,
}

#[derive(Deserialize)]
struct Expect {
    code: String,
    reason: Option<String>,
    details: Option<Vec<String>>,
    field_violations: Option<Vec<String>>,
    response: Option<Value>,
}

/// What a call produced, the same shape whatever the protocol.
#[derive(Debug, Default)]
struct Outcome {
    code: String,
    response: Option<Value>,
    details: Vec<(String, Vec<u8>)>,
}

impl Outcome {
    fn reason(&self) -> Option<String> {
        self.details
            .iter()
            .find(|(kind, _)| kind == "google.rpc.ErrorInfo")
            .and_then(|(_, value)| tonic_types::pb::ErrorInfo::decode(value.as_slice()).ok())
            .map(|info| info.reason)
    }

    fn field_violations(&self) -> Vec<String> {
        self.details
            .iter()
            .filter(|(kind, _)| kind == "google.rpc.BadRequest")
            .filter_map(|(_, value)| tonic_types::pb::BadRequest::decode(value.as_slice()).ok())
            .flat_map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|violation| violation.field)
            })
            .collect()
    }
}

/// The commerce contract plus grpc.health.v1, which the platform serves beside it.
fn pool() -> prost_reflect::DescriptorPool {
    let mut pool = prost_reflect::DescriptorPool::decode(commerce_api::FILE_DESCRIPTOR_SET)
        .expect("commerce descriptors");
    pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .expect("health descriptors");
    pool
}

fn method(pool: &prost_reflect::DescriptorPool, name: &str) -> MethodDescriptor {
    let (service, method) = name
        .split_once('/')
        .expect("method is package.Service/Method");
    pool.get_service_by_name(service)
        .and_then(|service| service.methods().find(|m| m.name() == method))
        .unwrap_or_else(|| panic!("unknown method {name}"))
}

fn to_json(descriptor: &MessageDescriptor, bytes: &[u8]) -> Value {
    let message = DynamicMessage::decode(descriptor.clone(), bytes).expect("decodable response");
    message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("JSON")
}

fn frame(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    out
}

fn grpc_details(metadata: &http::HeaderMap) -> (String, Vec<(String, Vec<u8>)>) {
    let error = connect::ConnectError::from_grpc_metadata(metadata);
    let code = error.as_ref().map_or("ok", |e| e.code.name()).to_owned();
    let details = error
        .map(|e| {
            e.details
                .into_iter()
                .map(|d| (d.type_name, d.value.to_vec()))
                .collect()
        })
        .unwrap_or_default();
    (code, details)
}

async fn call(
    addr: &str,
    protocol: &str,
    case: &Case,
    method: &MethodDescriptor,
    token: Option<&str>,
) -> Outcome {
    let input = DynamicMessage::deserialize(method.input(), case.request.clone())
        .expect("case request is valid JSON for the method");
    let binary = input.encode_to_vec();
    let (content_type, body, http2) = match protocol {
        "connect-json" => (
            "application/json",
            case.request.to_string().into_bytes(),
            false,
        ),
        "connect-proto" => ("application/proto", binary, true),
        "grpc" => ("application/grpc", frame(0, &binary), true),
        "grpc-web" => ("application/grpc-web+proto", frame(0, &binary), false),
        other => panic!("unknown protocol {other}"),
    };
    let mut request = Request::post(format!("http://{addr}/{}", case.method))
        .header("content-type", content_type);
    if protocol == "grpc" {
        request = request.header("te", "trailers");
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in &case.headers {
        request = request.header(
            name.as_str(),
            value.as_str().expect("header values are strings"),
        );
    }
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(http2);
    let client: Client<_, Full<Bytes>> = client.build_http();
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("HTTP call");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    match protocol {
        "connect-json" | "connect-proto" if parts.status == 200 => Outcome {
            code: "ok".into(),
            response: Some(if protocol == "connect-json" {
                serde_json::from_slice(&data).expect("JSON response")
            } else {
                to_json(&method.output(), &data)
            }),
            details: Vec::new(),
        },
        "connect-json" | "connect-proto" => {
            let error: Value = serde_json::from_slice(&data).expect("Connect error JSON");
            let details = error["details"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|detail| {
                    let value = base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(detail["value"].as_str().unwrap())
                        .unwrap();
                    (detail["type"].as_str().unwrap().to_owned(), value)
                })
                .collect();
            Outcome {
                code: error["code"].as_str().unwrap().to_owned(),
                response: None,
                details,
            }
        }
        "grpc" => {
            let metadata = if trailers.contains_key("grpc-status") {
                &trailers
            } else {
                &parts.headers
            };
            let (code, details) = grpc_details(metadata);
            let response = frames(&data)
                .first()
                .map(|(_, message)| to_json(&method.output(), message));
            Outcome {
                code,
                response,
                details,
            }
        }
        _ => {
            let mut metadata = parts.headers.clone();
            let mut response = None;
            for (flags, payload) in frames(&data) {
                if flags & 0x80 != 0 {
                    for line in String::from_utf8_lossy(&payload)
                        .split("\r\n")
                        .filter(|line| !line.is_empty())
                    {
                        let (name, value) = line.split_once(':').expect("trailer line");
                        metadata.insert(
                            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                            value.trim().parse().unwrap(),
                        );
                    }
                } else {
                    response = Some(to_json(&method.output(), &payload));
                }
            }
            let (code, details) = grpc_details(&metadata);
            Outcome {
                code,
                response,
                details,
            }
        }
    }
}

/// True when every field of `expected` is in `actual` with the same value.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected.iter().all(|(key, value)| {
            actual
                .get(key)
                .is_some_and(|actual| contains(actual, value))
        }),
        _ => actual == expected,
    }
}

#[tokio::test]
async fn every_contract_case_holds_on_every_protocol() {
    let server = common::start();
    let pool = pool();
    let cases_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contract-tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(&cases_dir)
        .expect("cases dir")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in files
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
    {
        let cases: CaseFile = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        for case in &cases.cases {
            let method = method(&pool, &case.method);
            let token = case
                .auth
                .as_ref()
                .map(|auth| common::dev_token(Some(&auth.scopes.join(" "))));
            let protocols: Vec<&str> = match &case.protocols {
                Some(list) => list.iter().map(String::as_str).collect(),
                None => PROTOCOLS.to_vec(),
            };
            for protocol in protocols {
                checked += 1;
                let outcome = call(&server.addr, protocol, case, &method, token.as_deref()).await;
                let mut wrong = Vec::new();
                if outcome.code != case.expect.code {
                    wrong.push(format!("code {} (want {})", outcome.code, case.expect.code));
                }
                if let Some(reason) = &case.expect.reason
                    && outcome.reason().as_ref() != Some(reason)
                {
                    wrong.push(format!("reason {:?} (want {reason})", outcome.reason()));
                }
                let got: Vec<&str> = outcome
                    .details
                    .iter()
                    .map(|(kind, _)| kind.as_str())
                    .collect();
                if let Some(details) = &case.expect.details
                    && got != details.iter().map(String::as_str).collect::<Vec<_>>()
                {
                    wrong.push(format!("details {got:?} (want {details:?})"));
                }
                if let Some(fields) = &case.expect.field_violations
                    && &outcome.field_violations() != fields
                {
                    wrong.push(format!(
                        "field violations {:?} (want {fields:?})",
                        outcome.field_violations()
                    ));
                }
                if let Some(expected) = &case.expect.response
                    && !outcome
                        .response
                        .as_ref()
                        .is_some_and(|actual| contains(actual, expected))
                {
                    wrong.push(format!(
                        "response {:?} (want ⊇ {expected})",
                        outcome.response
                    ));
                }
                if !wrong.is_empty() {
                    failures.push(format!(
                        "{} over {protocol}: {}",
                        case.name,
                        wrong.join("; ")
                    ));
                }
            }
        }
    }
    assert!(
        checked > 0,
        "no contract cases found in {}",
        cases_dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} case runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("contract cases: {checked} case runs passed");
}
