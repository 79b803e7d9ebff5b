//! The README's quick start, run as written: the `bash` block of its "Quick start" section is
//! extracted and executed from the repository root, with `target/release/commerce` replaced by
//! the binary under test and the server moved to free ports through the environment the block's
//! commands read (`COMMERCE_LISTEN`, `COMMERCE_URL`, …). A wrong line in the README fails here.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The body of the first fenced block tagged `lang` inside the README section `heading`.
fn fenced_block(readme: &str, heading: &str, lang: &str) -> Option<String> {
    let section = readme.split(heading).nth(1)?;
    let section = section.split("\n## ").next()?;
    let opening = format!("```{lang}\n");
    let body = section.split(&opening).nth(1)?;
    Some(body.split("\n```").next()?.to_owned())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let block = fenced_block(&readme, "## Quick start", "bash")
        .expect("the README's Quick start has a ```bash block");
    assert!(
        block.contains("target/release/commerce serve") && block.contains("commerce demo"),
        "the quick start starts the server and seeds the demo:\n{block}"
    );
    let script = block.replace("target/release/commerce", env!("CARGO_BIN_EXE_commerce"));
    let port = free_port();
    let data_dir = tempfile::tempdir().expect("data dir");
    // A failing line stops the script; the trap stops the server however the script ends.
    let wrapped = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}\nwait\n");
    let output = Command::new("timeout")
        .args(["180", "bash", "-euo", "pipefail", "-c", &wrapped])
        .current_dir(repo())
        .env("COMMERCE_LISTEN", format!("127.0.0.1:{port}"))
        .env("COMMERCE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("COMMERCE_URL", format!("http://127.0.0.1:{port}"))
        .env("COMMERCE_DATA_DIR", data_dir.path())
        .env("COMMERCE_LOG", "warn")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quick start failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // Each call answered what the README says it does.
    assert!(stdout.contains("SERVING"), "health:\n{stdout}");
    assert!(
        stdout.contains("\"Coffee\""),
        "the menu shows the seeded item:\n{stdout}"
    );
    assert!(
        stdout.contains("\"orderId\"") && stdout.contains("ORDER_STATUS_"),
        "PlaceOrder placed an order:\n{stdout}"
    );
    assert!(
        stdout.contains("\"balance\""),
        "GetBalance answered:\n{stdout}"
    );
}

#[test]
fn demo_run_twice_answers_with_the_same_objects() {
    let port = free_port();
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("COMMERCE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    let demo = || {
        let output = Command::new(env!("CARGO_BIN_EXE_commerce"))
            .args(["demo", "--server", &format!("http://127.0.0.1:{port}")])
            .output()
            .expect("demo runs");
        assert!(
            output.status.success(),
            "demo failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let ids = |script: &str| -> Vec<String> {
        script
            .lines()
            .filter(|line| {
                ["LOCATION_ID", "ITEM_ID", "MEMBER_ID", "PLAN_ID", "CART_ID"]
                    .iter()
                    .any(|name| line.starts_with(&format!("export {name}=")))
            })
            .map(str::to_owned)
            .collect()
    };
    let first = demo();
    let second = demo();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(ids(&first).len(), 5, "every id is exported:\n{first}");
    assert!(
        ids(&first).iter().all(|line| !line.ends_with('=')),
        "no id is empty:\n{first}"
    );
    assert_eq!(ids(&first), ids(&second), "a second run made new objects");
    assert!(
        first.contains("MemberService/GetBalance") && first.contains("tok_ok"),
        "the next calls are printed with real ids:\n{first}"
    );
}
