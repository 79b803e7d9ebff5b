//! The embedded engine: redb, one file, durable commits (fsync before a commit returns), crash-safe
//! (copy-on-write B-trees: a torn write is never visible after reopening).
//!
//! All writes go through one writer thread — aggregate commits and the bookkeeping writes too
//! (outbox deliveries, idempotency records of their own, purges), so every fsync the store makes
//! is the writer's. With group commit on, the writer takes every job waiting in its queue (up to
//! `max_batch`) into one transaction, so concurrent writers share one fsync; each job (one
//! `commit`, the commits of one `commit_all`, one job of a `commit_each`, one bookkeeping write)
//! is still checked on its own (version compare-and-set, idempotency key) and fails alone. Jobs
//! are applied in the order they were queued, which is what lets `commit_each` chain them. Reads
//! run on tokio's blocking pool against snapshots and never wait for writes.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use prost::Message as _;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, Table, TableDefinition};
use tokio::sync::oneshot;

use crate::port::{
    AggregateKey, Commit, IdempotencyRecord, IndexEntry, PendingEvent, Refused, Store, StoreError,
    Versioned, check_batch, not_tried, unix_now,
};
use crate::records::{
    self, AggregateHead, AggregateRecord, IdempotencyRow, IndexRecord, OutboxRecord,
};

const AGGREGATES: TableDefinition<&str, &[u8]> = TableDefinition::new("aggregates");
const INDEX: TableDefinition<&str, ()> = TableDefinition::new("index");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQUENCE: &str = "outbox_next_sequence";

/// Options of the embedded engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Share one fsync among the commits waiting together (default on).
    pub group_commit: bool,
    /// Most commits in one group.
    pub max_batch: usize,
    /// Bytes of pages the engine keeps in memory (redb's cache; 1 GiB by default, redb's own
    /// default). Pages outside it are read from the file on every access — from the OS's page
    /// cache at best, copied each time — so a store whose hot pages outgrow it slows down with
    /// its size: size it to the working set (see docs/operations.md).
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            group_commit: true,
            max_batch: 256,
            cache_bytes: 1 << 30,
        }
    }
}

/// One unit of the writer's work, applied together or not at all.
struct Job {
    work: Work,
    /// The job's outcome, and how many jobs shared its transaction.
    done: oneshot::Sender<(Result<Vec<u64>, StoreError>, usize)>,
}

/// Locks `mutex`; a poisoned one only means a thread panicked holding it, and what it guards
/// (a set of keys) is consistent after every single change.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a job writes.
enum Work {
    /// The commits of one `commit` or `commit_all` call.
    Commits(Vec<Commit>),
    /// One job of a `commit_each`, with the aggregates its refused jobs changed so far (shared by
    /// the call's jobs, which may land in two groups): a job changing one of them is refused
    /// without being tried (see the port's contract).
    Chained(Vec<Commit>, Arc<Mutex<Refused>>),
    /// A bookkeeping write (delivered events, an idempotency record of its own, a purge) that
    /// checks before it writes, like a commit; its number is the job's one "version".
    Bookkeeping(Bookkeeping),
}

/// A bookkeeping write, run once inside the group's transaction.
type Bookkeeping = Box<dyn FnOnce(&mut Tables<'_>) -> Result<u64, StoreError> + Send>;

/// The store's tables in one write transaction, opened once per group commit (opening a table
/// costs allocations and a lookup; a group has hundreds of commits, each touching four tables).
struct Tables<'txn> {
    aggregates: Table<'txn, &'static str, &'static [u8]>,
    index: Table<'txn, &'static str, ()>,
    outbox: Table<'txn, u64, &'static [u8]>,
    idempotency: Table<'txn, &'static str, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    /// The outbox's next sequence, read at the group's first event and written back once by
    /// [`Tables::finish`] (a meta-table write per commit rewrote that table's pages every time).
    next_sequence: Option<u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            aggregates: txn.open_table(AGGREGATES).map_err(backend)?,
            index: txn.open_table(INDEX).map_err(backend)?,
            outbox: txn.open_table(OUTBOX).map_err(backend)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(backend)?,
            meta: txn.open_table(META).map_err(backend)?,
            next_sequence: None,
        })
    }

    /// The next outbox sequence, then one past it.
    fn take_sequence(&mut self) -> Result<u64, StoreError> {
        let next = match self.next_sequence {
            Some(next) => next,
            None => self
                .meta
                .get(NEXT_SEQUENCE)
                .map_err(backend)?
                .map_or(1, |value| value.value()),
        };
        self.next_sequence = Some(next + 1);
        Ok(next)
    }

    /// Writes back what the group kept in memory; called before the transaction commits.
    fn finish(mut self) -> Result<(), StoreError> {
        if let Some(next) = self.next_sequence {
            self.meta.insert(NEXT_SEQUENCE, next).map_err(backend)?;
        }
        Ok(())
    }
}

/// The embedded store. Clones share one database and writer; dropping the last clone stops the
/// writer (after the commits already queued) and closes the file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: Arc<Writer>,
}

/// The writer thread and the queue into it.
struct Writer {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    /// Queues `jobs` back to back (no other caller's job between them), each with its receiver.
    fn send(&self, jobs: Vec<Work>) -> Vec<Outcome> {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        jobs.into_iter()
            .map(|work| {
                let (done, outcome) = oneshot::channel();
                match queue.as_ref().map(|queue| queue.send(Job { work, done })) {
                    Some(Ok(())) => Outcome::Queued(outcome),
                    _ => Outcome::Failed(backend("store writer stopped")),
                }
            })
            .collect()
    }
}

/// A queued job's future outcome.
enum Outcome {
    Queued(oneshot::Receiver<(Result<Vec<u64>, StoreError>, usize)>),
    Failed(StoreError),
}

impl Outcome {
    async fn wait(self) -> Result<Vec<u64>, StoreError> {
        match self {
            Outcome::Queued(outcome) => {
                let (result, group) = outcome.await.map_err(|_| backend("store writer stopped"))?;
                // How many jobs shared the transaction (a traced store span declares it).
                tracing::Span::current().record("db.group_commit.size", group);
                result
            }
            Outcome::Failed(error) => Err(error),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has drained it.
        drop(
            self.queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = thread.join();
        }
    }
}

/// The outcome of the one job queued.
fn single(outcomes: Vec<Outcome>) -> Outcome {
    outcomes
        .into_iter()
        .next()
        .unwrap_or_else(|| Outcome::Failed(backend("store writer lost a job")))
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(backend)?;
        Self::start(db, options)
    }

    /// A store in memory: same engine and semantics, nothing durable — for tests and for servers
    /// that were given no store of their own.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(backend)?;
        Self::start(db, EmbeddedOptions::default())
    }

    fn start(db: Database, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let db = Arc::new(db);
        // Create every table once so readers never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(AGGREGATES).map_err(backend)?;
        txn.open_table(INDEX).map_err(backend)?;
        txn.open_table(OUTBOX).map_err(backend)?;
        txn.open_table(IDEMPOTENCY).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.commit().map_err(backend)?;

        let (writer, jobs) = mpsc::channel::<Job>();
        let batch = if options.group_commit {
            options.max_batch.max(1)
        } else {
            1
        };
        let write_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&write_db, &jobs, batch))
            .map_err(backend)?;
        let writer = Writer {
            queue: Mutex::new(Some(writer)),
            thread: Mutex::new(Some(thread)),
        };
        Ok(EmbeddedStore {
            db,
            writer: Arc::new(writer),
        })
    }

    /// A scan (index walks, the outbox) on tokio's blocking pool: it may touch many pages.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(backend)?
    }

    /// A point read (one key) on the caller's thread: a lookup in redb's page cache takes
    /// microseconds, while handing it to the blocking pool and back costs two thread wake-ups
    /// (≈ 20% of the CPU of a `PlaceOrder` at 64 clients, by profile). A page not cached yet
    /// costs one disk read on this thread. Each read spends a unit of tokio's cooperative
    /// budget: a read never waits, so a task looping over reads (a cache falling back to the
    /// store while Redis is down, say) would otherwise never yield and could starve the tasks
    /// queued behind it on its worker.
    async fn read_point<T>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        tokio::task::coop::consume_budget().await;
        read(&self.db)
    }
}

/// The writer thread: one transaction per group of waiting commits, one fsync per group.
fn write_loop(db: &Database, jobs: &mpsc::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = db.begin_write().map_err(backend).and_then(|txn| {
            let mut tables = Tables::open(&txn)?;
            let results: Vec<Result<Vec<u64>, StoreError>> = batch
                .iter_mut()
                .map(|job| match &mut job.work {
                    Work::Commits(commits) => apply(&mut tables, commits),
                    Work::Chained(commits, refused) => {
                        let mut refused = lock(refused);
                        let outcome = if refused.taints(commits) {
                            Err(not_tried(commits))
                        } else {
                            apply(&mut tables, commits)
                        };
                        if outcome.is_err() {
                            refused.add(Refused::keys(commits));
                        }
                        outcome
                    }
                    Work::Bookkeeping(write) => {
                        let write = std::mem::replace(write, Box::new(|_| Ok(0)));
                        write(&mut tables).map(|count| vec![count])
                    }
                })
                .collect();
            // A refused job (conflict, key taken) wrote nothing; an engine failure may have
            // written part of one, so then the whole group is abandoned (the transaction aborts on drop).
            if let Some(Err(failure)) = results
                .iter()
                .find(|result| matches!(result, Err(StoreError::Backend(_))))
            {
                return Err(failure.clone());
            }
            tables.finish()?;
            txn.commit().map_err(backend)?;
            Ok(results)
        });
        let group = batch.len();
        match outcome {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.done.send((result, group));
                }
            }
            // The transaction did not commit: nothing of the group happened; each may retry
            // (and a chained job in the next group must not count on one of these).
            Err(error) => {
                for job in batch {
                    if let Work::Chained(commits, refused) = &job.work {
                        lock(refused).add(Refused::keys(commits));
                    }
                    let _ = job.done.send((Err(error.clone()), group));
                }
            }
        }
    }
}

/// Applies one job's commits inside the group's transaction, or changes nothing and says why.
/// Every check of every commit happens before the first write, so a refused job leaves no trace
/// while the other jobs of its group still commit. (`check_batch` has already made sure that no
/// aggregate appears twice, so each check sees the state the job's write replaces.)
fn apply(tables: &mut Tables<'_>, commits: &[Commit]) -> Result<Vec<u64>, StoreError> {
    let mut previous = Vec::with_capacity(commits.len());
    let mut keys = std::collections::HashSet::new();
    for commit in commits {
        previous.push(check_version(tables, commit)?);
        if let Some(record) = &commit.idempotency {
            let id = records::idempotency_key(&record.tenant, &record.method, &record.key);
            // A key used twice in one job is taken by its first use.
            if !keys.insert(id) {
                return Err(StoreError::IdempotencyKeyTaken(record.key.clone()));
            }
            check_idempotency(tables, record)?;
        }
    }
    commits
        .iter()
        .zip(previous)
        .map(|(commit, previous)| write(tables, commit, previous))
        .collect()
}

/// The stored record of the commit's aggregate, if it is at the version the commit expects.
fn check_version(
    tables: &Tables<'_>,
    commit: &Commit,
) -> Result<Option<AggregateHead>, StoreError> {
    let key = records::aggregate_key(&commit.key);
    let previous = match tables.aggregates.get(key.as_str()).map_err(backend)? {
        Some(bytes) => Some(AggregateHead::decode(bytes.value()).map_err(backend)?),
        None => None,
    };
    let found = previous.as_ref().map_or(0, |record| record.version);
    if found != commit.expected_version {
        return Err(StoreError::Conflict {
            key: commit.key.to_string(),
            expected: commit.expected_version,
            found,
        });
    }
    Ok(previous)
}

/// Writes a checked commit: state, index, events, idempotency record. Fails only when the engine
/// does.
fn write(
    tables: &mut Tables<'_>,
    commit: &Commit,
    previous: Option<AggregateHead>,
) -> Result<u64, StoreError> {
    if let Some(record) = &commit.idempotency {
        put_idempotency(tables, record)?;
    }
    let key = records::aggregate_key(&commit.key);
    let version = previous.as_ref().map_or(0, |record| record.version) + 1;
    let record = AggregateRecord {
        version,
        data: commit.data.clone(),
        index: commit.index.iter().map(IndexRecord::from).collect(),
    };
    tables
        .aggregates
        .insert(key.as_str(), record.encode_to_vec().as_slice())
        .map_err(backend)?;

    // Only the entries that changed are touched: an aggregate rewritten at each step of its
    // life (an order, a placement, an invoice) mostly keeps its secondary keys, and every
    // removal or insertion rewrites B-tree pages.
    let old_index = previous
        .as_ref()
        .map_or(&[][..], |record| &record.index[..]);
    for old in old_index {
        if commit
            .index
            .iter()
            .any(|kept| kept.name == old.name && kept.value == old.value)
        {
            continue;
        }
        let entry = IndexEntry::from(old);
        tables
            .index
            .remove(
                records::index_key(&commit.key.tenant, &commit.key.kind, &entry, &commit.key.id)
                    .as_str(),
            )
            .map_err(backend)?;
    }
    for entry in &commit.index {
        if old_index
            .iter()
            .any(|old| old.name == entry.name && old.value == entry.value)
        {
            continue;
        }
        tables
            .index
            .insert(
                records::index_key(&commit.key.tenant, &commit.key.kind, entry, &commit.key.id)
                    .as_str(),
                (),
            )
            .map_err(backend)?;
    }

    for event in &commit.events {
        let sequence = tables.take_sequence()?;
        tables
            .outbox
            .insert(
                sequence,
                OutboxRecord::new(&commit.key, event)
                    .encode_to_vec()
                    .as_slice(),
            )
            .map_err(backend)?;
    }
    Ok(version)
}

/// Refuses the record when a live one holds its key (an expired one may be replaced).
fn check_idempotency(tables: &Tables<'_>, record: &IdempotencyRecord) -> Result<(), StoreError> {
    let id = records::idempotency_key(&record.tenant, &record.method, &record.key);
    if let Some(existing) = tables.idempotency.get(id.as_str()).map_err(backend)? {
        let existing = IdempotencyRow::decode(existing.value()).map_err(backend)?;
        if existing.expires_at > unix_now() {
            return Err(StoreError::IdempotencyKeyTaken(record.key.clone()));
        }
    }
    Ok(())
}

/// Writes a checked idempotency record.
fn put_idempotency(tables: &mut Tables<'_>, record: &IdempotencyRecord) -> Result<(), StoreError> {
    let id = records::idempotency_key(&record.tenant, &record.method, &record.key);
    tables
        .idempotency
        .insert(
            id.as_str(),
            IdempotencyRow::new(record).encode_to_vec().as_slice(),
        )
        .map_err(backend)?;
    Ok(())
}

/// Idempotency records one purge job reads at most.
const PURGE_SLICE: usize = 4_096;

/// The keys of the expired records among the next [`PURGE_SLICE`] after `after`, and the last
/// key read when the table goes on (`None` at its end).
fn expired_slice(
    tables: &Tables<'_>,
    after: Option<&str>,
    now: u64,
) -> Result<(Vec<String>, Option<String>), StoreError> {
    use std::ops::Bound;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut expired = Vec::new();
    let mut last = None;
    let mut read = 0;
    for row in tables
        .idempotency
        .range::<&str>((start, Bound::Unbounded))
        .map_err(backend)?
    {
        let (key, value) = row.map_err(backend)?;
        read += 1;
        let key = key.value().to_owned();
        if IdempotencyRow::decode(value.value()).is_ok_and(|row| row.expires_at <= now) {
            expired.push(key.clone());
        }
        if read == PURGE_SLICE {
            last = Some(key);
            break;
        }
    }
    Ok((expired, last))
}

impl EmbeddedStore {
    /// Runs a bookkeeping `write` (outbox deliveries, idempotency records of their own, purges)
    /// through the writer, in the group commit of whatever is queued with it.
    async fn write(
        &self,
        write: impl FnOnce(&mut Tables<'_>) -> Result<u64, StoreError> + Send + 'static,
    ) -> Result<u64, StoreError> {
        let outcome = self.writer.send(vec![Work::Bookkeeping(Box::new(write))]);
        let versions = single(outcome).wait().await?;
        versions
            .first()
            .copied()
            .ok_or_else(|| backend("store writer returned nothing"))
    }

    /// Verifies the file's checksums and structure (redb's integrity check); `Ok(true)` when it
    /// is intact, `Ok(false)` when it was repaired. Needs the only handle on the file.
    pub fn check(path: impl AsRef<Path>) -> Result<bool, StoreError> {
        let mut db = Database::open(path).map_err(backend)?;
        db.check_integrity().map_err(backend)
    }

    /// Compacts the file, returning freed pages to the file system. Needs the only handle on it.
    pub fn compact(path: impl AsRef<Path>) -> Result<bool, StoreError> {
        let mut db = Database::open(path).map_err(backend)?;
        db.compact().map_err(backend)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn load(&self, key: &AggregateKey) -> Result<Option<Versioned>, StoreError> {
        let key = records::aggregate_key(key);
        self.read_point(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(AGGREGATES).map_err(backend)?;
            let Some(bytes) = table.get(key.as_str()).map_err(backend)? else {
                return Ok(None);
            };
            let record = AggregateRecord::decode(bytes.value()).map_err(backend)?;
            Ok(Some(Versioned {
                version: record.version,
                data: record.data,
            }))
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let versions = self.commit_all(vec![commit]).await?;
        versions
            .first()
            .copied()
            .ok_or_else(|| backend("store writer returned no version"))
    }

    async fn commit_all(&self, commits: Vec<Commit>) -> Result<Vec<u64>, StoreError> {
        check_batch(&commits)?;
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        single(self.writer.send(vec![Work::Commits(commits)]))
            .wait()
            .await
    }

    async fn commit_each(&self, jobs: Vec<Vec<Commit>>) -> Vec<Result<Vec<u64>, StoreError>> {
        // Checked jobs go to the writer back to back, so they share its next transaction (and
        // one fsync) and are applied in order; a job refused here never reaches it.
        let mut checked = Vec::with_capacity(jobs.len());
        let mut refusals = Vec::with_capacity(jobs.len());
        let refused = Arc::new(Mutex::new(Refused::default()));
        for job in jobs {
            match check_batch(&job) {
                Ok(()) if job.is_empty() => refusals.push(Some(Ok(Vec::new()))),
                Ok(()) => {
                    refusals.push(None);
                    checked.push(Work::Chained(job, refused.clone()));
                }
                Err(error) => {
                    // Refused before the writer sees it: what counts on it is refused there.
                    lock(&refused).add(Refused::keys(&job));
                    refusals.push(Some(Err(error)));
                }
            }
        }
        let mut queued = self.writer.send(checked).into_iter();
        let mut outcomes = Vec::with_capacity(refusals.len());
        for refusal in refusals {
            outcomes.push(match refusal {
                Some(outcome) => outcome,
                None => match queued.next() {
                    Some(outcome) => outcome.wait().await,
                    None => Err(backend("store writer lost a job")),
                },
            });
        }
        outcomes
    }

    async fn find(
        &self,
        tenant: &str,
        kind: &str,
        index: &IndexEntry,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let prefix = records::index_prefix(tenant, kind, index);
        let start = match after_id {
            Some(after) => format!("{prefix}{after}\u{0}"),
            None => prefix.clone(),
        };
        let (tenant, kind) = (tenant.to_owned(), kind.to_owned());
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let index = txn.open_table(INDEX).map_err(backend)?;
            let aggregates = txn.open_table(AGGREGATES).map_err(backend)?;
            let mut found = Vec::new();
            for entry in index.range(start.as_str()..).map_err(backend)? {
                let (key, _) = entry.map_err(backend)?;
                let Some(id) = key.value().strip_prefix(prefix.as_str()).map(str::to_owned) else {
                    break;
                };
                let aggregate_key = records::aggregate_key(&AggregateKey::new(
                    tenant.clone(),
                    kind.clone(),
                    id.clone(),
                ));
                if let Some(bytes) = aggregates.get(aggregate_key.as_str()).map_err(backend)? {
                    let record = AggregateRecord::decode(bytes.value()).map_err(backend)?;
                    found.push((
                        id,
                        Versioned {
                            version: record.version,
                            data: record.data,
                        },
                    ));
                }
                if found.len() == limit {
                    break;
                }
            }
            Ok(found)
        })
        .await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvent>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let outbox = txn.open_table(OUTBOX).map_err(backend)?;
            let mut events = Vec::new();
            for entry in outbox.iter().map_err(backend)?.take(limit) {
                let (sequence, bytes) = entry.map_err(backend)?;
                let record = OutboxRecord::decode(bytes.value()).map_err(backend)?;
                events.push(PendingEvent {
                    sequence: sequence.value(),
                    aggregate: AggregateKey::new(record.tenant, record.kind, record.id),
                    event: crate::port::OutboxEvent {
                        event_id: record.event_id,
                        event_type: record.event_type,
                        envelope: record.envelope,
                    },
                });
            }
            Ok(events)
        })
        .await
    }

    async fn mark_delivered(&self, events: &[PendingEvent]) -> Result<(), StoreError> {
        let sequences: Vec<u64> = events.iter().map(|event| event.sequence).collect();
        self.write(move |tables| {
            for sequence in sequences {
                tables.outbox.remove(sequence).map_err(backend)?;
            }
            Ok(0)
        })
        .await
        .map(drop)
    }

    async fn save_idempotency_record(&self, record: IdempotencyRecord) -> Result<(), StoreError> {
        self.write(move |tables| {
            check_idempotency(tables, &record)?;
            put_idempotency(tables, &record).map(|()| 0)
        })
        .await
        .map(drop)
    }

    /// In slices of [`PURGE_SLICE`] records, each its own job of the writer: one job over
    /// every record held every commit queued behind it while it read the whole table —
    /// seconds, every five minutes and at each start, once a store holds millions of records.
    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut after: Option<String> = None;
        loop {
            let resume = Arc::new(Mutex::new(None::<String>));
            let (from, next) = (after.take(), resume.clone());
            removed += self
                .write(move |tables| {
                    let (expired, last) = expired_slice(tables, from.as_deref(), now)?;
                    for key in &expired {
                        tables.idempotency.remove(key.as_str()).map_err(backend)?;
                    }
                    *next.lock().expect("purge cursor") = last;
                    Ok(expired.len() as u64)
                })
                .await?;
            match resume.lock().expect("purge cursor").take() {
                Some(last) => after = Some(last),
                None => return Ok(removed),
            }
        }
    }

    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let id = records::idempotency_key(tenant, method, key);
        let (tenant, method, key) = (tenant.to_owned(), method.to_owned(), key.to_owned());
        self.read_point(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(IDEMPOTENCY).map_err(backend)?;
            let Some(bytes) = table.get(id.as_str()).map_err(backend)? else {
                return Ok(None);
            };
            let row = IdempotencyRow::decode(bytes.value()).map_err(backend)?;
            if row.expires_at <= unix_now() {
                return Ok(None);
            }
            Ok(Some(IdempotencyRecord {
                tenant,
                method,
                key,
                request_digest: row.request_digest,
                response: row.response,
                expires_at: row.expires_at,
            }))
        })
        .await
    }
}
