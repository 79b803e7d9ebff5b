//! The MongoDB engine (the official `mongodb` driver on tokio). The layout makes an ordinary commit
//! a single-document write, MongoDB's one atomic unit that needs no transaction:
//!
//! - `aggregates`: one document per aggregate — `_id` `"{tenant}\u{1f}{kind}\u{1f}{id}"`, `tenant_id`,
//!   `kind`, `id`, `version`, `data`, its secondary keys (`index`, `[{n, v}]`) and its undelivered
//!   events (`outbox`, `[{seq, event_id, event_type, envelope}]`, with `pending: true` while it is
//!   non-empty). A commit is one `insert_one` (create) or one `update_one` compare-and-set on
//!   `version`, so state, index and events change together or not at all.
//! - `idempotency`: one document per (tenant, method, key), with `expires_at` (unix seconds) and
//!   the same instant as a date in `expires`, which a TTL index purges.
//!
//! A commit that carries an idempotency record changes two documents, and `commit_all` with more
//! than one commit changes several, so they run in a multi-document transaction, and those need a
//! replica set or a sharded cluster: on a standalone server such commits fail with
//! [`StoreError::Backend`] (everything else works there). A single commit without a record never
//! uses a transaction.
//!
//! Undelivered events live inside their aggregate's document, which MongoDB caps at 16 MiB, so the
//! relay has to keep up; a stuck relay shows as a growing number of `pending` aggregates.
//!
//! Indexes, created at start-up: `tenant_kind_index_id` (`{tenant_id, kind, index.n, index.v, id}`)
//! serves [`Store::find`]; `pending` (partial on `pending: true`) serves the relay; `expires` (TTL)
//! on `idempotency`. The relay's index cannot lead with the tenant (it reads across tenants), nor
//! can the TTL index (MongoDB requires TTL indexes to have one field).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use mongodb::bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype};
use mongodb::error::{
    ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
};
use mongodb::options::{Acknowledgment, ClientOptions, Hint, IndexOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection, IndexModel};

use crate::port::{
    AggregateKey, Commit, IdempotencyRecord, IndexEntry, OutboxEvent, PendingEvent, Refused, Store,
    StoreError, Versioned, check_batch, not_tried, unix_now,
};
use crate::records;

/// Index names, fixed so that a changed definition fails loudly at start-up instead of piling up.
const FIND_INDEX: &str = "tenant_kind_index_id";
const PENDING_INDEX: &str = "pending";
const TTL_INDEX: &str = "expires";

/// Server error codes the adapter tells apart from failures.
const DUPLICATE_KEY: i32 = 11000;
const WRITE_CONFLICT: i32 = 112;
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// An event's outbox sequence is `version * EVENTS_PER_COMMIT + position in the commit`: it grows
/// with each commit without a counter to read first, and a 16 MiB document holds far fewer events.
const EVENTS_PER_COMMIT: u64 = 1 << 24;

/// How long a commit keeps retrying after transient failures (write conflicts between
/// transactions, a primary stepping down) before giving up with [`StoreError::Backend`].
const RETRY_FOR: Duration = Duration::from_secs(10);

const REPLICA_SET_REQUIRED: &str = "a commit with an idempotency record, or several commits at \
    once, need a multi-document transaction, which MongoDB offers only on a replica set or sharded \
    cluster; this server is standalone";

/// Options of the MongoDB engine. Other client settings (pool size, timeouts, TLS, credentials,
/// `wtimeoutMS`) come from the connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MongoOptions {
    /// Acknowledge a write once a majority of the replica set has it (`w: "majority"`, default),
    /// so an acknowledged commit survives a fail-over; `false` is `w: 1`, the primary alone.
    pub majority: bool,
    /// Acknowledge a write once it is in the on-disk journal (`j: true`, default on), as the
    /// embedded engine fsyncs before a commit returns.
    pub journal: bool,
    /// Let the driver retry a write once after a network error or a fail-over (default on). The
    /// server recognises the retry and applies the write once.
    pub retry_writes: bool,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            majority: true,
            journal: true,
            retry_writes: true,
        }
    }
}

/// The MongoDB store. A commit is one single-document write, except a commit with an idempotency
/// record or several commits at once: those are a multi-document transaction and need a replica
/// set or sharded cluster (on a standalone server they fail with [`StoreError::Backend`]). Clones share one client (and
/// its connection pool).
#[derive(Clone)]
pub struct MongoStore {
    client: Client,
    aggregates: Collection<Document>,
    idempotency: Collection<Document>,
    transactions: bool,
    ttl_index: bool,
}

/// Why a write did not happen: refused (nothing changed) or failed.
enum Failure {
    /// The aggregate is not at the expected version (or exists already).
    VersionMoved,
    /// A live idempotency record holds the key.
    KeyTaken(String),
    /// The driver or server failed.
    Driver(mongodb::error::Error),
    /// The request cannot be stored (a number out of range).
    Invalid(String),
}

/// How a `commit_all` is written.
enum Plan<'a> {
    /// One single-document statement.
    Single(&'a Commit),
    /// A multi-document transaction in this session.
    Transaction(Box<ClientSession>),
}

impl From<mongodb::error::Error> for Failure {
    fn from(error: mongodb::error::Error) -> Self {
        Failure::Driver(error)
    }
}

/// A driver error as a failure of the store: what went wrong, without the driver's dump of the
/// raw server reply.
fn backend(error: mongodb::error::Error) -> StoreError {
    StoreError::Backend(format!("MongoDB: {}", error.kind))
}

/// The server's error code, for write errors and command errors alike.
fn error_code(error: &mongodb::error::Error) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}

/// Whether the whole attempt may be repeated: another transaction holds the document, or the
/// server asks for it with its error label.
fn transient(error: &mongodb::error::Error) -> bool {
    error.contains_label(TRANSIENT_TRANSACTION_ERROR) || error_code(error) == Some(WRITE_CONFLICT)
}

/// Pauses between attempts of a transaction another one raced: jittered, growing from 4 ms to at
/// most 256 ms (a transaction holds its documents for a round trip or more). The attempts are
/// bounded by [`RETRY_FOR`], not by a count.
const TRANSACTION_PAUSES: crate::Retry = crate::Retry {
    attempts: u32::MAX,
    first_pause: Duration::from_millis(4),
    max_pause: Duration::from_millis(256),
};

/// BSON has signed 64-bit integers only.
fn to_i64(value: u64, what: &str) -> Result<i64, Failure> {
    i64::try_from(value).map_err(|_| Failure::Invalid(format!("{what} {value} is out of range")))
}

fn binary(bytes: &Bytes) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

/// Expiry as a BSON date, for the TTL index (saturating: a record set to expire beyond the year
/// 292 million never does).
fn expiry_date(unix_seconds: i64) -> DateTime {
    DateTime::from_millis(unix_seconds.saturating_mul(1000))
}

fn malformed(field: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("malformed stored document, field {field}: {error}"))
}

fn take_bytes(document: &mut Document, field: &str) -> Result<Bytes, StoreError> {
    match document.remove(field) {
        Some(Bson::Binary(binary)) => Ok(Bytes::from(binary.bytes)),
        other => Err(malformed(field, format!("{other:?} is not binary"))),
    }
}

fn get_u64(document: &Document, field: &str) -> Result<u64, StoreError> {
    let value = document
        .get_i64(field)
        .map_err(|error| malformed(field, error))?;
    u64::try_from(value).map_err(|error| malformed(field, error))
}

fn get_string(document: &Document, field: &str) -> Result<String, StoreError> {
    document
        .get_str(field)
        .map(str::to_owned)
        .map_err(|error| malformed(field, error))
}

fn versioned(document: &mut Document) -> Result<Versioned, StoreError> {
    Ok(Versioned {
        version: get_u64(document, "version")?,
        data: take_bytes(document, "data")?,
    })
}

impl MongoStore {
    /// Connects to `uri`, checks the server (`hello`) and creates the indexes in `database`.
    pub async fn connect(
        uri: &str,
        database: &str,
        options: MongoOptions,
    ) -> Result<MongoStore, StoreError> {
        let mut client_options = ClientOptions::parse(uri).await.map_err(backend)?;
        let write_timeout = client_options
            .write_concern
            .as_ref()
            .and_then(|concern| concern.w_timeout);
        let acknowledgment = if options.majority {
            Acknowledgment::Majority
        } else {
            Acknowledgment::Nodes(1)
        };
        client_options.write_concern = Some(
            WriteConcern::builder()
                .w(acknowledgment)
                .journal(options.journal)
                .w_timeout(write_timeout)
                .build(),
        );
        client_options.retry_writes = Some(options.retry_writes);
        let client = Client::with_options(client_options).map_err(backend)?;
        let database = client.database(database);

        // Transactions exist on replica-set members and mongos routers, never on a standalone.
        let hello = database
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(backend)?;
        let transactions = hello.contains_key("setName")
            || hello.get_str("msg").is_ok_and(|msg| msg == "isdbgrid");

        let aggregates = database.collection::<Document>("aggregates");
        let idempotency = database.collection::<Document>("idempotency");
        // Creating the indexes also creates the collections, which transactions cannot always do.
        aggregates
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "tenant_id": 1, "kind": 1, "index.n": 1, "index.v": 1, "id": 1 })
                    .options(IndexOptions::builder().name(FIND_INDEX.to_owned()).build())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "pending": 1 })
                    .options(
                        IndexOptions::builder()
                            .name(PENDING_INDEX.to_owned())
                            .partial_filter_expression(doc! { "pending": true })
                            .build(),
                    )
                    .build(),
            ])
            .await
            .map_err(backend)?;
        let ttl = idempotency
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "expires": 1 })
                    .options(
                        IndexOptions::builder()
                            .name(TTL_INDEX.to_owned())
                            .expire_after(Duration::ZERO)
                            .build(),
                    )
                    .build(),
            )
            .await;
        // A server without TTL indexes still works: expired records read as absent, and
        // `purge_expired_idempotency` removes them. A different index of that name, though, is a
        // configuration error to fix, not to work around.
        let ttl_index = match ttl {
            Ok(_) => true,
            Err(error)
                if matches!(error.kind.as_ref(), ErrorKind::Command(_))
                    && !matches!(
                        error_code(&error),
                        Some(INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT)
                    ) =>
            {
                false
            }
            Err(error) => return Err(backend(error)),
        };
        Ok(MongoStore {
            client,
            aggregates,
            idempotency,
            transactions,
            ttl_index,
        })
    }

    /// Whether the server runs multi-document transactions (a replica set or sharded cluster),
    /// which commits with an idempotency record need.
    pub fn supports_transactions(&self) -> bool {
        self.transactions
    }

    /// Whether the server purges expired idempotency records itself (a TTL index); otherwise only
    /// [`Store::purge_expired_idempotency`] does.
    pub fn purges_expired_records(&self) -> bool {
        self.ttl_index
    }

    /// Writes the aggregate, its index and its events: one document, one statement. Returns the
    /// new version.
    async fn write_aggregate(
        &self,
        commit: &Commit,
        session: Option<&mut ClientSession>,
    ) -> Result<u64, Failure> {
        let version = commit
            .expected_version
            .checked_add(1)
            .ok_or_else(|| Failure::Invalid("version is out of range".into()))?;
        let id = records::aggregate_key(&commit.key);
        let index: Vec<Bson> = commit
            .index
            .iter()
            .map(|entry| Bson::Document(doc! { "n": &entry.name, "v": &entry.value }))
            .collect();
        let first_sequence = version
            .checked_mul(EVENTS_PER_COMMIT)
            .filter(|_| (commit.events.len() as u64) < EVENTS_PER_COMMIT)
            .ok_or_else(|| Failure::Invalid(format!("version {version} is out of range")))?;
        let mut events = Vec::with_capacity(commit.events.len());
        for (event, sequence) in commit.events.iter().zip(first_sequence..) {
            events.push(Bson::Document(doc! {
                "seq": to_i64(sequence, "outbox sequence")?,
                "event_id": &event.event_id,
                "event_type": &event.event_type,
                "envelope": binary(&event.envelope),
            }));
        }
        let has_events = !events.is_empty();

        if commit.expected_version == 0 {
            let mut document = doc! {
                "_id": &id,
                "tenant_id": &commit.key.tenant,
                "kind": &commit.key.kind,
                "id": &commit.key.id,
                "version": 1_i64,
                "data": binary(&commit.data),
                "index": index,
                "outbox": events,
            };
            if has_events {
                document.insert("pending", true);
            }
            let mut insert = self.aggregates.insert_one(document);
            if let Some(session) = session {
                insert = insert.session(session);
            }
            return match insert.await {
                Ok(_) => Ok(1),
                Err(error) if error_code(&error) == Some(DUPLICATE_KEY) => {
                    Err(Failure::VersionMoved)
                }
                Err(error) => Err(error.into()),
            };
        }

        let mut set = doc! {
            "version": to_i64(version, "version")?,
            "data": binary(&commit.data),
            "index": index,
        };
        let mut update = Document::new();
        if has_events {
            set.insert("pending", true);
            update.insert("$push", doc! { "outbox": { "$each": events } });
        }
        update.insert("$set", set);
        let filter = doc! { "_id": &id, "version": to_i64(commit.expected_version, "version")? };
        let mut write = self.aggregates.update_one(filter, update);
        if let Some(session) = session {
            write = write.session(session);
        }
        if write.await?.matched_count == 0 {
            return Err(Failure::VersionMoved);
        }
        Ok(version)
    }

    /// Stores an idempotency record unless a live one holds its key. One statement for all three
    /// cases: the upsert replaces an expired record, inserts when there is none, and when a live
    /// one exists its filter matches nothing, so it tries to insert the same `_id` and the unique
    /// `_id` index refuses (a duplicate key aborts a transaction, but then the commit is refused).
    async fn write_idempotency(
        &self,
        record: &IdempotencyRecord,
        session: Option<&mut ClientSession>,
    ) -> Result<(), Failure> {
        let id = records::idempotency_key(&record.tenant, &record.method, &record.key);
        let expires_at = i64::try_from(record.expires_at).unwrap_or(i64::MAX);
        let document = doc! {
            "_id": &id,
            "tenant_id": &record.tenant,
            "method": &record.method,
            "key": &record.key,
            "request_digest": binary(&record.request_digest),
            "response": binary(&record.response),
            "expires_at": expires_at,
            "expires": expiry_date(expires_at),
        };
        let now = to_i64(unix_now(), "clock")?;
        let mut upsert = self
            .idempotency
            .replace_one(doc! { "_id": &id, "expires_at": { "$lte": now } }, document)
            .upsert(true);
        if let Some(session) = session {
            upsert = upsert.session(session);
        }
        match upsert.await {
            Ok(_) => Ok(()),
            Err(error) if error_code(&error) == Some(DUPLICATE_KEY) => {
                Err(Failure::KeyTaken(record.key.clone()))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// One attempt at the commits with their idempotency records, in a transaction. Any failure
    /// leaves the transaction aborted, so the session can start the next attempt.
    async fn write_in_transaction(
        &self,
        session: &mut ClientSession,
        commits: &[Commit],
    ) -> Result<Vec<u64>, Failure> {
        session.start_transaction().await?;
        // Each aggregate before its record, so that a stale version wins over a taken key, as in
        // the embedded engine.
        let written = async {
            let mut versions = Vec::with_capacity(commits.len());
            for commit in commits {
                versions.push(self.write_aggregate(commit, Some(&mut *session)).await?);
                if let Some(record) = &commit.idempotency {
                    self.write_idempotency(record, Some(&mut *session)).await?;
                }
            }
            Ok::<_, Failure>(versions)
        }
        .await;
        let versions = match written {
            Ok(versions) => versions,
            Err(failure) => {
                // Errors here change nothing: the server may have aborted it already.
                let _ = session.abort_transaction().await;
                return Err(failure);
            }
        };
        // An unknown commit result may be retried (the server commits once); a transient
        // failure means the whole transaction did not happen and the caller starts over.
        let started = Instant::now();
        loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(versions),
                Err(error)
                    if error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && !error.contains_label(TRANSIENT_TRANSACTION_ERROR)
                        && started.elapsed() < RETRY_FOR => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The conflict to report for a refused compare-and-set: the first of the commits whose
    /// aggregate is not at the expected version now, with the version stored. Versions only grow,
    /// so the commit that was refused still is; an earlier one found first is as true a conflict.
    async fn conflict(&self, commits: &[Commit]) -> StoreError {
        for commit in commits {
            match self.load(&commit.key).await {
                Ok(found) => {
                    let found = found.map_or(0, |stored| stored.version);
                    if found != commit.expected_version {
                        return StoreError::Conflict {
                            key: commit.key.to_string(),
                            expected: commit.expected_version,
                            found,
                        };
                    }
                }
                Err(error) => return error,
            }
        }
        StoreError::Backend("version conflict on an aggregate that has not moved".into())
    }
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            // Callers that can meet it report the version found instead (`MongoStore::conflict`).
            Failure::VersionMoved => StoreError::Backend("version conflict".into()),
            Failure::KeyTaken(key) => StoreError::IdempotencyKeyTaken(key),
            Failure::Driver(error) => backend(error),
            Failure::Invalid(message) => StoreError::Backend(message),
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn load(&self, key: &AggregateKey) -> Result<Option<Versioned>, StoreError> {
        let found = self
            .aggregates
            .find_one(doc! { "_id": records::aggregate_key(key) })
            .projection(doc! { "version": 1, "data": 1 })
            .await
            .map_err(backend)?;
        found
            .map(|mut document| versioned(&mut document))
            .transpose()
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let versions = self.commit_all(vec![commit]).await?;
        versions
            .first()
            .copied()
            .ok_or_else(|| StoreError::Backend("commit returned no version".into()))
    }

    async fn commit_all(&self, commits: Vec<Commit>) -> Result<Vec<u64>, StoreError> {
        check_batch(&commits)?;
        // One commit without a record is one document: no transaction needed.
        let mut plan = match commits.as_slice() {
            [] => return Ok(Vec::new()),
            [commit] if commit.idempotency.is_none() => Plan::Single(commit),
            _ if !self.transactions => {
                return Err(StoreError::Backend(REPLICA_SET_REQUIRED.into()));
            }
            _ => Plan::Transaction(Box::new(
                self.client.start_session().await.map_err(backend)?,
            )),
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let outcome = match &mut plan {
                Plan::Single(commit) => self
                    .write_aggregate(commit, None)
                    .await
                    .map(|version| vec![version]),
                Plan::Transaction(session) => self.write_in_transaction(session, &commits).await,
            };
            match outcome {
                Ok(versions) => return Ok(versions),
                // A racing writer held the document: try again; the retry sees its commit and
                // reports the conflict, or succeeds if it was abandoned.
                Err(Failure::Driver(error))
                    if transient(&error) && started.elapsed() < RETRY_FOR =>
                {
                    attempt += 1;
                    TRANSACTION_PAUSES.pause(attempt).await;
                }
                Err(Failure::VersionMoved) => return Err(self.conflict(&commits).await),
                Err(failure) => return Err(failure.into()),
            }
        }
    }

    /// One transaction for the whole batch (a transaction's writes see each other, so a job may
    /// expect the version an earlier one writes): one commit round trip instead of one per job.
    /// When any job is refused (or the batch spans tenants), nothing of the batch is kept and
    /// the jobs go again one by one, each in a transaction of its own, so each gets its own
    /// outcome — except a job that changes an aggregate of a refused one: it is refused without
    /// being tried, since other processes commit between these transactions and one of them may
    /// have reached the very version the job counts on (two replicas' ledger writers, each
    /// chaining entries on its own head, broke the chain that way).
    async fn commit_each(&self, jobs: Vec<Vec<Commit>>) -> Vec<Result<Vec<u64>, StoreError>> {
        let one_tenant = jobs.iter().flatten().all(|commit| {
            jobs[0]
                .first()
                .is_some_and(|first| first.key.tenant == commit.key.tenant)
        });
        if self.transactions
            && jobs.len() > 1
            && one_tenant
            && jobs
                .iter()
                .all(|job| !job.is_empty() && check_batch(job).is_ok())
        {
            let all: Vec<Commit> = jobs.iter().flatten().cloned().collect();
            if let Ok(mut session) = self.client.start_session().await
                && let Ok(versions) = self.write_in_transaction(&mut session, &all).await
            {
                let mut versions = versions.into_iter();
                return jobs
                    .iter()
                    .map(|job| Ok(versions.by_ref().take(job.len()).collect()))
                    .collect();
            }
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut refused = Refused::default();
        for job in jobs {
            let keys = Refused::keys(&job);
            if refused.taints(&job) {
                outcomes.push(Err(not_tried(&job)));
                refused.add(keys);
                continue;
            }
            let outcome = self.commit_all(job).await;
            if outcome.is_err() {
                refused.add(keys);
            }
            outcomes.push(outcome);
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
        // MongoDB reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {
            "tenant_id": tenant,
            "kind": kind,
            "index": { "$elemMatch": { "n": &index.name, "v": &index.value } },
        };
        if let Some(after) = after_id {
            filter.insert("id", doc! { "$gt": after });
        }
        let mut cursor = self
            .aggregates
            .find(filter)
            .sort(doc! { "id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .projection(doc! { "id": 1, "version": 1, "data": 1 })
            // Named, for planners that do not match `$elemMatch` to the index on their own
            // (SecantusDB scans the collection without it); mongod would pick it anyway.
            .hint(Hint::Name(FIND_INDEX.to_owned()))
            .await
            .map_err(backend)?;
        let mut found = Vec::new();
        while cursor.advance().await.map_err(backend)? {
            let mut document = cursor.deserialize_current().map_err(backend)?;
            let id = get_string(&document, "id")?;
            found.push((id, versioned(&mut document)?));
        }
        Ok(found)
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Each pending aggregate has at least one event, so `limit` documents are enough.
        let mut cursor = self
            .aggregates
            .find(doc! { "pending": true })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .projection(doc! { "tenant_id": 1, "kind": 1, "id": 1, "outbox": 1 })
            .await
            .map_err(backend)?;
        let mut events = Vec::new();
        while events.len() < limit && cursor.advance().await.map_err(backend)? {
            let mut document = cursor.deserialize_current().map_err(backend)?;
            let aggregate = AggregateKey::new(
                get_string(&document, "tenant_id")?,
                get_string(&document, "kind")?,
                get_string(&document, "id")?,
            );
            let Some(Bson::Array(outbox)) = document.remove("outbox") else {
                return Err(malformed("outbox", "not an array"));
            };
            // `$push` appends, so the array is in commit order: its head is the oldest.
            for entry in outbox.into_iter().take(limit - events.len()) {
                let Bson::Document(mut entry) = entry else {
                    return Err(malformed("outbox", "entry is not a document"));
                };
                events.push(PendingEvent {
                    sequence: get_u64(&entry, "seq")?,
                    aggregate: aggregate.clone(),
                    event: OutboxEvent {
                        event_id: get_string(&entry, "event_id")?,
                        event_type: get_string(&entry, "event_type")?,
                        envelope: take_bytes(&mut entry, "envelope")?,
                    },
                });
            }
        }
        Ok(events)
    }

    async fn mark_delivered(&self, events: &[PendingEvent]) -> Result<(), StoreError> {
        let mut delivered: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for pending in events {
            delivered
                .entry(records::aggregate_key(&pending.aggregate))
                .or_default()
                .push(&pending.event.event_id);
        }
        for (id, event_ids) in delivered {
            self.aggregates
                .update_one(
                    doc! { "_id": &id },
                    doc! { "$pull": { "outbox": { "event_id": { "$in": event_ids } } } },
                )
                .await
                .map_err(backend)?;
            // Only an empty outbox clears the flag: a commit between the two statements pushed
            // events (and set the flag), and they must stay visible to the relay.
            self.aggregates
                .update_one(
                    doc! { "_id": &id, "outbox": { "$size": 0 } },
                    doc! { "$unset": { "pending": "" } },
                )
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let found = self
            .idempotency
            .find_one(doc! { "_id": records::idempotency_key(tenant, method, key) })
            .await
            .map_err(backend)?;
        let Some(mut document) = found else {
            return Ok(None);
        };
        // The TTL monitor runs about once a minute: an expired record may still be there.
        let expires_at = get_u64(&document, "expires_at")?;
        if expires_at <= unix_now() {
            return Ok(None);
        }
        Ok(Some(IdempotencyRecord {
            tenant: tenant.to_owned(),
            method: method.to_owned(),
            key: key.to_owned(),
            request_digest: take_bytes(&mut document, "request_digest")?,
            response: take_bytes(&mut document, "response")?,
            expires_at,
        }))
    }

    async fn save_idempotency_record(&self, record: IdempotencyRecord) -> Result<(), StoreError> {
        self.write_idempotency(&record, None)
            .await
            .map_err(StoreError::from)
    }

    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        // By `expires`, which holds the same instant as `expires_at`, so the TTL index serves it.
        let purged = self
            .idempotency
            .delete_many(doc! { "expires": { "$lte": expiry_date(now) } })
            .await
            .map_err(backend)?;
        Ok(purged.deleted_count)
    }
}
