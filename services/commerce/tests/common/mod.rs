//! Starting the `commerce` binary for tests, and minting tokens it accepts.
#![allow(dead_code)]

pub mod client;
pub mod otlp;
pub mod shop;
pub mod split;

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

impl Running {
    /// Waits (at most `within`) for the process to exit — killed, stopped, or aborted at a
    /// failpoint — and hands back its data directory, to start it again on the same files.
    pub fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, tempfile::TempDir) {
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < within,
                "the server did not exit within {within:?}; stderr: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("dir"));
        (status, dir)
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

/// Runs a `commerce` subcommand (operator tools) with the test secret.
/// A port free on 127.0.0.1 at the time of asking (for a process the test starts with it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args(args)
        .env("COMMERCE_JWT_HS256_SECRET", SECRET)
        .output()
        .expect("run commerce")
}

pub fn start() -> Running {
    start_in(tempfile::tempdir().expect("data dir"), &[])
}

/// Starts `commerce serve` with its store in `data_dir` and `extra` arguments.
pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> Running {
    start_with(data_dir, extra, &[])
}

/// Starts `commerce serve` with its store in `data_dir`, `extra` arguments and `env` variables
/// (e.g. `COMMERCE_FAILPOINTS`).
pub fn start_with(data_dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Running {
    let args = serve_args(&data_dir, extra);
    spawn(data_dir, &args, env)
}

/// Starts `commerce serve` allowed at most `limit` open file descriptors (RLIMIT_NOFILE).
pub fn start_with_file_limit(limit: u32, extra: &[&str]) -> Running {
    let data_dir = tempfile::tempdir().expect("data dir");
    let args = serve_args(&data_dir, extra);
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_commerce"));
    spawn_command(shell, data_dir, &args, &[])
}

/// `serve` with the test defaults, then `extra` (last, so they override the defaults).
fn serve_args(data_dir: &tempfile::TempDir, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["serve".into(), "--data-dir".into()];
    args.push(data_dir.path().to_str().expect("utf-8 path").to_owned());
    args.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-grace-seconds",
            "2",
            "--shutdown-delay-seconds",
            "0",
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

/// Runs `commerce <args>` (a server that prints `… listening on http://ADDR` first) with the test
/// secret and `env`, its files in `data_dir`.
pub fn spawn(data_dir: tempfile::TempDir, args: &[String], env: &[(&str, &str)]) -> Running {
    spawn_command(
        Command::new(env!("CARGO_BIN_EXE_commerce")),
        data_dir,
        args,
        env,
    )
}

/// Runs `command` (the binary, or something that execs it) with `args`, as [`spawn`] does.
fn spawn_command(
    mut command: Command,
    data_dir: tempfile::TempDir,
    args: &[String],
    env: &[(&str, &str)],
) -> Running {
    let mut child = command
        .args(args)
        .env("COMMERCE_JWT_HS256_SECRET", SECRET)
        .envs(env.iter().copied())
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
        .split_once("listening on http://")
        .map(|(_, addr)| addr.to_owned())
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

/// A customer token (claim `customer_id`) for `customer` of `tenant` with `scopes`, signed with
/// the test secret by `commerce token --customer`.
pub fn customer_token(tenant: &str, customer: &str, scopes: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args(["token", "--tenant", tenant, "--scopes", scopes])
        .args([
            "--subject",
            &format!("customer:{customer}"),
            "--customer",
            customer,
        ])
        .env("COMMERCE_JWT_HS256_SECRET", SECRET)
        .output()
        .expect("commerce token");
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

/// A copy of a stopped server's data directory, to start the next server on the files it left.
pub fn copy_of(data_dir: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("data dir");
    for file in std::fs::read_dir(data_dir).expect("data dir") {
        let file = file.expect("file");
        std::fs::copy(file.path(), copy.path().join(file.file_name())).expect("copy");
    }
    copy
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
