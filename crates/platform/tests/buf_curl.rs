//! Interoperability with `buf curl` (the npm-installed buf CLI, a client we did not write): every
//! protocol, schemas resolved by server reflection over the call's own protocol.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

fn buf() -> PathBuf {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../node_modules/.bin/buf"
    ));
    assert!(
        path.exists(),
        "buf CLI missing: run scripts/test (it runs `npm ci`)"
    );
    path
}

struct CurlResult {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn buf_curl(args: &[&str]) -> CurlResult {
    let output = Command::new(buf())
        .arg("curl")
        .args(args)
        .output()
        .await
        .expect("run buf curl");
    CurlResult {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Parses buf curl's output: one pretty-printed JSON value per message.
fn json_values(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter()
        .map(|value| value.expect("JSON"))
        .collect()
}

#[tokio::test]
async fn unary_calls_work_over_connect_grpc_and_grpc_web_with_reflection() {
    let server = TestServer::start().await;
    let url = server.url("/protocol.test.v1.EchoService/Echo");
    let data = r#"{"text":"hello","bigNumber":"9007199254740993"}"#;
    for protocol_args in [
        vec!["--http2-prior-knowledge"],
        vec!["--protocol", "connect"],
        vec!["--protocol", "grpc", "--http2-prior-knowledge"],
        vec!["--protocol", "grpcweb"],
        // Older tools use the v1alpha reflection service; it is served too.
        vec![
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            "grpc-v1alpha",
        ],
    ] {
        let mut args = protocol_args.clone();
        args.extend(["--data", data, url.as_str()]);
        let result = buf_curl(&args).await;
        assert!(
            result.success,
            "buf curl {args:?} failed: {}",
            result.stderr
        );
        assert_eq!(
            json_values(&result.stdout),
            [json!({"text": "hello", "bigNumber": "9007199254740993"})],
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn errors_reach_buf_curl_with_code_and_details_on_every_protocol() {
    let server = TestServer::start().await;
    let url = server.url("/protocol.test.v1.EchoService/Fail");
    for protocol_args in [
        vec!["--http2-prior-knowledge"],
        vec!["--protocol", "grpc", "--http2-prior-knowledge"],
        vec!["--protocol", "grpcweb"],
    ] {
        let mut args = protocol_args.clone();
        args.extend(["--data", r#"{"code":5,"message":"missing"}"#, url.as_str()]);
        let result = buf_curl(&args).await;
        assert!(!result.success, "{args:?} should fail");
        let error = json_values(&result.stderr)
            .pop()
            .unwrap_or_else(|| panic!("no JSON error: {}", result.stderr));
        assert_eq!(error["code"], "not_found", "{args:?}: {error}");
        assert_eq!(error["message"], "missing");
        let types: Vec<&str> = error["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["google.rpc.ErrorInfo", "google.rpc.BadRequest"],
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn server_streams_work_on_every_protocol() {
    let server = TestServer::start().await;
    let url = server.url("/protocol.test.v1.EchoService/Count");
    for protocol_args in [
        vec!["--http2-prior-knowledge"],
        vec!["--protocol", "connect"],
        vec!["--protocol", "grpc", "--http2-prior-knowledge"],
        vec!["--protocol", "grpcweb"],
    ] {
        let mut args = protocol_args.clone();
        args.extend(["--data", r#"{"upTo":3}"#, url.as_str()]);
        let result = buf_curl(&args).await;
        assert!(result.success, "{args:?}: {}", result.stderr);
        assert_eq!(
            json_values(&result.stdout),
            [
                json!({"number": 1}),
                json!({"number": 2}),
                json!({"number": 3})
            ]
        );
    }
}

#[tokio::test]
async fn health_watch_streams_status_changes_to_buf_curl() {
    let mut server = TestServer::start_with_grace(Duration::from_millis(500)).await;
    let mut child = Command::new(buf())
        .args([
            "curl",
            "--http2-prior-knowledge",
            "--data",
            r#"{"service":"protocol.test.v1.EchoService"}"#,
        ])
        .arg(server.url("/grpc.health.v1.Health/Watch"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn buf curl");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    while !seen.contains("SERVING") {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("first status")
            .unwrap();
        seen.push_str(&line.expect("stream open"));
    }
    let serving = server.begin_shutdown();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
        }
        rest
    })
    .await
    .expect("stream ends after shutdown");
    assert!(
        rest.contains("NOT_SERVING"),
        "after shutdown buf curl saw: {rest}"
    );
    serving.await.unwrap().expect("clean exit");
}
