//! The README's run command: the binary starts on a bare machine, serves all three areas' services
//! on one port behind the interceptor stack, answers honestly for RPCs not built yet, logs one JSON
//! line per call, and stops cleanly on SIGTERM.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "serve-test-secret";

struct Running {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--shutdown-grace-seconds", "2"])
        .env("COMMERCE_JWT_HS256_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start commerce");
    // Collect stderr (configuration, JSON logs) as it comes, so the pipe never fills.
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read) = pipe.read(&mut buffer) {
            if read == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).expect("banner");
    // Keep draining stdout so the server never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let Some(addr) = first_line
        .trim()
        .strip_prefix("commerce: listening on http://")
        .map(str::to_owned)
    else {
        std::thread::sleep(Duration::from_millis(200));
        panic!(
            "unexpected banner {first_line:?}; stderr: {}",
            stderr.lock().unwrap()
        );
    };
    Running {
        child,
        addr,
        stderr,
    }
}

/// A token from `commerce token`, signed with the server's secret.
fn dev_token(scopes: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_commerce"));
    command
        .args(["token", "--tenant", "demo"])
        .env("COMMERCE_JWT_HS256_SECRET", SECRET);
    if let Some(scopes) = scopes {
        command.args(["--scopes", scopes]);
    }
    let output = command.output().expect("commerce token");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A Connect JSON call over a plain HTTP/1.1 connection; returns (status, body).
fn connect_json(
    addr: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response[9..12].parse().expect("status");
    let json = response.split("\r\n\r\n").nth(1).expect("body");
    (
        status,
        serde_json::from_str(json).unwrap_or_else(|err| panic!("{err}: {response}")),
    )
}

#[test]
fn serves_every_area_behind_auth_and_answers_unimplemented_until_built() {
    let server = start();
    for service in [
        "commerce.checkout.v1.OrderService",
        "commerce.subscriptions.v1.SubscriptionService",
        "commerce.loyalty.v1.MemberService",
    ] {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let (status, body) =
            connect_json(&server.addr, "/grpc.health.v1.Health/Check", &request, None);
        assert_eq!(
            (status, body),
            (200, serde_json::json!({"status": "SERVING"})),
            "{service}"
        );
    }
    let path = "/commerce.loyalty.v1.MemberService/GetBalance";
    let (status, body) = connect_json(&server.addr, path, r#"{"memberId":"m1"}"#, None);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "no token"
    );

    let (status, body) = connect_json(
        &server.addr,
        path,
        r#"{"memberId":"m1"}"#,
        Some(&dev_token(None)),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (501, Some("unimplemented")),
        "authorized call reaches the stub"
    );

    let narrow = dev_token(Some("checkout.orders.read"));
    let (status, body) = connect_json(&server.addr, path, r#"{"memberId":"m1"}"#, Some(&narrow));
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("permission_denied")),
        "scope from the contract"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly_and_calls_are_logged_as_json() {
    let mut server = start();
    let (status, _) = connect_json(&server.addr, "/grpc.health.v1.Health/Check", "{}", None);
    assert_eq!(status, 200);
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    std::thread::sleep(Duration::from_millis(100)); // let the reader thread take the last lines
    let stderr = server.stderr.lock().unwrap().clone();
    assert!(stderr.contains("commerce: stopped"), "{stderr}");
    let rpc_line = stderr
        .lines()
        .find(|line| line.contains("rpc finished"))
        .unwrap_or_else(|| panic!("no rpc log in {stderr}"));
    let log: serde_json::Value = serde_json::from_str(rpc_line).expect("JSON log line");
    assert_eq!(log["fields"]["method"], "grpc.health.v1.Health/Check");
    assert_eq!(log["fields"]["code"], "ok");
}
