//! The README's run command: the binary starts on a bare machine, serves all three areas' services
//! on one port, answers honestly for RPCs not built yet, and stops cleanly on SIGTERM.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    addr: String,
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
            "--shutdown-grace-seconds",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start commerce");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).expect("banner");
    // Keep draining stdout so the server never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = first_line
        .trim()
        .strip_prefix("commerce: listening on http://")
        .unwrap_or_else(|| panic!("unexpected banner {first_line:?}"))
        .to_owned();
    Running { child, addr }
}

/// A Connect JSON call over a plain HTTP/1.1 connection; returns (status, body).
fn connect_json(addr: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
fn serves_every_area_and_answers_unimplemented_until_built() {
    let server = start();
    for service in [
        "commerce.checkout.v1.OrderService",
        "commerce.subscriptions.v1.SubscriptionService",
        "commerce.loyalty.v1.MemberService",
    ] {
        let (status, body) = connect_json(
            &server.addr,
            "/grpc.health.v1.Health/Check",
            &format!(r#"{{"service":"{service}"}}"#),
        );
        assert_eq!(
            (status, body),
            (200, serde_json::json!({"status": "SERVING"})),
            "{service}"
        );
    }
    let (status, body) = connect_json(
        &server.addr,
        "/commerce.loyalty.v1.MemberService/GetBalance",
        r#"{"memberId":"m1"}"#,
    );
    assert_eq!(status, 501);
    assert_eq!(body["code"], "unimplemented");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = start();
    let (status, _) = connect_json(&server.addr, "/grpc.health.v1.Health/Check", "{}");
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
    let mut stderr = String::new();
    server
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(stderr.contains("commerce: stopped"), "{stderr}");
}
