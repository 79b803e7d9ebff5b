//! Starting the `commerce` binary for tests, and minting tokens it accepts.
#![allow(dead_code)]

pub mod client;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SECRET: &str = "serve-test-secret";

pub struct Running {
    pub child: Child,
    /// The embedded store's directory (removed when dropped).
    pub data_dir: tempfile::TempDir,
    pub addr: String,
    pub stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Everything the process wrote to stderr, once it has exited and the pipe is closed.
    pub fn stderr_after_exit(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start() -> Running {
    start_in(tempfile::tempdir().expect("data dir"), &[])
}

/// Starts `commerce serve` with its store in `data_dir` and `extra` arguments.
pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> Running {
    start_with(
        Command::new(env!("CARGO_BIN_EXE_commerce")),
        data_dir,
        extra,
    )
}

/// Starts `commerce serve` allowed at most `limit` open file descriptors (RLIMIT_NOFILE).
pub fn start_with_file_limit(limit: u32, extra: &[&str]) -> Running {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_commerce"));
    start_with(shell, tempfile::tempdir().expect("data dir"), extra)
}

/// Runs `command` (the binary, or something that execs it) with `serve` and the test defaults.
fn start_with(mut command: Command, data_dir: tempfile::TempDir, extra: &[&str]) -> Running {
    let mut child = command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args([
            "--shutdown-grace-seconds",
            "2",
            "--shutdown-delay-seconds",
            "0",
        ])
        .args(extra) // last, so they override the defaults above
        .env("COMMERCE_JWT_HS256_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start commerce");
    // Collect stderr (configuration, JSON logs) as it comes, so the pipe never fills.
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr");
    let sink = stderr.clone();
    let stderr_reader = std::thread::spawn(move || {
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
        data_dir,
        addr,
        stderr,
        stderr_reader: Some(stderr_reader),
    }
}

/// A token for tenant `demo` from `commerce token`, signed with the server's secret.
pub fn dev_token(scopes: Option<&str>) -> String {
    tenant_token("demo", scopes)
}

/// A token for `tenant` with every contract scope.
pub fn token_for(tenant: &str) -> String {
    tenant_token(tenant, None)
}

/// A token for `tenant` with `scopes` (default: every contract scope).
pub fn tenant_token(tenant: &str, scopes: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_commerce"));
    command
        .args(["token", "--tenant", tenant])
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

/// A Connect JSON call over a plain HTTP/1.1 connection, with a bearer `token` and extra
/// `headers`; returns the HTTP status and the JSON body.
pub fn connect_json(
    addr: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut extra: String = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    for (name, value) in headers {
        extra.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
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

/// The HTTP status of a Connect JSON call without credentials, or `None` when the connection
/// fails or closes without an answer.
pub fn connect_json_result(addr: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.get(9..12)?.parse().ok()
}
