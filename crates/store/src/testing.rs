//! Test support: a SecantusDB server (MongoDB wire protocol; by default a single-node replica set,
//! so transactions work) as a child process on a free loopback port. Enabled with the `testing`
//! feature.
//!
//! The server runs under a small watchdog shell that holds the read end of a pipe from this
//! process and kills the server when the pipe closes: when the [`MongoServer`] is dropped (even on
//! a failed test), and also when the test process ends without running destructors (a server
//! kept in a `static`, a SIGKILL). No server outlives its tests, and its data directory goes
//! with it.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the server binary is installed (what `scripts/test` runs).
const INSTALL: &str = "python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt \
    (scripts/test does this), or point SECANTUSD at a secantusd-py";

/// `sh -c` script: `$1` the server binary, `$2` the port, the rest extra server flags.
const WATCHDOG: &str = r#"
program=$1; port=$2; shift 2
dir=$(mktemp -d) || exit 1
TMPDIR=$dir "$program" --host 127.0.0.1 --port "$port" --storage-path :memory: \
    --log-level WARNING "$@" </dev/null >/dev/null &
server=$!
# A background job's stdin is /dev/null unless redirected explicitly: hand it our pipe as fd 3.
exec 3<&0
{ read -r _; kill -9 "$server"; } <&3 2>/dev/null &
watcher=$!
exec 3<&-
wait "$server" 2>/dev/null
status=$?
kill "$watcher" 2>/dev/null
rm -rf "$dir"
exit "$status"
"#;

/// A SecantusDB server; stopped when dropped.
pub struct MongoServer {
    watchdog: Child,
    /// Its port.
    pub port: u16,
}

impl MongoServer {
    /// Starts one (a single-node replica set) on a free port.
    pub fn start() -> MongoServer {
        Self::start_with(&[])
    }

    /// Starts one that presents itself as a standalone server (no replica set, so no
    /// transactions), like a bare `mongod`.
    pub fn start_standalone() -> MongoServer {
        Self::start_with(&["--standalone"])
    }

    fn start_with(flags: &[&str]) -> MongoServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let program = std::env::var_os("SECANTUSD").unwrap_or_else(|| {
            OsString::from(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/secantusd-py"),
            )
        });
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "secantusd-watchdog"])
            .arg(&program)
            .arg(port.to_string())
            .args(flags)
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh to start SecantusDB");
        // From here on, dropping `server` (also by a panic below) stops the process.
        let mut server = MongoServer { watchdog, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.watchdog.try_wait() {
                panic!(
                    "SecantusDB ({}) exited with {status} before accepting connections; install it with: {INSTALL}",
                    Path::new(&program).display()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "SecantusDB ({}) did not accept connections on port {port} within 30 s; install it with: {INSTALL}",
                Path::new(&program).display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Its connection string (a direct connection: the one node is the whole deployment).
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Stops it now.
    pub fn kill(&mut self) {
        // End of input tells the watchdog to kill the server; it exits once the server is gone.
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A store that fails on purpose: wraps a real store and refuses chosen commits (`commit` or
/// `commit_all` calls) with [`StoreError::Backend`](crate::StoreError::Backend), as a crashed or
/// unreachable database would — nothing of that commit is written. For failure-injection tests
/// of sagas and crash-restart tests of batch runs; everything else goes to the inner store
/// unchanged.
pub struct FaultyStore {
    inner: std::sync::Arc<dyn crate::Store>,
    /// Kinds (with how many more commits to fail) whose commits fail.
    armed: std::sync::Mutex<Vec<(String, u32)>>,
    /// (kind, at least, how many more): batches with that many commits of the kind are refused
    /// with a conflict, as if another writer had moved one of them.
    batches_refused: std::sync::Mutex<Option<(String, usize, u32)>>,
    /// Commits seen so far, and the number of the one that fails (0: none).
    commits: std::sync::atomic::AtomicU64,
    fail_at: std::sync::atomic::AtomicU64,
    /// `commit` and `commit_all` calls the inner store refused with a conflict (lost races).
    conflicts: std::sync::atomic::AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`; nothing fails until armed.
    pub fn new(inner: std::sync::Arc<dyn crate::Store>) -> Self {
        FaultyStore {
            inner,
            armed: std::sync::Mutex::new(Vec::new()),
            batches_refused: std::sync::Mutex::new(None),
            commits: std::sync::atomic::AtomicU64::new(0),
            fail_at: std::sync::atomic::AtomicU64::new(0),
            conflicts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many `commit` and `commit_all` calls the inner store refused with a version
    /// conflict so far: races the callers lost (injected refusals not counted).
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn count<T>(&self, outcome: Result<T, crate::StoreError>) -> Result<T, crate::StoreError> {
        if matches!(outcome, Err(crate::StoreError::Conflict { .. })) {
            self.conflicts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        outcome
    }

    /// The next `times` commits touching an aggregate of `kind` fail.
    pub fn fail_commits(&self, kind: &str, times: u32) {
        self.armed
            .lock()
            .expect("armed kinds")
            .push((kind.to_owned(), times));
    }

    /// The next `times` commits (one `commit_all`, or one job of a `commit_each`) with at least
    /// `at_least` commits of `kind` are refused with a version conflict — a lost race, nothing
    /// written.
    pub fn refuse_batches(&self, kind: &str, at_least: usize, times: u32) {
        *self.batches_refused.lock().expect("refused batches") =
            Some((kind.to_owned(), at_least, times));
    }

    /// The `n`th commit from now fails, whatever it touches (1 = the next): a crash at that
    /// point of a run.
    pub fn fail_in(&self, n: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.fail_at.store(self.commits.load(SeqCst) + n, SeqCst);
    }

    fn trip(&self, commits: &[crate::Commit]) -> Result<(), crate::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.commits.fetch_add(1, SeqCst) + 1 == self.fail_at.load(SeqCst) {
            return Err(crate::StoreError::Backend("injected crash".into()));
        }
        if let Some((kind, at_least, left)) = self
            .batches_refused
            .lock()
            .expect("refused batches")
            .as_mut()
            && *left > 0
            && commits
                .iter()
                .filter(|commit| &commit.key.kind == kind)
                .count()
                >= *at_least
        {
            *left -= 1;
            return Err(crate::StoreError::Conflict {
                key: format!("a batch of {kind}"),
                expected: 0,
                found: 0,
            });
        }
        let mut armed = self.armed.lock().expect("armed kinds");
        for (kind, left) in armed.iter_mut() {
            if *left > 0 && commits.iter().any(|commit| &commit.key.kind == kind) {
                *left -= 1;
                return Err(crate::StoreError::Backend(format!(
                    "injected failure committing {kind}"
                )));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::Store for FaultyStore {
    async fn load(
        &self,
        key: &crate::AggregateKey,
    ) -> Result<Option<crate::Versioned>, crate::StoreError> {
        self.inner.load(key).await
    }

    async fn commit(&self, commit: crate::Commit) -> Result<u64, crate::StoreError> {
        self.trip(std::slice::from_ref(&commit))?;
        self.count(self.inner.commit(commit).await)
    }

    async fn commit_all(&self, commits: Vec<crate::Commit>) -> Result<Vec<u64>, crate::StoreError> {
        self.trip(&commits)?;
        self.count(self.inner.commit_all(commits).await)
    }

    /// The jobs before the first one that trips go to the inner store as one `commit_each`;
    /// that one fails and the rest are not tried (a crash at that point).
    async fn commit_each(
        &self,
        jobs: Vec<Vec<crate::Commit>>,
    ) -> Vec<Result<Vec<u64>, crate::StoreError>> {
        let tripped = jobs
            .iter()
            .enumerate()
            .find_map(|(at, job)| self.trip(job).err().map(|error| (at, error)));
        let Some((at, error)) = tripped else {
            return self.inner.commit_each(jobs).await;
        };
        let mut jobs = jobs;
        let rest = jobs.split_off(at);
        let mut outcomes = self.inner.commit_each(jobs).await;
        outcomes.push(Err(error));
        outcomes.extend(
            rest.iter()
                .skip(1)
                .map(|job| Err(crate::port::not_tried(job))),
        );
        outcomes
    }

    async fn find(
        &self,
        tenant: &str,
        kind: &str,
        index: &crate::IndexEntry,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, crate::Versioned)>, crate::StoreError> {
        self.inner.find(tenant, kind, index, after_id, limit).await
    }

    async fn pending_events(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::PendingEvent>, crate::StoreError> {
        self.inner.pending_events(limit).await
    }

    async fn mark_delivered(
        &self,
        events: &[crate::PendingEvent],
    ) -> Result<(), crate::StoreError> {
        self.inner.mark_delivered(events).await
    }

    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<crate::IdempotencyRecord>, crate::StoreError> {
        self.inner.idempotency_record(tenant, method, key).await
    }

    async fn save_idempotency_record(
        &self,
        record: crate::IdempotencyRecord,
    ) -> Result<(), crate::StoreError> {
        self.inner.save_idempotency_record(record).await
    }

    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, crate::StoreError> {
        self.inner.purge_expired_idempotency(now).await
    }
}
