//! The contract-tests runner: every case in `contract-tests/cases/*.json`, against the live
//! `commerce` binary, over Connect JSON, Connect binary, gRPC and gRPC-web — and every protocol
//! must give the case's expected outcome. A file's `setup` calls run first, once, and capture
//! values from their responses for the file's cases to use as `${name}`. Unary methods and server
//! streams are both called as a client on the wire would, over hand-built HTTP, and each reply is
//! checked against its protocol's framing as well as the case. The case format is described in
//! contract-tests/README.md.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

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
    /// For customer-scope cases: `owner` (a customer on their own object), `foreign` (on another
    /// customer's), `shared` (a read every customer gets), `refused` (a method closed to
    /// customers); checked for coverage by `every_method_has_its_customer_scope_cases`.
    #[serde(default)]
    scope: Option<String>,
    expect: Expect,
}

#[derive(Deserialize, Clone)]
struct Auth {
    scopes: Vec<String>,
    #[serde(default = "default_tenant")]
    tenant: String,
    /// Makes it a customer token for this customer id (claim `customer_id`).
    #[serde(default)]
    customer: Option<String>,
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
    /// For a server stream: its messages, one for one.
    messages: Option<Vec<Value>>,
}

/// The details of an error status: each one's type name and encoded message.
type Details = Vec<(String, Vec<u8>)>;

/// What a call produced, the same shape whatever the protocol.
#[derive(Debug, Default)]
struct Outcome {
    code: String,
    /// The messages received, in order: a unary call's response, or every message of a stream.
    messages: Vec<Value>,
    details: Details,
    /// Ways the reply broke its protocol's wire format; each one fails the case.
    problems: Vec<String>,
}

impl Outcome {
    /// The response of a unary call.
    fn response(&self) -> Option<&Value> {
        self.messages.first()
    }

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

    /// Records `message` as a message of the reply, or why it could not be read.
    fn push_message(&mut self, message: Result<Value, String>) {
        match message {
            Ok(message) => self.messages.push(message),
            Err(problem) => self.problems.push(problem),
        }
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

/// A message of the reply as proto3 JSON: decoded from protobuf, or parsed from JSON and checked
/// against the message type.
fn message_json(
    descriptor: &MessageDescriptor,
    payload: &[u8],
    json: bool,
) -> Result<Value, String> {
    let name = descriptor.full_name();
    if json {
        let value: Value = serde_json::from_slice(payload)
            .map_err(|err| format!("a message is not JSON ({err})"))?;
        DynamicMessage::deserialize(descriptor.clone(), value.clone())
            .map_err(|err| format!("message {value} is not a valid {name} ({err})"))?;
        Ok(value)
    } else {
        DynamicMessage::decode(descriptor.clone(), payload)
            .map_err(|err| format!("a message does not decode as {name} ({err})"))?
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .map_err(|err| format!("a {name} has no JSON form ({err})"))
    }
}

fn frame(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The enveloped frames of a body (flags, payload), and how many bytes at its end are not a whole
/// frame.
fn frames(mut body: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + length {
            break;
        }
        out.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    (out, body.len())
}

fn grpc_details(metadata: &http::HeaderMap) -> (String, Details) {
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

/// Code and details of a Connect error (`{"code": ..., "message": ..., "details": [...]}`), the
/// body of a unary error or the `error` of a stream's end-stream message.
fn connect_error(error: &Value) -> Result<(String, Details), String> {
    let code = error["code"]
        .as_str()
        .ok_or_else(|| format!("Connect error without a code: {error}"))?;
    let details = error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|detail| {
            let (Some(kind), Some(value)) = (detail["type"].as_str(), detail["value"].as_str())
            else {
                return Err(format!("error detail without type or value: {detail}"));
            };
            // Connect sends base64 without padding, and accepts it with.
            let value = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|err| format!("error detail {kind} is not base64 ({err})"))?;
            Ok((kind.to_owned(), value))
        })
        .collect::<Result<_, String>>()?;
    Ok((code.to_owned(), details))
}

/// How long one call, a stream included, may take before the runner gives up on it: a stream
/// that never ends fails its case rather than hanging the test.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP reply, read to its end.
struct Reply {
    status: http::StatusCode,
    headers: http::HeaderMap,
    trailers: http::HeaderMap,
    data: Bytes,
}

/// Makes `call` over `protocol` — a unary call, or a server stream when the method is one — and
/// reads the reply.
async fn send(
    addr: &str,
    protocol: &str,
    call: &Call,
    method: &MethodDescriptor,
    token: Option<&str>,
) -> Outcome {
    let streaming = method.is_server_streaming();
    let reply = match tokio::time::timeout(
        CALL_TIMEOUT,
        exchange(addr, protocol, streaming, call, method, token),
    )
    .await
    {
        Ok(reply) => reply,
        Err(_) => {
            return Outcome {
                code: "(none)".into(),
                problems: vec![format!("the reply did not end within {CALL_TIMEOUT:?}")],
                ..Outcome::default()
            };
        }
    };
    let output = method.output();
    let mut outcome = match protocol {
        "connect-json" | "connect-proto" if streaming => {
            connect_stream_outcome(&reply, &output, protocol == "connect-json")
        }
        "connect-json" | "connect-proto" => {
            connect_unary_outcome(&reply, &output, protocol == "connect-json")
        }
        _ => grpc_outcome(&reply, &output, protocol == "grpc-web"),
    };
    if !streaming && outcome.messages.len() > 1 {
        outcome.problems.push(format!(
            "a unary reply held {} messages",
            outcome.messages.len()
        ));
    }
    outcome
}

/// Sends the request as `protocol` frames it (a streaming call differs only over Connect) and reads
/// the whole reply.
async fn exchange(
    addr: &str,
    protocol: &str,
    streaming: bool,
    call: &Call,
    method: &MethodDescriptor,
    token: Option<&str>,
) -> Reply {
    let input = DynamicMessage::deserialize(method.input(), call.request.clone())
        .expect("case request is valid JSON for the method");
    let binary = input.encode_to_vec();
    let json = call.request.to_string().into_bytes();
    let (content_type, body, http2) = match (protocol, streaming) {
        ("connect-json", false) => ("application/json", json, false),
        ("connect-json", true) => ("application/connect+json", frame(0, &json), false),
        ("connect-proto", false) => ("application/proto", binary, true),
        ("connect-proto", true) => ("application/connect+proto", frame(0, &binary), true),
        ("grpc", _) => ("application/grpc", frame(0, &binary), true),
        ("grpc-web", _) => ("application/grpc-web+proto", frame(0, &binary), false),
        (other, _) => panic!("unknown protocol {other}"),
    };
    let mut request = Request::post(format!("http://{addr}/{}", call.method))
        .header("content-type", content_type);
    if protocol == "grpc" {
        request = request.header("te", "trailers");
    }
    if streaming && protocol.starts_with("connect") {
        request = request.header("connect-protocol-version", "1");
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
    Reply {
        status: parts.status,
        headers: parts.headers,
        trailers: collected.trailers().cloned().unwrap_or_default(),
        data: collected.to_bytes(),
    }
}

/// A Connect unary reply: the response with HTTP 200, else an error JSON.
fn connect_unary_outcome(reply: &Reply, output: &MessageDescriptor, json: bool) -> Outcome {
    let mut outcome = Outcome::default();
    if reply.status == 200 {
        outcome.code = "ok".into();
        outcome.push_message(message_json(output, &reply.data, json));
        return outcome;
    }
    let error = serde_json::from_slice(&reply.data)
        .map_err(|err| format!("HTTP {} with a body that is not JSON ({err})", reply.status))
        .and_then(|error| connect_error(&error));
    match error {
        Ok((code, details)) => (outcome.code, outcome.details) = (code, details),
        Err(problem) => {
            outcome.code = format!("(HTTP {})", reply.status);
            outcome.problems.push(problem);
        }
    }
    outcome
}

/// A Connect streaming reply: HTTP 200 and enveloped messages, then the end-stream message (flag
/// 0x02) holding the error, if any.
fn connect_stream_outcome(reply: &Reply, output: &MessageDescriptor, json: bool) -> Outcome {
    let mut outcome = Outcome {
        code: "(none)".into(),
        ..Outcome::default()
    };
    let content_type = if json {
        "application/connect+json"
    } else {
        "application/connect+proto"
    };
    if reply.status != 200 {
        // Connect streams answer 200 and carry errors in the end-stream message; read the body as
        // a unary error anyway so the report names the code.
        outcome.problems.push(format!(
            "HTTP {} (a Connect stream answers 200, its errors in the end-stream message)",
            reply.status
        ));
        if let Ok(Ok((code, _))) =
            serde_json::from_slice(&reply.data).map(|error: Value| connect_error(&error))
        {
            outcome.code = code;
        }
        return outcome;
    }
    let got_type = reply
        .headers
        .get("content-type")
        .and_then(|value| value.to_str().ok());
    if got_type != Some(content_type) {
        outcome
            .problems
            .push(format!("content-type {got_type:?} (want {content_type})"));
    }
    let (frames, rest) = frames(&reply.data);
    if rest != 0 {
        outcome
            .problems
            .push(format!("{rest} bytes after the last whole envelope"));
    }
    let mut end_stream = None;
    for (flags, payload) in frames {
        if end_stream.is_some() {
            outcome
                .problems
                .push("an envelope after the end-stream message".into());
        } else if flags == 0x02 {
            end_stream = Some(payload);
        } else if flags == 0 {
            outcome.push_message(message_json(output, &payload, json));
        } else {
            outcome
                .problems
                .push(format!("an envelope flagged {flags:#04x}"));
        }
    }
    let Some(end_stream) = end_stream else {
        outcome
            .problems
            .push("the stream ended without an end-stream message".into());
        return outcome;
    };
    let end = serde_json::from_slice::<Value>(&end_stream)
        .map_err(|err| format!("the end-stream message is not JSON ({err})"))
        .and_then(|end| match end.get("error") {
            None | Some(Value::Null) => Ok(("ok".to_owned(), Vec::new())),
            Some(error) => connect_error(error),
        });
    match end {
        Ok((code, details)) => (outcome.code, outcome.details) = (code, details),
        Err(problem) => outcome.problems.push(problem),
    }
    outcome
}

/// A gRPC or gRPC-web reply, unary or streaming: data frames, then the status — in HTTP trailers
/// (gRPC), in a final frame flagged 0x80 (gRPC-web), or in the headers of a trailers-only reply.
fn grpc_outcome(reply: &Reply, output: &MessageDescriptor, web: bool) -> Outcome {
    let mut outcome = Outcome::default();
    if reply.status != 200 {
        outcome
            .problems
            .push(format!("HTTP {} (gRPC answers 200)", reply.status));
    }
    let mut metadata = if reply.trailers.contains_key("grpc-status") {
        reply.trailers.clone()
    } else {
        reply.headers.clone()
    };
    let (frames, rest) = frames(&reply.data);
    if rest != 0 {
        outcome
            .problems
            .push(format!("{rest} bytes after the last whole frame"));
    }
    let mut trailer_frame = false;
    for (flags, payload) in frames {
        if trailer_frame {
            outcome
                .problems
                .push("a frame after the trailer frame".into());
        } else if web && flags & 0x80 != 0 {
            trailer_frame = true;
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
        } else if flags == 0 {
            outcome.push_message(message_json(output, &payload, false));
        } else {
            outcome
                .problems
                .push(format!("a frame flagged {flags:#04x}"));
        }
    }
    if !metadata.contains_key("grpc-status") {
        outcome.problems.push("no grpc-status".into());
    }
    (outcome.code, outcome.details) = grpc_details(&metadata);
    outcome
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
        match &self.customer {
            Some(customer) => {
                common::customer_token(&self.tenant, customer, &self.scopes.join(" "))
            }
            None => common::tenant_token(&self.tenant, Some(&self.scopes.join(" "))),
        }
    }
}

/// Runs a file's setup steps over Connect JSON; returns the variables they captured.
async fn run_setup(
    route: &(dyn Fn(&str) -> String + Sync),
    pool: &prost_reflect::DescriptorPool,
    file: &Path,
    steps: &[Step],
) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for step in steps {
        let call = step.call.with_vars(&vars);
        let token = call.auth.as_ref().map(Auth::token);
        let method = method(pool, &call.method);
        let label = format!("{} setup step {}", file.display(), call.name);
        assert!(
            !method.is_server_streaming(),
            "{label}: setup steps are unary calls"
        );
        let outcome = send(
            &route(&call.method),
            SETUP_PROTOCOL,
            &call,
            &method,
            token.as_deref(),
        )
        .await;
        assert!(
            outcome.code == "ok" && outcome.problems.is_empty(),
            "{label} failed: code {} (reason {:?}) {:?}",
            outcome.code,
            outcome.reason(),
            outcome.problems
        );
        let response = outcome.response().cloned().unwrap_or_default();
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
    let mut wrong = outcome.problems.clone();
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
            .response()
            .is_some_and(|actual| contains(actual, &expected))
        {
            wrong.push(format!(
                "response {:?} (want ⊇ {expected})",
                outcome.response()
            ));
        }
    }
    if let Some(expected) = &expect.messages {
        let expected: Vec<Value> = expected.iter().map(|e| substitute(e, vars)).collect();
        let matches = outcome.messages.len() == expected.len()
            && outcome
                .messages
                .iter()
                .zip(&expected)
                .all(|(actual, expected)| contains(actual, expected));
        if !matches {
            wrong.push(format!(
                "messages {} (want {} of them, ⊇ {} one for one)",
                Value::Array(outcome.messages.clone()),
                expected.len(),
                Value::Array(expected)
            ));
        }
    }
    wrong
}

/// The customer-scope promise is tested per method, not by sampling: every method the contract
/// opens to customers for their own objects has an owner case and a foreign case, every shared
/// read a customer case, and every other authenticated method a case refusing a customer token.
#[test]
fn every_method_has_its_customer_scope_cases() {
    use platform::interceptors::{CustomerAccess, Policies};
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contract-tests/cases/customer_scope.json");
    let cases: CaseFile = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let has = |method: &str, scope: &str, code: Option<&str>| {
        cases.cases.iter().any(|case| {
            case.call.method == method
                && case.scope.as_deref() == Some(scope)
                && case
                    .call
                    .auth
                    .as_ref()
                    .is_some_and(|auth| auth.customer.is_some())
                && code.is_none_or(|code| case.expect.code == code)
        })
    };
    let mut missing = Vec::new();
    for (_, policy) in Policies::from_pool(&pool()).iter() {
        let name = &policy.name;
        if policy.infrastructure || policy.public || name.starts_with("commerce.psp.") {
            continue;
        }
        let wanted: &[(&str, Option<&str>)] = match policy.customer {
            CustomerAccess::Own => &[("owner", None), ("foreign", None)],
            CustomerAccess::Shared => &[("shared", Some("ok"))],
            CustomerAccess::Refused => &[("refused", Some("permission_denied"))],
        };
        for (scope, code) in wanted {
            if !has(name, scope, *code) {
                missing.push(format!("{name}: no `{scope}` case"));
            }
        }
    }
    // A foreign case must not succeed in reaching another customer's object: it is refused or
    // not found, or (for lists) finds nothing.
    for case in cases
        .cases
        .iter()
        .filter(|case| case.scope.as_deref() == Some("foreign"))
    {
        let empty_list = case.expect.code == "ok"
            && case.expect.response.as_ref().is_some_and(|response| {
                response.as_object().is_some_and(|fields| {
                    fields
                        .values()
                        .all(|value| value.as_array().is_some_and(Vec::is_empty))
                })
            });
        assert!(
            ["not_found", "permission_denied"].contains(&case.expect.code.as_str()) || empty_list,
            "foreign case {} expects {}",
            case.call.name,
            case.expect.code
        );
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "customer-scope cases missing:\n{}",
        missing.join("\n")
    );
}

#[tokio::test]
async fn every_contract_case_holds_on_every_protocol() {
    let server = common::start();
    run_every_case(&|_method: &str| server.addr.clone()).await;
}

/// The same cases against the split topology (every service its own process, on Redis and a
/// MongoDB-compatible server): each call goes to the process serving its package, checkout calls
/// alternating between two replicas — the contract a caller sees does not depend on the shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contract_case_holds_on_the_split_topology() {
    let split = common::split::Split::start(2, &[]);
    let turn = std::sync::atomic::AtomicUsize::new(0);
    run_every_case(&|method: &str| {
        let package = method.split('/').next().unwrap_or_default();
        if package.starts_with("commerce.loyalty.") {
            split.loyalty.addr.clone()
        } else if package.starts_with("commerce.subscriptions.") {
            split.subscriptions.addr.clone()
        } else {
            // Checkout's packages and the platform's own services (health, reflection).
            let replica = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            split.checkout[replica % split.checkout.len()].addr.clone()
        }
    })
    .await;
}

/// Runs every case file, each call sent to `route(method)`'s address.
async fn run_every_case(route: &(dyn Fn(&str) -> String + Sync)) {
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
        let mut vars = run_setup(route, &pool, file, &cases.setup).await;
        for case in &cases.cases {
            let method = method(&pool, &case.call.method);
            // A stream's messages go in `expect.messages`, a unary response in `expect.response`.
            let streaming = method.is_server_streaming();
            assert!(
                !(streaming && case.expect.response.is_some()
                    || !streaming && case.expect.messages.is_some()),
                "{} case {}: {} is {}, so its expectation is `expect.{}`",
                file.display(),
                case.call.name,
                case.call.method,
                if streaming {
                    "a server stream"
                } else {
                    "unary"
                },
                if streaming { "messages" } else { "response" },
            );
            let token = case.call.auth.as_ref().map(Auth::token);
            let protocols: Vec<&str> = match &case.protocols {
                Some(list) => list.iter().map(String::as_str).collect(),
                None => PROTOCOLS.to_vec(),
            };
            for protocol in protocols {
                checked += 1;
                vars.insert("protocol".into(), protocol.into());
                let call = case.call.with_vars(&vars);
                let outcome = send(
                    &route(&call.method),
                    protocol,
                    &call,
                    &method,
                    token.as_deref(),
                )
                .await;
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
