//! The persistence port: what services need from storage, independent of the engine.

use async_trait::async_trait;
use bytes::Bytes;

/// One aggregate instance, always scoped by tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    /// Tenant owning the aggregate.
    pub tenant: String,
    /// Aggregate type, e.g. `order`, `member`.
    pub kind: String,
    /// Id, unique within tenant and kind.
    pub id: String,
}

impl AggregateKey {
    /// A key.
    pub fn new(tenant: impl Into<String>, kind: impl Into<String>, id: impl Into<String>) -> Self {
        AggregateKey {
            tenant: tenant.into(),
            kind: kind.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for AggregateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.kind, self.id)
    }
}

/// A stored aggregate state and its version (1 after creation, +1 per commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Version of this state.
    pub version: u64,
    /// The encoded aggregate (the service's own protobuf).
    pub data: Bytes,
}

/// A secondary key the aggregate can be found by (e.g. `customer_id` = `c-42`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Index name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// An event emitted by a commit, kept in the outbox until delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Unique event id (consumers deduplicate by it).
    pub event_id: String,
    /// Fully-qualified protobuf name of the event.
    pub event_type: String,
    /// The encoded `commerce.common.v1.EventEnvelope`.
    pub envelope: Bytes,
}

/// An outbox event waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Position in the outbox, increasing in commit order for each aggregate (engines may also
    /// order across aggregates, but relays must not rely on it).
    pub sequence: u64,
    /// Aggregate that emitted it.
    pub aggregate: AggregateKey,
    /// The event.
    pub event: OutboxEvent,
}

/// The stored outcome of an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Tenant of the request.
    pub tenant: String,
    /// Fully-qualified method.
    pub method: String,
    /// The caller's `Idempotency-Key`.
    pub key: String,
    /// Digest of the request, to tell a retry from a reuse of the key.
    pub request_digest: Bytes,
    /// The encoded response (success or error) to replay.
    pub response: Bytes,
    /// Unix seconds after which the record is treated as absent and may be purged.
    pub expires_at: u64,
}

impl IdempotencyRecord {
    /// Whether the record has expired at unix second `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }
}

/// Unix seconds now, the clock idempotency retention is measured by.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// One atomic change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The aggregate changed.
    pub key: AggregateKey,
    /// Version the change was computed from; 0 creates the aggregate (it must not exist).
    pub expected_version: u64,
    /// The new state.
    pub data: Bytes,
    /// The aggregate's secondary keys after the change (they replace the previous ones).
    pub index: Vec<IndexEntry>,
    /// Events the change emits.
    pub events: Vec<OutboxEvent>,
    /// The idempotency record of the request that made the change, if keyed.
    pub idempotency: Option<IdempotencyRecord>,
}

/// Why a storage call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The aggregate is not at the expected version: someone else changed it first.
    #[error("version conflict on {key}: expected {expected}, found {found}")]
    Conflict {
        /// The aggregate.
        key: String,
        /// Version the caller expected.
        expected: u64,
        /// Version stored (0 when it does not exist).
        found: u64,
    },
    /// An idempotency record with this key exists already.
    #[error("idempotency key {0} is already recorded")]
    IdempotencyKeyTaken(String),
    /// The engine failed; the commit did not happen and may be retried.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// The persistence port services use.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The aggregate's current state, if it exists.
    async fn load(&self, key: &AggregateKey) -> Result<Option<Versioned>, StoreError>;

    /// Applies `commit` atomically; returns the new version.
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError>;

    /// Applies every commit atomically — all or nothing — each with its own version
    /// compare-and-set, index, events and idempotency record; returns the new versions in order.
    /// When any commit is refused, none happens and that commit's error is returned. An empty
    /// list changes nothing.
    ///
    /// All commits must be for one tenant and each aggregate may appear once, otherwise the call
    /// fails with [`StoreError::Backend`] before touching anything. A transaction never spans
    /// tenants: the tenant leads every key, so it is the natural shard key, and a transaction
    /// inside one tenant stays on one shard instead of becoming a distributed one; it also keeps
    /// one tenant's writes from ever waiting on another's. On MongoDB more than one commit needs
    /// a multi-document transaction (a replica set or sharded cluster).
    async fn commit_all(&self, commits: Vec<Commit>) -> Result<Vec<u64>, StoreError>;

    /// Applies `jobs` in order, each as one [`Store::commit_all`] would (atomically, with its own
    /// checks), and returns each job's outcome. Jobs may be chained: a later job may expect a
    /// version an earlier one writes. So once a job is refused, every later job that changes an
    /// aggregate it changes is refused too, with a conflict, without being tried: its expected
    /// version may count on the refused write, and the same version number reached meanwhile by
    /// another writer (another replica appending to the same ledger chain, say) must not pass
    /// for it. Jobs that share no aggregate with a refused one are applied as usual. Engines that
    /// queue their commits (the embedded store) hand the whole list to one group commit — one
    /// fsync for all; the default commits them one after another and refuses every job after
    /// the first refused one without trying it.
    async fn commit_each(&self, jobs: Vec<Vec<Commit>>) -> Vec<Result<Vec<u64>, StoreError>> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut refused = false;
        for job in jobs {
            if refused {
                outcomes.push(Err(not_tried(&job)));
                continue;
            }
            let outcome = self.commit_all(job).await;
            refused = outcome.is_err();
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Aggregates of `kind` whose index `name` has `value`, by id, after `after_id`, at most `limit`.
    async fn find(
        &self,
        tenant: &str,
        kind: &str,
        index: &IndexEntry,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Undelivered outbox events, at most `limit`; each aggregate's events in commit order.
    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvent>, StoreError>;

    /// Removes delivered events from the outbox (events already removed are ignored).
    async fn mark_delivered(&self, events: &[PendingEvent]) -> Result<(), StoreError>;

    /// The live (unexpired) idempotency record of (`tenant`, `method`, `key`), if any.
    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Stores an idempotency record on its own, for a request that changed no aggregate (an
    /// error response, say). [`StoreError::IdempotencyKeyTaken`] when a live one exists.
    async fn save_idempotency_record(&self, record: IdempotencyRecord) -> Result<(), StoreError>;

    /// Drops idempotency records expired at unix second `now`; returns how many.
    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, StoreError>;
}

/// The aggregates a [`Store::commit_each`] must not change any more: those of the jobs refused
/// so far (see its contract).
#[derive(Default)]
pub(crate) struct Refused(std::collections::HashSet<AggregateKey>);

impl Refused {
    /// Whether `job` changes an aggregate of a refused job; it is then refused too.
    pub(crate) fn taints(&self, job: &[Commit]) -> bool {
        job.iter().any(|commit| self.0.contains(&commit.key))
    }

    /// Records the aggregates of a refused job.
    pub(crate) fn add(&mut self, keys: impl IntoIterator<Item = AggregateKey>) {
        self.0.extend(keys);
    }

    /// The aggregates `job` changes, for [`Refused::add`] once it is known to be refused.
    pub(crate) fn keys(job: &[Commit]) -> Vec<AggregateKey> {
        job.iter().map(|commit| commit.key.clone()).collect()
    }
}

/// The answer for a job of [`Store::commit_each`] not tried because an earlier one was refused.
pub(crate) fn not_tried(job: &[Commit]) -> StoreError {
    StoreError::Conflict {
        key: job
            .first()
            .map(|commit| commit.key.to_string())
            .unwrap_or_default(),
        expected: 0,
        found: 0,
    }
}

/// The checks [`Store::commit_all`] makes before anything is written, the same on every engine:
/// one tenant, each aggregate at most once (a second change of the same aggregate would be checked
/// against a version the first is about to replace).
pub(crate) fn check_batch(commits: &[Commit]) -> Result<(), StoreError> {
    let Some(first) = commits.first() else {
        return Ok(());
    };
    if let Some(other) = commits.iter().find(|c| c.key.tenant != first.key.tenant) {
        return Err(StoreError::Backend(format!(
            "commit_all takes the commits of one tenant (a transaction never spans tenants), \
             got {} and {}",
            first.key.tenant, other.key.tenant
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = commits.iter().find(|c| !seen.insert(&c.key)) {
        return Err(StoreError::Backend(format!(
            "commit_all changes each aggregate at most once, got {} twice",
            twice.key
        )));
    }
    Ok(())
}
