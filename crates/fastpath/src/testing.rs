//! Test support: a real `redis-server` child process on a free loopback port, or a three-node
//! Redis Cluster of them, stopped when dropped (even when the test fails). Enabled with the
//! `testing` feature.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process; killed when dropped.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// Starts one on `port` (e.g. to restart after `kill`).
    pub fn start_on(port: u16) -> RedisServer {
        Self::start_on_with(port, &[])
    }

    /// Starts one on a free port with `extra` settings (`--appendonly yes`, …), which override
    /// the defaults (no snapshots, no append-only file).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on_with(port, extra)
    }

    fn start_on_with(port: u16, extra: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        // Built before waiting, so a server that never answers is still killed.
        let server = RedisServer { child, port };
        wait_for_port(port);
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes it (SIGSTOP): connections stay open and new ones are even accepted by the kernel,
    /// but nothing is answered — a hung Redis rather than a dead one.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (up to 10 s) until something accepts connections on `port`.
fn wait_for_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis Cluster of three masters (no replicas), each a `redis-server` child process on a free
/// port; all killed, and their cluster state files removed, when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// The nodes' ports.
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three nodes, joins them into a cluster (`redis-cli --cluster create`), and waits
    /// until every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let ports = cluster_ports(3);
        let dir = std::env::temp_dir().join(format!(
            "fastpath-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for the cluster");
        // Built before anything can fail, so a panic below still stops what was started.
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: ports.clone(),
            dir,
        };
        for &port in &ports {
            let config_file = cluster.dir.join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&config_file)
                .arg("--dir")
                .arg(&cluster.dir)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (scripts/test installs it)");
            cluster.nodes.push(child);
        }
        for &port in &ports {
            wait_for_port(port);
        }

        let create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH (it comes with redis-server)");
        assert!(
            create.status.success(),
            "redis-cli --cluster create failed: {}",
            output_text(&create)
        );

        // Slot assignments spread through the cluster bus; until every node has them all, a
        // client may be refused (CLUSTERDOWN) or sent to a node that does not know its slot.
        let started = Instant::now();
        for &port in &ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli on PATH");
                if output_text(&info).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the node on port {port} did not reach cluster_state:ok within 20 s: {}",
                    output_text(&info)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Its URL (`redis+cluster://` with every node as a seed; see [`crate::connect`]).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("{}{}", crate::connection::CLUSTER_SCHEME, seeds.join(","))
    }

    /// The single-node URL of each node, to look inside one (e.g. at the keys it holds).
    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `count` distinct free ports whose cluster bus port (port + 10000, Redis's fixed offset) is
/// free too. The listeners are held until all are chosen, so no port is picked twice.
fn cluster_ports(count: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let started = Instant::now();
    while held.len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no free port pairs for a Redis Cluster"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let Some(bus_port) = port.checked_add(10_000) else {
            continue;
        };
        if let Ok(bus) = TcpListener::bind(("127.0.0.1", bus_port)) {
            held.push((port, listener, bus));
        }
    }
    held.into_iter().map(|(port, _, _)| port).collect()
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
