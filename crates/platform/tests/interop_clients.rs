//! Interoperability with clients we did not write: @connectrpc/connect-node (Connect JSON/binary
//! over HTTP/1.1 and 2, GET, gRPC, gRPC-web) and Python grpcio. The client programs live in
//! `contract-tests/interop/`; code for the protocol test service is generated for them here.
//! Needs `npm ci` and `.venv` (both set up by `scripts/test`).

mod common;

use std::path::{Path, PathBuf};

use common::TestServer;
use platform::interceptors::{AuthConfig, Claims, InterceptorConfig, RateLimitConfig, mint_hs256};
use tokio::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn test_proto_dir() -> PathBuf {
    repo().join("crates/protocol-testkit/proto")
}

async fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

#[tokio::test]
async fn connect_node_clients_interoperate_on_every_protocol() {
    let repo = repo();
    let plugin = repo.join("node_modules/.bin/protoc-gen-es");
    assert!(
        plugin.exists(),
        "protoc-gen-es missing: run scripts/test (it runs `npm ci`)"
    );
    let generated = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-ts");
    std::fs::create_dir_all(&generated).unwrap();
    run(
        Command::new(repo.join("tools/protoc"))
            .arg(format!("--plugin=protoc-gen-es={}", plugin.display()))
            .arg(format!("--es_out={}", generated.display()))
            .arg("--es_opt=target=js,import_extension=js")
            .arg("-I")
            .arg(test_proto_dir())
            .arg("-I")
            .arg(repo.join("proto"))
            .args([
                "protocol/test/v1/echo.proto",
                "commerce/api/v1/options.proto",
            ]),
        "protoc-gen-es",
    )
    .await;

    let server = TestServer::start().await;
    let output = run(
        Command::new("node")
            .arg(repo.join("contract-tests/interop/connect_node_client.mjs"))
            .arg(server.url(""))
            .arg(&generated),
        "connect-node client",
    )
    .await;
    for transport in [
        "connect-json-h1",
        "connect-binary-h2",
        "connect-get-h1",
        "grpc",
        "grpc-web",
    ] {
        assert!(
            output.contains(&format!("ok {transport}")),
            "{transport} not confirmed:\n{output}"
        );
    }
}

#[tokio::test]
async fn python_grpcio_interoperates() {
    let repo = repo();
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        ".venv missing: run scripts/test (it installs requirements-test.txt)"
    );
    let generated = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-py");
    std::fs::create_dir_all(&generated).unwrap();
    let well_known = run(
        Command::new(&python).args(["-c", "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))"]),
        "locate grpc_tools protos",
    )
    .await;
    run(
        Command::new(&python)
            .args(["-m", "grpc_tools.protoc"])
            .arg("-I")
            .arg(test_proto_dir())
            .arg("-I")
            .arg(repo.join("proto"))
            .arg("-I")
            .arg(well_known.trim())
            .arg(format!("--python_out={}", generated.display()))
            .arg(format!("--grpc_python_out={}", generated.display()))
            .args([
                "protocol/test/v1/echo.proto",
                "commerce/api/v1/options.proto",
            ]),
        "grpc_tools.protoc",
    )
    .await;

    let server = TestServer::start().await;
    let output = run(
        Command::new(&python)
            .arg(repo.join("contract-tests/interop/grpcio_client.py"))
            .arg(server.addr.to_string())
            .arg(&generated),
        "grpcio client",
    )
    .await;
    assert!(output.contains("ok grpcio"), "{output}");
}

const SECRET: &[u8] = b"interop-early-errors-secret";
/// Large enough that the client is still sending when a refusal comes back (socket buffers on
/// loopback hold a few MB).
const PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

/// A server with authentication, a message limit above the payload, and `configure` applied.
async fn authenticated_server(configure: impl FnOnce(&mut platform::ServerConfig)) -> TestServer {
    TestServer::start_configured(|config| {
        config.max_message_bytes = 2 * PAYLOAD_BYTES;
        config.interceptors = InterceptorConfig {
            auth: Some(AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                ..AuthConfig::default()
            }),
            ..InterceptorConfig::default()
        };
        configure(config);
    })
    .await
}

fn token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    mint_hs256(
        SECRET,
        &Claims {
            sub: "interop".into(),
            tenant: "tenant-early".into(),
            scope: "protocol.test".into(),
            exp,
        },
    )
    .unwrap()
}

/// Generates connect-es code for the test service and for `GhostService`, a service no server
/// registers (its calls are unknown methods).
async fn generate_with_ghost() -> PathBuf {
    let repo = repo();
    let plugin = repo.join("node_modules/.bin/protoc-gen-es");
    assert!(
        plugin.exists(),
        "protoc-gen-es missing: run scripts/test (it runs `npm ci`)"
    );
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-early-errors");
    let ghost_dir = scratch.join("proto/protocol/ghost/v1");
    std::fs::create_dir_all(&ghost_dir).unwrap();
    std::fs::write(
        ghost_dir.join("ghost.proto"),
        "syntax = \"proto3\";\npackage protocol.ghost.v1;\nimport \"protocol/test/v1/echo.proto\";\nservice GhostService {\n  rpc Haunt(protocol.test.v1.EchoRequest) returns (protocol.test.v1.EchoResponse);\n}\n",
    )
    .unwrap();
    let generated = scratch.join("generated");
    std::fs::create_dir_all(&generated).unwrap();
    run(
        Command::new(repo.join("tools/protoc"))
            .arg(format!("--plugin=protoc-gen-es={}", plugin.display()))
            .arg(format!("--es_out={}", generated.display()))
            .arg("--es_opt=target=js,import_extension=js")
            .arg("-I")
            .arg(scratch.join("proto"))
            .arg("-I")
            .arg(test_proto_dir())
            .arg("-I")
            .arg(repo.join("proto"))
            .args([
                "protocol/ghost/v1/ghost.proto",
                "protocol/test/v1/echo.proto",
                "commerce/api/v1/options.proto",
            ]),
        "protoc-gen-es",
    )
    .await;
    generated
}

async fn run_early_error_cases(server: &TestServer, generated: &Path, cases: serde_json::Value) {
    let output = run(
        Command::new("node")
            .arg(repo().join("contract-tests/interop/early_errors_client.mjs"))
            .arg(server.url(""))
            .arg(generated)
            .arg(cases.to_string()),
        "connect-node early errors client",
    )
    .await;
    for case in cases.as_array().unwrap() {
        for transport in ["grpc-web-h1", "connect-proto-h1"] {
            let line = format!("ok {} over {transport}", case["name"].as_str().unwrap());
            assert!(output.contains(&line), "{line} not confirmed:\n{output}");
        }
    }
}

#[tokio::test]
async fn calls_refused_before_their_body_is_read_reach_connect_node_over_http1_with_their_real_status()
 {
    let generated = generate_with_ghost().await;
    let token = token();

    // Spend the tenant's burst: every later call is rate limited.
    let limited = authenticated_server(|config| {
        config.interceptors.rate_limit = RateLimitConfig {
            // One call per 100 s after a burst of two: far from GCRA's rounding at the edge.
            tokens_per_second: 0.01,
            burst: 2.0,
        };
    })
    .await;
    let bearer = format!("Bearer {token}");
    let mut spent = 0;
    while common::post_json(
        &limited,
        "/protocol.test.v1.EchoService/Echo",
        serde_json::json!({}),
        &[("authorization", &bearer)],
    )
    .await
    .status
        != 429
    {
        spent += 1;
        assert!(spent < 5, "the rate limit never refused a call");
    }
    run_early_error_cases(
        &limited,
        &generated,
        serde_json::json!([
            {"name": "no token", "method": "echo", "payloadBytes": PAYLOAD_BYTES,
             "code": "Unauthenticated", "reason": "TOKEN_MISSING"},
            {"name": "rate limited", "method": "echo", "token": token, "payloadBytes": PAYLOAD_BYTES,
             "code": "ResourceExhausted", "reason": "RATE_LIMITED"},
            {"name": "unknown method", "method": "haunt", "token": token, "payloadBytes": PAYLOAD_BYTES,
             "code": "Unimplemented"},
        ]),
    )
    .await;

    // A server at its concurrency limit sheds every call.
    let overloaded = authenticated_server(|config| config.interceptors.max_in_flight = 0).await;
    run_early_error_cases(
        &overloaded,
        &generated,
        serde_json::json!([
            {"name": "overloaded", "method": "echo", "token": token, "payloadBytes": PAYLOAD_BYTES,
             "code": "Unavailable", "reason": "OVERLOADED"},
        ]),
    )
    .await;
}
