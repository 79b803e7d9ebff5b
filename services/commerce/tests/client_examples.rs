//! The client examples of docs/clients.md run against the binary, as a caller would run them: the
//! TypeScript package (`clients/ts`) builds with its npm script, its quickstart enrols a member
//! and prints the balance over Connect, and its errors example reads a refusal's ErrorInfo; `clients/python/generate` makes the grpcio stubs without
//! cargo and `clients/python/example.py` does the same over gRPC. Each example runs twice: the
//! second run must find the same member and the same balance (enrolment is idempotent by customer
//! id, the bonus by its idempotency key). Needs `npm ci` and `.venv` (both set up by scripts/test).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Runs `command`, fails with its output unless it succeeds, and returns its stdout.
fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The member and available points the server holds for `customer` (tenant `demo`), read over
/// Connect JSON: what the example's printed line must say.
fn expected_line(server: &common::Running, token: &str, customer: &str) -> String {
    let (status, member) = common::connect_json(
        &server.addr,
        "/commerce.loyalty.v1.MemberService/GetMember",
        &serde_json::json!({ "customerId": customer }).to_string(),
        Some(token),
        &[],
    );
    assert_eq!(status, 200, "GetMember: {member}");
    let member_id = member["member"]["memberId"].as_str().expect("member id");
    let (status, balance) = common::connect_json(
        &server.addr,
        "/commerce.loyalty.v1.MemberService/GetBalance",
        &serde_json::json!({ "memberId": member_id }).to_string(),
        Some(token),
        &[],
    );
    assert_eq!(status, 200, "GetBalance: {balance}");
    // int64 is a JSON string in proto3 JSON.
    let available = balance["balance"]["availablePoints"]
        .as_str()
        .expect("available points");
    assert_eq!(available, "100", "the welcome bonus, once: {balance}");
    format!("member {member_id}: {available} points available")
}

#[test]
fn typescript_quickstart_enrols_and_prints_the_balance() {
    let repo = repo();
    assert!(
        repo.join("node_modules/.bin/tsc").exists(),
        "TypeScript missing: run scripts/test (it runs `npm ci`)"
    );
    // The package's own build: the library to clients/ts/dist, then the examples against it.
    run(
        Command::new("npm")
            .args(["run", "build", "--silent", "--workspace", "clients/ts"])
            .current_dir(&repo),
        "npm run build (clients/ts)",
    );
    let quickstart = repo.join("clients/ts/dist/examples/quickstart.js");
    assert!(quickstart.exists(), "the build made no {quickstart:?}");

    let server = common::start();
    let token = common::dev_token(None);
    let quickstart = || {
        run(
            Command::new("node")
                .arg(&quickstart)
                .env("COMMERCE_URL", format!("http://{}", server.addr))
                .env("COMMERCE_TOKEN", &token)
                .env("COMMERCE_CUSTOMER", "cust-ts-quickstart"),
            "the TypeScript quickstart",
        )
    };
    let first = quickstart();
    let expected = expected_line(&server, &token, "cust-ts-quickstart");
    assert_eq!(first.trim(), expected);
    assert_eq!(
        quickstart().trim(),
        expected,
        "a second run changes nothing"
    );

    // The package's `errorInfo` reads the reason of a refusal on every protocol.
    let errors = run(
        Command::new("node")
            .arg(repo.join("clients/ts/dist/examples/errors.js"))
            .env("COMMERCE_URL", format!("http://{}", server.addr))
            .env("COMMERCE_TOKEN", &token),
        "the TypeScript errors example",
    );
    assert_eq!(
        errors.lines().collect::<Vec<_>>(),
        ["connect", "grpc", "grpc-web"].map(|protocol| format!(
            "{protocol}: InvalidArgument IDEMPOTENCY_KEY_REQUIRED loyalty.commerce.dev"
        )),
    );
}

#[test]
fn python_example_generates_its_stubs_and_prints_the_balance() {
    let repo = repo();
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        ".venv missing: run scripts/test (it installs requirements-test.txt)"
    );
    let generated = tempfile::tempdir().expect("temp dir");
    run(
        Command::new(repo.join("clients/python/generate")).arg(generated.path()),
        "clients/python/generate",
    );
    for module in [
        "buf/validate/validate_pb2.py",
        "commerce/loyalty/v1/member_service_pb2_grpc.py",
        "commerce/checkout/v1/order_service_pb2_grpc.py",
        "commerce/subscriptions/v1/subscription_service_pb2_grpc.py",
    ] {
        assert!(
            generated.path().join(module).exists(),
            "clients/python/generate made no {module}"
        );
    }
    assert!(
        !generated.path().join("commerce/psp").exists(),
        "the PSP simulator's API is internal"
    );

    let server = common::start();
    let token = common::dev_token(None);
    let example = || {
        run(
            Command::new(&python)
                .arg(repo.join("clients/python/example.py"))
                .env("PYTHONPATH", generated.path())
                .env("COMMERCE_URL", format!("http://{}", server.addr))
                .env("COMMERCE_TOKEN", &token)
                .env("COMMERCE_CUSTOMER", "cust-py-example"),
            "clients/python/example.py",
        )
    };
    let first = example();
    let expected = expected_line(&server, &token, "cust-py-example");
    assert_eq!(first.trim(), expected);
    assert_eq!(example().trim(), expected, "a second run changes nothing");
}

/// `src/index.ts` is written by hand: it must re-export every file `buf generate` makes.
#[test]
fn typescript_index_reexports_every_generated_file() {
    let ts = repo().join("clients/ts/src");
    let index = std::fs::read_to_string(ts.join("index.ts")).expect("clients/ts/src/index.ts");
    let mut pending = vec![ts.join("gen")];
    let mut generated = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read clients/ts/src/gen") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&ts).unwrap().to_str().unwrap();
            let Some(module) = relative.strip_suffix(".ts") else {
                continue;
            };
            generated += 1;
            assert!(
                index.contains(&format!("export * from \"./{module}.js\";")),
                "clients/ts/src/index.ts does not re-export {relative}"
            );
        }
    }
    assert!(generated > 20, "only {generated} generated files found");
}

/// The package's peer dependencies are the runtime the generated code was made for and the
/// versions the repository's tooling pins (root package.json), so callers install what works.
#[test]
fn typescript_peer_dependencies_match_the_generator_and_the_tooling() {
    let repo = repo();
    let read = |path: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(repo.join(path)).expect(path)).expect(path)
    };
    let package = read("clients/ts/package.json");
    let tooling = read("package.json");
    let peers = package["peerDependencies"]
        .as_object()
        .expect("peerDependencies");
    let generated = std::fs::read_to_string(
        repo.join("clients/ts/src/gen/commerce/loyalty/v1/member_service_pb.ts"),
    )
    .expect("generated file");
    let generator = generated
        .lines()
        .find_map(|line| line.strip_prefix("// @generated by protoc-gen-es v"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("protoc-gen-es header");
    assert_eq!(
        peers["@bufbuild/protobuf"], generator,
        "@bufbuild/protobuf must be the version of protoc-gen-es that generated the code"
    );
    assert!(
        generated.contains("\"@bufbuild/protovalidate/gen/buf/validate/validate_pb.js\""),
        "the generated code imports @bufbuild/protovalidate (a peer dependency)"
    );
    for (name, version) in peers {
        assert_eq!(
            &tooling["devDependencies"][name], version,
            "{name}: clients/ts/package.json and the root package.json disagree"
        );
        assert_eq!(
            &package["devDependencies"][name], version,
            "{name}: the package builds against another version than it asks for"
        );
    }
    assert_eq!(
        tooling["devDependencies"]["@bufbuild/protoc-gen-es"], generator,
        "the pinned protoc-gen-es is the one that generated clients/ts/src/gen"
    );
}
