//! The ledger on the store port: every entry is one `commit_all` of the entry (created, so its id
//! is unique), each account it changes and the tenant's chain head (compare-and-set, so entries
//! are numbered and chained in one order), plus the hold's state when it creates or resolves one.
//!
//! Appends batch. Every entry of a tenant moves the tenant's one chain head, so appends cannot
//! race each other for it; instead they queue per (store, tenant), and one task — the chain's
//! writer — takes everything waiting, computes the entries one after another on top of each
//! other in memory (chain positions, hashes, account balances and floors, hold states), and hands
//! them to the store as one [`Store::commit_each`]: on the embedded store, one group commit and
//! one fsync for the whole batch, as TigerBeetle batches transfers. Each entry stays its own
//! atomic commit (with the caller's own commits) and fails alone; the entries computed on top of
//! a refused one are computed again in the next round.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use store::{Commit, IdempotencyRecord, IndexEntry, Retry, Store, StoreError, retry_on_conflict};

use crate::error::LedgerError;
use crate::model::{
    self, Account, Balances, Entry, EntryKind, Hold, HoldStatus, NewEntry, Posting,
};
use crate::records::{
    self, ACCOUNT, AccountRecord, ENTRY, EntryRecord, HEAD, HEAD_ID, HOLD, HeadRecord, HoldRecord,
    SEQUENCE_BLOCK,
};

/// How often a write is recomputed after losing a race before it gives up with the conflict.
/// Every entry of a tenant moves its chain head, so writers of one tenant take turns.
/// How an append retries when a concurrent writer moved the chain head, an account or the hold:
/// 100 attempts (appends to one tenant's chain queue behind each other), pauses up to 25.6 ms.
const CHAIN_RETRY: Retry = Retry {
    attempts: 100,
    ..Retry::CONTENDED
};

/// Page size of index walks.
const PAGE: usize = 256;

/// A double-entry ledger over a [`Store`]. Cheap to clone; every call names its tenant.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) store: Arc<dyn Store>,
}

/// Most appends one round of a chain's writer takes.
const MAX_BATCH: usize = 256;

/// Makes the idempotency record of a caller's response that shows the entry as written (see
/// [`Ledger::write_recording`]).
pub type EntryRecorder = Arc<dyn Fn(&Entry) -> Option<IdempotencyRecord> + Send + Sync>;

/// An entry about to be written, before its place in the chain is known.
#[derive(Clone)]
struct Draft {
    id: String,
    kind: EntryKind,
    postings: Vec<Posting>,
    metadata: std::collections::BTreeMap<String, String>,
    occurred_at: i64,
}

impl Draft {
    fn new(entry: NewEntry, kind: EntryKind) -> Self {
        Draft {
            id: entry.id,
            kind,
            postings: entry.postings,
            metadata: entry.metadata,
            occurred_at: entry.occurred_at,
        }
    }

    /// Whether `entry` is this request written before (its id matched).
    fn matches(&self, entry: &Entry) -> bool {
        self.kind == entry.kind
            && self.postings == entry.postings
            && self.metadata == entry.metadata
            && self.occurred_at == entry.occurred_at
    }
}

/// The hold an entry resolves: what it reserved, read from its (hash-chained) entry.
#[derive(Clone)]
struct Resolving {
    hold_id: String,
    postings: Vec<Posting>,
    expires_at: i64,
}

/// One ledger write, for [`Ledger::write_with`]: the same operations as the methods of the same
/// names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// [`Ledger::post`].
    Post(NewEntry),
    /// [`Ledger::hold`], expiring at `expires_at` (unix ms).
    Hold {
        /// The hold entry.
        entry: NewEntry,
        /// When it expires.
        expires_at: i64,
    },
    /// [`Ledger::post_hold`].
    PostHold {
        /// The hold.
        hold_id: String,
        /// The posting entry.
        entry: NewEntry,
    },
    /// [`Ledger::void_hold`].
    VoidHold {
        /// The hold.
        hold_id: String,
        /// The voiding entry (no postings).
        entry: NewEntry,
    },
    /// Releases one pending hold whose expiry is at or before `now` (unix ms), as
    /// [`Ledger::expire_holds`] does for all: entry `<hold id>.expired` at the hold's expiry.
    ExpireHold {
        /// The hold.
        hold_id: String,
        /// The time it is expired at; before the hold's expiry is [`LedgerError::Invalid`].
        now: i64,
    },
}

/// The outcome of [`Ledger::write_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The entry.
    pub entry: Entry,
    /// False when an entry with this id and content already existed: nothing was written, not
    /// even the other changes.
    pub new: bool,
}

/// One append waiting for its chain's writer.
struct Pending {
    draft: Draft,
    resolving: Option<Resolving>,
    with: Vec<Commit>,
    recorded: Option<EntryRecorder>,
    /// The caller's span: a round's store work is traced under its first append's caller.
    span: tracing::Span,
    done: tokio::sync::oneshot::Sender<Result<Written, LedgerError>>,
}

/// The appends waiting for one (store, tenant) chain, and whether its writer task is running.
#[derive(Default)]
struct Chain {
    waiting: Vec<Pending>,
    writing: bool,
}

/// Each (store, tenant) chain's queue, shared by every `Ledger` over the same store in this
/// process (services each hold their own `Ledger`, but share the tenant's chain). The map holds
/// only weak references: a queue lives while an append or its writer holds it, and entries whose
/// queue is gone are swept once the map has doubled since the last sweep, so a process serving
/// many tenants (or creating many stores, as tests do) does not grow it without bound.
#[derive(Default)]
struct Chains {
    queues: std::collections::HashMap<(usize, String), std::sync::Weak<std::sync::Mutex<Chain>>>,
    /// The map's size after the last sweep.
    swept_at: usize,
}

type ChainQueue = Arc<std::sync::Mutex<Chain>>;

impl Chains {
    fn queue(&mut self, store: usize, tenant: &str) -> ChainQueue {
        let key = (store, tenant.to_owned());
        if let Some(queue) = self.queues.get(&key).and_then(std::sync::Weak::upgrade) {
            return queue;
        }
        let queue = ChainQueue::default();
        self.queues.insert(key, Arc::downgrade(&queue));
        if self.queues.len() >= 2 * self.swept_at.max(64) {
            self.queues.retain(|_, queue| queue.strong_count() > 0);
            self.swept_at = self.queues.len();
        }
        queue
    }
}

static CHAINS: std::sync::LazyLock<std::sync::Mutex<Chains>> =
    std::sync::LazyLock::new(Default::default);

/// A chain's queue, locked; a poisoned lock only means a thread panicked holding it, and every
/// change under it is one push, take or flag.
fn lock(queue: &ChainQueue) -> std::sync::MutexGuard<'_, Chain> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Clears the writing flag when a writer stops, however it stops: a writer that panicked
/// drops the appends still waiting (their callers get an error, not a hang), and the next append
/// starts a new writer.
struct WriterStopped(ChainQueue);

impl Drop for WriterStopped {
    fn drop(&mut self) {
        let mut chain = lock(&self.0);
        chain.writing = false;
        if std::thread::panicking() {
            chain.waiting.clear();
        }
    }
}

/// The chain state a round of appends builds on: read from the store once, then moved forward
/// in memory by each entry the round composes.
#[derive(Default)]
struct Tip {
    head: Option<(u64, HeadRecord)>,
    accounts: std::collections::HashMap<String, (u64, Account)>,
    holds: std::collections::HashMap<String, (u64, Hold)>,
}

/// A hold's id, version and state after an entry.
type HoldAfter = (String, (u64, Hold));

/// What composing an append gave.
enum Composed {
    /// The entry exists with the same content: nothing to write.
    Repeat(Entry),
    /// The commits of one atomic job, the entry they write, and the state after it.
    New {
        commits: Vec<Commit>,
        entry: Entry,
        head: (u64, HeadRecord),
        accounts: Vec<(String, (u64, Account))>,
        hold: Option<HoldAfter>,
    },
}

fn corrupt(what: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt(what.to_string())
}

impl Ledger {
    /// A ledger keeping its records in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Ledger { store }
    }

    /// The queue of appends to `tenant`'s chain in this store.
    fn chain(&self, tenant: &str) -> ChainQueue {
        let store = Arc::as_ptr(&self.store).cast::<()>() as usize;
        // A poisoned map only means another thread panicked while holding it; the map itself
        // is always consistent (each change is one insert or retain).
        CHAINS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .queue(store, tenant)
    }

    /// Opens an account with its unit and floor (see [`Account::floor`]; a floor is at most 0,
    /// as a new account starts at 0). Idempotent: opening it again with the same unit and floor
    /// returns it, with others is [`LedgerError::AccountConflict`]. Postings name only opened
    /// accounts, so a typo in a member's account name cannot create an unconstrained one.
    pub async fn open_account(
        &self,
        tenant: &str,
        name: &str,
        unit: &str,
        floor: Option<i64>,
    ) -> Result<Account, LedgerError> {
        model::check_name("account", name)?;
        model::check_name("unit", unit)?;
        if floor.is_some_and(|floor| floor > 0) {
            return Err(LedgerError::Invalid(format!(
                "floor of {name} must be at most 0"
            )));
        }
        loop {
            if let Some((_, account)) = self.load_account(tenant, name).await? {
                return if account.unit == unit && account.floor == floor {
                    Ok(account)
                } else {
                    Err(LedgerError::AccountConflict {
                        account: name.to_owned(),
                    })
                };
            }
            let account = Account {
                name: name.to_owned(),
                unit: unit.to_owned(),
                floor,
                balances: Balances::default(),
            };
            let created = self
                .store
                .commit(Commit {
                    key: records::key(tenant, ACCOUNT, name),
                    expected_version: 0,
                    data: Bytes::from(AccountRecord::from_account(&account).encode_to_vec()),
                    index: vec![records::account_list()],
                    events: Vec::new(),
                    idempotency: None,
                })
                .await;
            match created {
                Ok(_) => return Ok(account),
                // Opened concurrently: compare with that one.
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Writes a posted entry: its postings must balance per unit, name opened accounts in their
    /// units, and leave every debited account at or above its floor.
    pub async fn post(&self, tenant: &str, entry: NewEntry) -> Result<Entry, LedgerError> {
        self.write(tenant, Write::Post(entry)).await
    }

    /// Writes a hold: its debits are reserved (available balance drops, floors apply) and its
    /// credits promised, until [`Ledger::post_hold`], [`Ledger::void_hold`] or expiry at
    /// `expires_at` (unix ms, after `entry.occurred_at`).
    pub async fn hold(
        &self,
        tenant: &str,
        entry: NewEntry,
        expires_at: i64,
    ) -> Result<Entry, LedgerError> {
        self.write(tenant, Write::Hold { entry, expires_at }).await
    }

    /// Posts a pending hold with entry `entry`: with no postings, everything it reserved;
    /// otherwise those postings — balanced, on the hold's accounts, in the held direction and at
    /// most the held amounts — and the rest is released. Fails with
    /// [`LedgerError::HoldExpired`] from the hold's `expires_at` on (by `entry.occurred_at`).
    pub async fn post_hold(
        &self,
        tenant: &str,
        hold_id: &str,
        entry: NewEntry,
    ) -> Result<Entry, LedgerError> {
        let hold_id = hold_id.to_owned();
        self.write(tenant, Write::PostHold { hold_id, entry }).await
    }

    /// Voids a pending hold with entry `entry` (which has no postings): everything it reserved
    /// is released.
    pub async fn void_hold(
        &self,
        tenant: &str,
        hold_id: &str,
        entry: NewEntry,
    ) -> Result<Entry, LedgerError> {
        let hold_id = hold_id.to_owned();
        self.write(tenant, Write::VoidHold { hold_id, entry }).await
    }

    /// Makes `write` together with `with` — other aggregates of the same tenant, say a service's
    /// own record of what the entry means, with its outbox events — in one atomic commit, in
    /// **one attempt**: when anything moved since it was read (the chain head, an account, the
    /// hold, or one of `with`), it fails with [`StoreError::Conflict`] and the caller re-reads,
    /// recomputes `with` and calls again. A repeat of an existing entry (same id and content)
    /// returns it with `new: false` and writes nothing.
    pub async fn write_with(
        &self,
        tenant: &str,
        write: Write,
        with: Vec<Commit>,
    ) -> Result<Written, LedgerError> {
        let (draft, resolving) = self.prepare(tenant, write).await?;
        self.submit(tenant, draft, resolving, with, None).await
    }

    /// [`Ledger::write_with`], also committing `recorded` of the entry as written: the
    /// idempotency record of a caller's response that shows the entry's hash, known only once
    /// the entry takes its place in the chain. Not called for a repeat (`new: false`).
    pub async fn write_recording(
        &self,
        tenant: &str,
        write: Write,
        with: Vec<Commit>,
        recorded: EntryRecorder,
    ) -> Result<Written, LedgerError> {
        let (draft, resolving) = self.prepare(tenant, write).await?;
        self.submit(tenant, draft, resolving, with, Some(recorded))
            .await
    }

    /// Checks a write and turns it into a draft, with the hold it resolves.
    async fn prepare(
        &self,
        tenant: &str,
        write: Write,
    ) -> Result<(Draft, Option<Resolving>), LedgerError> {
        match write {
            Write::Post(entry) => {
                model::check_name("entry id", &entry.id)?;
                model::check_postings(&entry.postings)?;
                Ok((Draft::new(entry, EntryKind::Posted), None))
            }
            Write::Hold { entry, expires_at } => {
                model::check_name("entry id", &entry.id)?;
                model::check_postings(&entry.postings)?;
                if expires_at <= entry.occurred_at {
                    return Err(LedgerError::Invalid(format!(
                        "hold {} expires at {expires_at}, not after it occurs at {}",
                        entry.id, entry.occurred_at
                    )));
                }
                Ok((Draft::new(entry, EntryKind::Hold { expires_at }), None))
            }
            Write::PostHold { hold_id, mut entry } => {
                model::check_name("entry id", &entry.id)?;
                let resolving = self.resolving(tenant, &hold_id).await?;
                if entry.postings.is_empty() {
                    entry.postings = resolving.postings.clone();
                } else {
                    model::check_postings(&entry.postings)?;
                    model::check_within_hold(&hold_id, &resolving.postings, &entry.postings)?;
                }
                let kind = EntryKind::HoldPosted { hold_id };
                Ok((Draft::new(entry, kind), Some(resolving)))
            }
            Write::VoidHold { hold_id, entry } => {
                model::check_name("entry id", &entry.id)?;
                if !entry.postings.is_empty() {
                    return Err(LedgerError::Invalid(format!(
                        "voiding hold {hold_id} takes no postings"
                    )));
                }
                let resolving = self.resolving(tenant, &hold_id).await?;
                let kind = EntryKind::HoldVoided { hold_id };
                Ok((Draft::new(entry, kind), Some(resolving)))
            }
            Write::ExpireHold { hold_id, now } => {
                let resolving = self.resolving(tenant, &hold_id).await?;
                if resolving.expires_at > now {
                    return Err(LedgerError::Invalid(format!(
                        "hold {hold_id} expires at {}, after {now}",
                        resolving.expires_at
                    )));
                }
                let entry = NewEntry::new(format!("{hold_id}.expired"), resolving.expires_at);
                let kind = EntryKind::HoldExpired { hold_id };
                Ok((Draft::new(entry, kind), Some(resolving)))
            }
        }
    }

    /// Prepares and appends `write`, retrying races.
    async fn write(&self, tenant: &str, write: Write) -> Result<Entry, LedgerError> {
        let (draft, resolving) = self.prepare(tenant, write).await?;
        self.append(tenant, draft, resolving).await
    }

    /// Releases every pending hold whose `expires_at` is at or before `now` (unix ms) and
    /// returns the entries written. Each release is entry `<hold id>.expired`, occurring at the
    /// hold's `expires_at`, so sweepers running at once (or again after a crash) write it once.
    /// Cost: one page read per 256 pending holds, expired or not.
    pub async fn expire_holds(&self, tenant: &str, now: i64) -> Result<Vec<Entry>, LedgerError> {
        let mut expired = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .find(tenant, HOLD, &records::open_hold(), after.as_deref(), PAGE)
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(expired);
            };
            after = Some(last.clone());
            for (hold_id, stored) in page {
                let state: HoldRecord = stored.decode("hold")?;
                if state.expires_at > now {
                    continue;
                }
                let write = Write::ExpireHold {
                    hold_id: hold_id.clone(),
                    now,
                };
                match self.write(tenant, write).await {
                    Ok(entry) => expired.push(entry),
                    // Posted or voided since the page was read.
                    Err(LedgerError::HoldNotPending { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
    }

    /// An account with its balances.
    pub async fn account(&self, tenant: &str, name: &str) -> Result<Option<Account>, LedgerError> {
        Ok(self
            .load_account(tenant, name)
            .await?
            .map(|(_, account)| account))
    }

    /// Accounts by name, after `after`, at most `limit`.
    pub async fn accounts(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Account>, LedgerError> {
        let page = self
            .store
            .find(tenant, ACCOUNT, &records::account_list(), after, limit)
            .await?;
        page.iter()
            .map(|(_, stored)| Ok(stored.decode::<AccountRecord>("account")?.to_account()))
            .collect()
    }

    /// An entry by id.
    pub async fn entry(&self, tenant: &str, id: &str) -> Result<Option<Entry>, LedgerError> {
        let Some(stored) = self.store.load(&records::key(tenant, ENTRY, id)).await? else {
            return Ok(None);
        };
        let record: EntryRecord = stored.decode("entry")?;
        record.to_entry().map(Some).map_err(corrupt)
    }

    /// A hold's state by its entry id.
    pub async fn hold_state(&self, tenant: &str, id: &str) -> Result<Option<Hold>, LedgerError> {
        Ok(self.load_hold(tenant, id).await?.map(|(_, hold)| hold))
    }

    /// Entries in chain order after sequence `after`, at most `limit`.
    pub async fn entries(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, LedgerError> {
        let (_, head) = self.load_head(tenant).await?;
        let mut entries = Vec::new();
        let mut block = after.saturating_add(1) / SEQUENCE_BLOCK;
        while entries.len() < limit && block <= head.last_sequence / SEQUENCE_BLOCK {
            for (_, record) in self.entry_block(tenant, block).await? {
                let record = record.map_err(corrupt)?;
                if record.sequence > after
                    && record.sequence <= head.last_sequence
                    && entries.len() < limit
                {
                    entries.push(record.to_entry().map_err(corrupt)?);
                }
            }
            block += 1;
        }
        Ok(entries)
    }

    /// Entries that changed `account` (posted or pending), by entry id, after `after_id`, at
    /// most `limit` — in time order when entry ids are time-ordered.
    pub async fn account_entries(
        &self,
        tenant: &str,
        account: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, LedgerError> {
        let page = self
            .store
            .find(
                tenant,
                ENTRY,
                &records::account_history(account),
                after_id,
                limit,
            )
            .await?;
        page.iter()
            .map(|(_, stored)| {
                stored
                    .decode::<EntryRecord>("entry")?
                    .to_entry()
                    .map_err(corrupt)
            })
            .collect()
    }

    /// The tenant's chain head and its version (0 and an empty head before the first entry).
    pub(crate) async fn load_head(&self, tenant: &str) -> Result<(u64, HeadRecord), LedgerError> {
        match self
            .store
            .load(&records::key(tenant, HEAD, HEAD_ID))
            .await?
        {
            Some(stored) => Ok((stored.version, stored.decode("chain head")?)),
            None => Ok((0, HeadRecord::default())),
        }
    }

    /// The entries of one sequence block, sorted by sequence; an entry that does not decode is
    /// kept as the reason, under its aggregate id (sorted first).
    pub(crate) async fn entry_block(
        &self,
        tenant: &str,
        block: u64,
    ) -> Result<Vec<(String, Result<EntryRecord, String>)>, LedgerError> {
        let index = records::seq_block(block);
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .find(tenant, ENTRY, &index, after.as_deref(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            after = page.last().map(|(id, _)| id.clone());
            for (id, stored) in page {
                let record = EntryRecord::decode(stored.data.as_ref())
                    .map_err(|error| format!("does not decode: {error}"));
                found.push((id, record));
            }
            if !full {
                break;
            }
        }
        found.sort_by_key(|(_, record)| record.as_ref().map_or(0, |record| record.sequence));
        Ok(found)
    }

    async fn load_account(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<(u64, Account)>, LedgerError> {
        let Some(stored) = self
            .store
            .load(&records::key(tenant, ACCOUNT, name))
            .await?
        else {
            return Ok(None);
        };
        let record: AccountRecord = stored.decode("account")?;
        Ok(Some((stored.version, record.to_account())))
    }

    async fn load_hold(&self, tenant: &str, id: &str) -> Result<Option<(u64, Hold)>, LedgerError> {
        let Some(stored) = self.store.load(&records::key(tenant, HOLD, id)).await? else {
            return Ok(None);
        };
        let record: HoldRecord = stored.decode("hold")?;
        Ok(Some((stored.version, record.to_hold(id).map_err(corrupt)?)))
    }

    /// What a hold reserved, from its entry.
    async fn resolving(&self, tenant: &str, hold_id: &str) -> Result<Resolving, LedgerError> {
        let unknown = || LedgerError::UnknownHold {
            hold: hold_id.to_owned(),
        };
        let entry = self.entry(tenant, hold_id).await?.ok_or_else(unknown)?;
        match entry.kind {
            EntryKind::Hold { expires_at } => Ok(Resolving {
                hold_id: hold_id.to_owned(),
                postings: entry.postings,
                expires_at,
            }),
            _ => Err(unknown()),
        }
    }

    /// Writes the draft, recomputing it when a concurrent writer moved the head, an account or
    /// the hold first.
    async fn append(
        &self,
        tenant: &str,
        draft: Draft,
        resolving: Option<Resolving>,
    ) -> Result<Entry, LedgerError> {
        let (draft, resolving) = (&draft, resolving.as_ref());
        retry_on_conflict(CHAIN_RETRY, || async move {
            self.submit(tenant, draft.clone(), resolving.cloned(), Vec::new(), None)
                .await
                .map(|written| written.entry)
        })
        .await
    }

    /// One attempt: queues the append for its chain's writer (starting the writer when none
    /// runs) and waits for its outcome.
    async fn submit(
        &self,
        tenant: &str,
        draft: Draft,
        resolving: Option<Resolving>,
        with: Vec<Commit>,
        recorded: Option<EntryRecorder>,
    ) -> Result<Written, LedgerError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let pending = Pending {
            draft,
            resolving,
            with,
            recorded,
            span: tracing::Span::current(),
            done,
        };
        let queue = self.chain(tenant);
        let start_writer = {
            let mut chain = lock(&queue);
            chain.waiting.push(pending);
            !std::mem::replace(&mut chain.writing, true)
        };
        if start_writer {
            // A task of its own, so a caller that goes away (a cancelled request) cannot strand
            // the appends of the others.
            let (ledger, tenant) = (self.clone(), tenant.to_owned());
            tokio::spawn(async move { ledger.write_chain(&tenant, queue).await });
        }
        outcome
            .await
            .map_err(|_| LedgerError::Store(StoreError::Backend("ledger writer stopped".into())))?
    }

    /// A chain's writer: takes what is waiting, writes it, until nothing is.
    async fn write_chain(&self, tenant: &str, queue: ChainQueue) {
        let _stopped = WriterStopped(queue.clone());
        loop {
            let batch: Vec<Pending> = {
                let mut chain = lock(&queue);
                if chain.waiting.is_empty() {
                    chain.writing = false;
                    return;
                }
                let take = chain.waiting.len().min(MAX_BATCH);
                chain.waiting.drain(..take).collect()
            };
            self.write_batch(tenant, batch).await;
        }
    }

    /// Writes a batch of appends: each round composes every append on top of the ones before
    /// it and commits them with one [`Store::commit_each`]; the appends composed on top of the
    /// first refused one go again in the next round, from the store's state then. Each round
    /// settles at least one append, so a batch of n takes at most n rounds (one when nothing is
    /// refused).
    async fn write_batch(&self, tenant: &str, batch: Vec<Pending>) {
        use tracing::Instrument as _;
        let mut round = batch;
        while let Some(first) = round.first() {
            let span = first.span.clone();
            let mut tip = Tip::default();
            let mut ids = std::collections::HashSet::new();
            let mut again = Vec::new();
            let mut jobs = Vec::new();
            let mut sent = Vec::new();
            for pending in round {
                // A second append of one id waits for the first to be written, then finds it.
                if !ids.insert(pending.draft.id.clone()) {
                    again.push(pending);
                    continue;
                }
                match self
                    .compose(tenant, &mut tip, &pending)
                    .instrument(span.clone())
                    .await
                {
                    Ok(Composed::Repeat(entry)) => {
                        let _ = pending.done.send(Ok(Written { entry, new: false }));
                    }
                    Ok(Composed::New {
                        commits,
                        entry,
                        head,
                        accounts,
                        hold,
                    }) => {
                        tip.head = Some(head);
                        tip.accounts.extend(accounts);
                        tip.holds.extend(hold);
                        jobs.push(commits);
                        sent.push((pending, entry));
                    }
                    Err(error) => {
                        let _ = pending.done.send(Err(error));
                    }
                }
            }
            let outcomes = self.store.commit_each(jobs).instrument(span).await;
            let mut refused = false;
            for ((pending, entry), outcome) in sent.into_iter().zip(outcomes) {
                match outcome {
                    Ok(_) => {
                        let _ = pending.done.send(Ok(Written { entry, new: true }));
                    }
                    // The first refusal is the append's own (its commits, or another process
                    // moved the chain); the ones composed on top of it go again.
                    Err(error) if !refused => {
                        refused = true;
                        let _ = pending.done.send(Err(error.into()));
                    }
                    Err(_) => again.push(pending),
                }
            }
            round = again;
        }
    }

    /// Composes one append on top of `tip`: checks it and computes its entry and every commit,
    /// without changing `tip` (the caller moves it forward once the append is in the round).
    async fn compose(
        &self,
        tenant: &str,
        tip: &mut Tip,
        pending: &Pending,
    ) -> Result<Composed, LedgerError> {
        let draft = &pending.draft;
        // Idempotency by id first: a repeat must return the original even though the hold it
        // resolved, say, is no longer pending.
        if let Some(existing) = self.entry(tenant, &draft.id).await? {
            return if draft.matches(&existing) {
                Ok(Composed::Repeat(existing))
            } else {
                Err(LedgerError::EntryConflict {
                    id: draft.id.clone(),
                })
            };
        }
        let mut commits = Vec::new();
        let hold = self
            .hold_change(tenant, tip, draft, pending.resolving.as_ref())
            .await?;
        if let Some((commit, _)) = &hold {
            commits.push(commit.clone());
        }

        let held = pending
            .resolving
            .as_ref()
            .map_or(&[][..], |hold| &hold.postings);
        let changes = model::effects(&draft.kind, &draft.postings, held).ok_or_else(|| {
            LedgerError::AmountOutOfRange {
                account: draft.id.clone(),
                detail: "the entry's amounts per account overflow 64 bits".into(),
            }
        })?;
        let mut accounts = Vec::with_capacity(changes.len());
        for (name, change) in &changes {
            let (commit, account) = self
                .account_change(tenant, tip, name, change, draft)
                .await?;
            commits.push(commit);
            accounts.push(account);
        }

        let (head_version, head) = match &tip.head {
            Some(head) => head.clone(),
            None => self.load_head(tenant).await?,
        };
        let mut entry = Entry {
            tenant: tenant.to_owned(),
            id: draft.id.clone(),
            sequence: head.last_sequence + 1,
            kind: draft.kind.clone(),
            postings: draft.postings.clone(),
            metadata: draft.metadata.clone(),
            occurred_at: draft.occurred_at,
            prev_hash: head.tip().map_err(corrupt)?,
            hash: model::GENESIS,
        };
        let mut record = EntryRecord::from_entry(&entry);
        entry.hash = records::entry_hash(&record);
        record.hash = entry.hash.to_vec();
        let head = HeadRecord {
            last_sequence: entry.sequence,
            last_hash: entry.hash.to_vec(),
        };
        // The entry's own commit carries the caller's record: `with` may carry records of its
        // own, the entry's is always free.
        let mut created = change(
            records::key(tenant, ENTRY, &entry.id),
            0,
            record.encode_to_vec(),
            records::entry_index(entry.sequence, changes.keys().map(String::as_str)),
        );
        created.idempotency = pending.recorded.as_ref().and_then(|record| record(&entry));
        commits.insert(0, created);
        commits.push(change(
            records::key(tenant, HEAD, HEAD_ID),
            head_version,
            head.encode_to_vec(),
            Vec::new(),
        ));
        commits.extend(pending.with.iter().cloned());
        Ok(Composed::New {
            commits,
            entry,
            head: (head_version + 1, head),
            accounts,
            hold: hold.map(|(_, hold)| hold),
        })
    }

    /// The hold state the draft creates (a hold) or resolves (compare-and-set from pending).
    async fn hold_change(
        &self,
        tenant: &str,
        tip: &Tip,
        draft: &Draft,
        resolving: Option<&Resolving>,
    ) -> Result<Option<(Commit, HoldAfter)>, LedgerError> {
        if let EntryKind::Hold { expires_at } = draft.kind {
            let hold = Hold {
                id: draft.id.clone(),
                status: HoldStatus::Pending,
                expires_at,
                resolved_by: None,
            };
            let data = HoldRecord::from_hold(&hold).encode_to_vec();
            let key = records::key(tenant, HOLD, &draft.id);
            let commit = change(key, 0, data, vec![records::open_hold()]);
            return Ok(Some((commit, (draft.id.clone(), (1, hold)))));
        }
        let Some(resolving) = resolving else {
            return Ok(None);
        };
        let hold_id = resolving.hold_id.as_str();
        let known = match tip.holds.get(hold_id) {
            Some(known) => Some(known.clone()),
            None => self.load_hold(tenant, hold_id).await?,
        };
        let (version, mut hold) = known.ok_or_else(|| LedgerError::UnknownHold {
            hold: hold_id.to_owned(),
        })?;
        let posting = matches!(draft.kind, EntryKind::HoldPosted { .. });
        match hold.status {
            HoldStatus::Pending => {}
            HoldStatus::Expired if posting => {
                return Err(LedgerError::HoldExpired {
                    hold: hold_id.to_owned(),
                });
            }
            status => {
                return Err(LedgerError::HoldNotPending {
                    hold: hold_id.to_owned(),
                    status,
                });
            }
        }
        // A pending hold past its expiry can still be voided or expired, not posted.
        let lapsed = draft.occurred_at >= resolving.expires_at;
        hold.status = match draft.kind {
            EntryKind::HoldPosted { .. } if lapsed => {
                return Err(LedgerError::HoldExpired {
                    hold: hold_id.to_owned(),
                });
            }
            EntryKind::HoldPosted { .. } => HoldStatus::Posted,
            EntryKind::HoldVoided { .. } => HoldStatus::Voided,
            EntryKind::HoldExpired { .. } if lapsed => HoldStatus::Expired,
            _ => {
                return Err(LedgerError::Invalid(format!(
                    "entry {} cannot resolve hold {hold_id}",
                    draft.id
                )));
            }
        };
        hold.resolved_by = Some(draft.id.clone());
        let data = HoldRecord::from_hold(&hold).encode_to_vec();
        let key = records::key(tenant, HOLD, hold_id);
        let commit = change(key, version, data, Vec::new());
        Ok(Some((commit, (hold_id.to_owned(), (version + 1, hold)))))
    }

    /// The account after the draft's change: opened, in the postings' unit, within its floor.
    async fn account_change(
        &self,
        tenant: &str,
        tip: &Tip,
        name: &str,
        change_by: &Balances,
        draft: &Draft,
    ) -> Result<(Commit, (String, (u64, Account))), LedgerError> {
        let known = match tip.accounts.get(name) {
            Some(known) => Some(known.clone()),
            None => self.load_account(tenant, name).await?,
        };
        let (version, mut account) = known.ok_or_else(|| LedgerError::UnknownAccount {
            account: name.to_owned(),
        })?;
        if let Some(posting) = draft
            .postings
            .iter()
            .find(|posting| posting.account == name && posting.unit != account.unit)
        {
            return Err(LedgerError::UnitMismatch {
                account: name.to_owned(),
                expected: account.unit,
                found: posting.unit.clone(),
            });
        }
        let before = account.balances;
        let after = before
            .plus(change_by)
            .ok_or_else(|| LedgerError::AmountOutOfRange {
                account: name.to_owned(),
                detail: format!("its balances {before:?} would overflow 64 bits"),
            })?;
        // Only a change that lowers the available balance is held to the floor, so releasing a
        // hold or crediting is always possible.
        if let Some(floor) = account.floor
            && after.available() < before.available()
            && after.available() < floor
        {
            return Err(LedgerError::InsufficientFunds {
                account: name.to_owned(),
                available: before.available().saturating_sub(floor).max(0),
                required: before.available().saturating_sub(after.available()),
            });
        }
        account.balances = after;
        let data = AccountRecord::from_account(&account).encode_to_vec();
        let key = records::key(tenant, ACCOUNT, name);
        let commit = change(key, version, data, vec![records::account_list()]);
        Ok((commit, (name.to_owned(), (version + 1, account))))
    }
}

fn change(
    key: store::AggregateKey,
    expected_version: u64,
    data: Vec<u8>,
    index: Vec<IndexEntry>,
) -> Commit {
    Commit {
        key,
        expected_version,
        data: Bytes::from(data),
        index,
        events: Vec::new(),
        idempotency: None,
    }
}

#[cfg(test)]
mod chain_tests {
    use super::Chains;

    #[test]
    fn tenants_share_a_queue_while_it_lives_and_dead_queues_are_swept() {
        let mut chains = Chains::default();
        let held = chains.queue(1, "t-held");
        assert!(std::sync::Arc::ptr_eq(&held, &chains.queue(1, "t-held")));
        assert!(!std::sync::Arc::ptr_eq(&held, &chains.queue(2, "t-held")));
        // A thousand tenants come and go; only the held queue survives a sweep.
        for tenant in 0..1000 {
            drop(chains.queue(1, &format!("t-{tenant}")));
        }
        assert!(chains.queues.len() < 200, "{} entries", chains.queues.len());
        assert!(std::sync::Arc::ptr_eq(&held, &chains.queue(1, "t-held")));
    }
}
