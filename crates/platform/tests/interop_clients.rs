//! Interoperability with clients we did not write: @connectrpc/connect-node (Connect JSON/binary
//! over HTTP/1.1 and 2, GET, gRPC, gRPC-web) and Python grpcio. The client programs live in
//! `contract-tests/interop/`; code for the protocol test service is generated for them here.
//! Needs `npm ci` and `.venv` (both set up by `scripts/test`).

mod common;

use std::path::{Path, PathBuf};

use common::TestServer;
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
