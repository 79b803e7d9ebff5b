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

#[test]
fn starts_with_redis_down_serves_on_fallbacks_and_reports_degraded_health() {
    let (closed, admin) = (common::free_port(), common::free_port());
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

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf")
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    Duration::from_millis(ticks * 1000 / per_second)
}

fn get_healthz(admin: &str) -> Option<String> {
    let mut stream = TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn running_out_of_file_descriptors_neither_spins_the_cpu_nor_stops_either_port() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    // A descriptor table of 64 and no connection caps: the table fills before any cap is reached.
    let server = common::start_with_file_limit(
        64,
        &[
            "--admin-listen",
            &admin,
            "--max-connections",
            "0",
            "--max-connections-per-address",
            "0",
            "--header-read-timeout-seconds",
            "60",
        ],
    );
    let pid = server.child.id();
    // More connections than descriptors: the rest wait in the listen queues of both ports.
    let failing = |listener: &str| {
        server.stderr.lock().unwrap().lines().any(|line| {
            line.contains("accepting connections failed")
                && line.contains(&format!(r#""listener":"{listener}""#))
        })
    };
    let wait_until_failing = |listener: &str| {
        let started = Instant::now();
        while !failing(listener) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "accept never failed on the {listener} port: {}",
                server.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut held: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&server.addr).expect("connect api"))
        .collect();
    wait_until_failing("api");
    held.extend((0..5).map(|_| TcpStream::connect(&admin).expect("connect admin")));
    wait_until_failing("admin");

    // With the table full, accepting fails at once every time: it must pause, not spin.
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(500),
        "the server burned {used:?} of CPU in 2 s with its descriptor table full"
    );

    // Descriptors free up: both ports answer again.
    drop(held);
    let started = Instant::now();
    loop {
        let health =
            common::connect_json_result(&server.addr, "/grpc.health.v1.Health/Check", "{}");
        let admin_health = get_healthz(&admin);
        if health == Some(200)
            && admin_health
                .as_deref()
                .is_some_and(|reply| reply.contains("200 OK"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not answering again: api {health:?}, admin {admin_health:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let warnings = server
        .stderr
        .lock()
        .unwrap()
        .matches("accepting connections failed")
        .count();
    assert!(
        warnings <= 4,
        "logged once per burst, not per attempt: {warnings}"
    );
}
