//! The contract-tests runner: every case in `contract-tests/cases/*.json`, against the live
//! `commerce` binary, over Connect JSON, Connect binary, gRPC and gRPC-web — and every protocol
//! must give the case's expected outcome. A file's `setup` calls run first, once, and capture
//! values from their responses for the file's cases to use as `${name}`. The case format is
//! described in contract-tests/README.md.

mod common;

use std::collections::{BTreeMap, HashMap};
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
/// Protocol of setup calls.
const SETUP_PROTOCOL: &str = "connect-json";

#[derive(Deserialize)]
struct CaseFile {
    #[serde(default)]
    setup: Vec<Step>,
    cases: Vec<Case>,
}

/// One call to the server: what setup steps and cases share.
#[derive(Deserialize, Clone)]
struct Call {
    name: String,
    method: String,
    #[serde(default)]
    auth: Option<Auth>,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    request: Value,
}

/// A setup call: must succeed; `capture` names values of its response (`var` → JSON path).
#[derive(Deserialize)]
struct Step {
    #[serde(flatten)]
    call: Call,
    #[serde(default)]
    capture: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Case {
    #[serde(flatten)]
    call: Call,
    #[serde(default)]
    protocols: Option<Vec<String>>,
    expect: Expect,
}

#[derive(Deserialize, Clone)]
struct Auth {
    scopes: Vec<String>,
    #[serde(default = "default_tenant")]
    tenant: String,
}

fn default_tenant() -> String {
    "demo".into()
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

/// Makes `call` over `protocol`.
async fn send(
    addr: &str,
    protocol: &str,
    call: &Call,
    method: &MethodDescriptor,
    token: Option<&str>,
) -> Outcome {
    let input = DynamicMessage::deserialize(method.input(), call.request.clone())
        .expect("case request is valid JSON for the method");
    let binary = input.encode_to_vec();
    let (content_type, body, http2) = match protocol {
        "connect-json" => (
            "application/json",
            call.request.to_string().into_bytes(),
            false,
        ),
        "connect-proto" => ("application/proto", binary, true),
        "grpc" => ("application/grpc", frame(0, &binary), true),
        "grpc-web" => ("application/grpc-web+proto", frame(0, &binary), false),
        other => panic!("unknown protocol {other}"),
    };
    let mut request = Request::post(format!("http://{addr}/{}", call.method))
        .header("content-type", content_type);
    if protocol == "grpc" {
        request = request.header("te", "trailers");
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in &call.headers {
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

/// True when every field of `expected` is in `actual` with the same value. Arrays match element
/// by element (same length); a field absent from `actual` matches its proto3 default, because
/// proto3 JSON leaves defaults out.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            expected.iter().all(|(key, value)| match actual.get(key) {
                Some(actual) => contains(actual, value),
                None => is_default(value),
            })
        }
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len()
                && actual.iter().zip(expected).all(|(a, e)| contains(a, e))
        }
        _ => actual == expected,
    }
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Bool(flag) => !flag,
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::String(text) => text.is_empty() || text == "0",
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        Value::Null => true,
    }
}

/// `value` with every `${name}` in its strings replaced by that variable's value.
fn substitute(value: &Value, vars: &HashMap<String, String>) -> Value {
    match value {
        Value::String(text) => {
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                let end = start
                    + rest[start..]
                        .find('}')
                        .unwrap_or_else(|| panic!("unclosed ${{ in {text:?}"));
                let name = &rest[start + 2..end];
                let value = vars
                    .get(name)
                    .unwrap_or_else(|| panic!("unknown variable ${{{name}}} in {text:?}"));
                out.push_str(&rest[..start]);
                out.push_str(value);
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, vars)).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, v)| (key.clone(), substitute(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl Call {
    /// This call with the variables substituted into its request and headers.
    fn with_vars(&self, vars: &HashMap<String, String>) -> Call {
        let Value::Object(headers) = substitute(&Value::Object(self.headers.clone()), vars) else {
            unreachable!("an object stays an object")
        };
        Call {
            request: substitute(&self.request, vars),
            headers,
            ..self.clone()
        }
    }
}

/// The value at a dotted path (`member.memberId`, `rewards.0.rewardId`) of a JSON response.
fn at_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |value, part| match value {
        Value::Array(items) => items.get(part.parse::<usize>().ok()?),
        _ => value.get(part),
    })
}

impl Auth {
    /// A token for this tenant and these scopes, signed with the server's secret.
    fn token(&self) -> String {
        common::tenant_token(&self.tenant, Some(&self.scopes.join(" ")))
    }
}

/// Runs a file's setup steps over Connect JSON; returns the variables they captured.
async fn run_setup(
    addr: &str,
    pool: &prost_reflect::DescriptorPool,
    file: &Path,
    steps: &[Step],
) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for step in steps {
        let call = step.call.with_vars(&vars);
        let token = call.auth.as_ref().map(Auth::token);
        let method = method(pool, &call.method);
        let outcome = send(addr, SETUP_PROTOCOL, &call, &method, token.as_deref()).await;
        let label = format!("{} setup step {}", file.display(), call.name);
        assert_eq!(
            outcome.code,
            "ok",
            "{label} failed (reason {:?})",
            outcome.reason()
        );
        let response = outcome.response.unwrap_or_default();
        for (var, path) in &step.capture {
            let value = at_path(&response, path)
                .unwrap_or_else(|| panic!("{label}: no {path} in {response}"));
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            vars.insert(var.clone(), value);
        }
    }
    vars
}

/// What is wrong with `outcome` for `expect` (empty when it is right).
fn check(outcome: &Outcome, expect: &Expect, vars: &HashMap<String, String>) -> Vec<String> {
    let mut wrong = Vec::new();
    if outcome.code != expect.code {
        wrong.push(format!("code {} (want {})", outcome.code, expect.code));
    }
    if let Some(reason) = &expect.reason
        && outcome.reason().as_ref() != Some(reason)
    {
        wrong.push(format!("reason {:?} (want {reason})", outcome.reason()));
    }
    let got: Vec<&str> = outcome
        .details
        .iter()
        .map(|(kind, _)| kind.as_str())
        .collect();
    if let Some(details) = &expect.details
        && got != details.iter().map(String::as_str).collect::<Vec<_>>()
    {
        wrong.push(format!("details {got:?} (want {details:?})"));
    }
    if let Some(fields) = &expect.field_violations
        && &outcome.field_violations() != fields
    {
        wrong.push(format!(
            "field violations {:?} (want {fields:?})",
            outcome.field_violations()
        ));
    }
    if let Some(expected) = &expect.response {
        let expected = substitute(expected, vars);
        if !outcome
            .response
            .as_ref()
            .is_some_and(|actual| contains(actual, &expected))
        {
            wrong.push(format!(
                "response {:?} (want ⊇ {expected})",
                outcome.response
            ));
        }
    }
    wrong
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
        let mut vars = run_setup(&server.addr, &pool, file, &cases.setup).await;
        for case in &cases.cases {
            let method = method(&pool, &case.call.method);
            let token = case.call.auth.as_ref().map(Auth::token);
            let protocols: Vec<&str> = match &case.protocols {
                Some(list) => list.iter().map(String::as_str).collect(),
                None => PROTOCOLS.to_vec(),
            };
            for protocol in protocols {
                checked += 1;
                vars.insert("protocol".into(), protocol.into());
                let call = case.call.with_vars(&vars);
                let outcome = send(&server.addr, protocol, &call, &method, token.as_deref()).await;
                let wrong = check(&outcome, &case.expect, &vars);
                if !wrong.is_empty() {
                    failures.push(format!(
                        "{} over {protocol}: {}",
                        case.call.name,
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
