//! The README's run command: the binary starts on a bare machine, serves all three areas' services
//! on one port behind the interceptor stack, answers every area's RPCs, logs one JSON line per
//! call, and stops cleanly on SIGTERM.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{dev_token, start};

#[test]
fn serves_every_area_behind_auth() {
    let server = start();
    for service in [
        "commerce.checkout.v1.OrderService",
        "commerce.subscriptions.v1.SubscriptionService",
        "commerce.loyalty.v1.MemberService",
    ] {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let (status, body) = common::connect_json(
            &server.addr,
            "/grpc.health.v1.Health/Check",
            &request,
            None,
            &[],
        );
        assert_eq!(
            (status, body),
            (200, serde_json::json!({"status": "SERVING"})),
            "{service}"
        );
    }
    let path = "/commerce.loyalty.v1.MemberService/GetBalance";
    let (status, body) =
        common::connect_json(&server.addr, path, r#"{"memberId":"m1"}"#, None, &[]);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "no token"
    );

    let (status, body) = common::connect_json(
        &server.addr,
        path,
        r#"{"memberId":"m1"}"#,
        Some(&dev_token(None)),
        &[],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "authorized call reaches the loyalty service, which knows no member m1"
    );
    let (status, body) = common::connect_json(
        &server.addr,
        "/commerce.subscriptions.v1.PlanService/GetPlan",
        r#"{"planId":"p-1"}"#,
        Some(&dev_token(None)),
        &[],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "the subscriptions service answers: it knows no plan p-1"
    );

    let narrow = dev_token(Some("checkout.orders.read"));
    let (status, body) = common::connect_json(
        &server.addr,
        path,
        r#"{"memberId":"m1"}"#,
        Some(&narrow),
        &[],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("permission_denied")),
        "scope from the contract"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly_and_calls_are_logged_as_json() {
    let mut server = start();
    let (status, _) = common::connect_json(
        &server.addr,
        "/grpc.health.v1.Health/Check",
        "{}",
        None,
        &[],
    );
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
    let stderr = server.stderr_after_exit();
    assert!(stderr.contains("commerce: stopped"), "{stderr}");
    let rpc_line = stderr
        .lines()
        .find(|line| line.contains("rpc finished"))
        .unwrap_or_else(|| panic!("no rpc log in {stderr}"));
    let log: serde_json::Value = serde_json::from_str(rpc_line).expect("JSON log line");
    assert_eq!(log["fields"]["method"], "grpc.health.v1.Health/Check");
    assert_eq!(log["fields"]["code"], "ok");
    assert_eq!(
        log["fields"]["request_id"].as_str().map(str::len),
        Some(36),
        "the generated request id is logged"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn starts_with_redis_down_serves_on_fallbacks_and_reports_degraded_health() {
    let (closed, admin) = (free_port(), free_port());
    let redis_url = format!("redis://127.0.0.1:{closed}/");
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut server = common::start_in(
        tempfile::tempdir().unwrap(),
        &["--redis-url", &redis_url, "--admin-listen", &admin_addr],
    );
    // The rate limiter falls back to its local bucket: the call reaches the handler, which
    // knows no plan p-1.
    let token = dev_token(None);
    let (status, _) = common::connect_json(
        &server.addr,
        "/commerce.subscriptions.v1.PlanService/GetPlan",
        r#"{"planId":"p-1"}"#,
        Some(&token),
        &[],
    );
    assert_eq!(status, 404);
    let mut health = TcpStream::connect(&admin_addr).unwrap();
    write!(
        health,
        "GET /healthz HTTP/1.1\r\nHost: {admin_addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    health.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("degraded"), "{response}");
    let _ = server.child.kill();
    let _ = server.child.wait();
    assert!(
        server.stderr_after_exit().contains("Redis unreachable"),
        "the operator is told"
    );
}
