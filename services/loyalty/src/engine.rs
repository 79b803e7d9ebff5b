//! The loyalty engine: the store, the points ledger, the tenant clock and the balance cache, and
//! the one way a member's points change — [`Loyalty::commit_member`], which writes the ledger
//! entry, the member record (lots), the points entries, other aggregates and the outbox events
//! in one atomic commit. Every operation reads, decides with the pure rules, and commits; a
//! concurrent writer makes the commit fail and the operation start over (`retrying!`).

use platform::units::timestamp_of_ms;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use bytes::Bytes;
use commerce_api::commerce::loyalty::v1::{Balance, Member, PointsEntry};
use fastpath::Cache;
use ledger::{Ledger, LedgerError, Write, Written};
use platform::clock::Clocks;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};
use store::{Commit, IdempotencyRecord, OutboxEvent, Store};

use crate::error::LoyaltyError;
use crate::records::{self, MemberRecord};

/// How long a cached balance lives without being written through again.
const BALANCE_TTL: Duration = Duration::from_secs(3600);

/// The loyalty service's state and rules. Cheap to share (`Arc`).
pub struct Loyalty {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ledger: Ledger,
    pub(crate) clocks: Clocks,
    pub(crate) balances: Cache,
    /// The event journal reconciliation reads for paid orders and refunds loyalty has not
    /// handled, and how long an event may wait for its consumer before it counts as missing.
    pub(crate) journal: Option<(events::Journal, Duration)>,
}

/// A member as read, with the version its next commit must match.
#[derive(Debug, Clone)]
pub(crate) struct MemberState {
    pub version: u64,
    pub record: MemberRecord,
}

impl MemberState {
    /// The member. Loading refuses a record without one ([`MemberRecord::load`]); a state
    /// built in code always sets it — the empty fallback only keeps a bug from panicking.
    pub fn member(&self) -> &Member {
        static NONE: std::sync::LazyLock<Member> = std::sync::LazyLock::new(Member::default);
        self.record.member.as_ref().unwrap_or(&NONE)
    }

    pub fn id(&self) -> &str {
        &self.member().member_id
    }
}

/// What one commit changes besides the member record.
#[derive(Default)]
pub(crate) struct Change {
    /// The ledger entry, if points move.
    pub write: Option<Write>,
    /// Points entries to add to the member's history (their `entry_hash` is read from the
    /// ledger when listed).
    pub entries: Vec<PointsEntry>,
    /// Events the member emits.
    pub events: Vec<DynamicMessage>,
    /// Other aggregates changed at the same time.
    pub also: Vec<Commit>,
    /// The processed-event record, when an event consumer makes the change.
    pub processed: Option<IdempotencyRecord>,
    /// The idempotency record of the caller's response, made from the ledger entry `write`
    /// chains (the response shows its hash): see [`Ledger::write_recording`].
    pub recorded: Option<Recorder>,
}

/// Makes the idempotency record of a response from the ledger entry as written.
pub(crate) type Recorder = Box<dyn Fn(&ledger::Entry) -> IdempotencyRecord + Send + Sync>;

impl Change {
    /// Adds an event.
    pub fn emit(&mut self, event: &impl ReflectMessage) {
        self.events.push(event.transcode_to_dynamic());
    }
}

/// `entry` showing its ledger entry's hash and time.
pub(crate) fn hashed(mut entry: PointsEntry, written: &ledger::Entry) -> PointsEntry {
    entry.entry_hash = crate::members::hex(&written.hash);
    entry.create_time = Some(timestamp_of_ms(written.occurred_at));
    entry
}

/// Unix seconds of a tenant-clock time in ms (floor).
pub(crate) fn seconds(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

impl Loyalty {
    /// The engine over `store` (records and ledger), `clocks` (the tenant clock every decision
    /// reads) and `balances` (the balance cache: Redis when configured).
    pub fn new(store: Arc<dyn Store>, clocks: Clocks, balances: Cache) -> Self {
        Loyalty {
            ledger: Ledger::new(store.clone()),
            store,
            clocks,
            balances,
            journal: None,
        }
    }

    /// Reconciliation also reports checkout's paid orders and refunds that loyalty has not
    /// handled `settle` after they were published (`journal` must expect them, see
    /// [`crate::consumer::expect_effects`]).
    pub fn with_event_journal(mut self, journal: events::Journal, settle: Duration) -> Self {
        self.journal = Some((journal, settle));
        self
    }

    /// The ledger (for operators and tests).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The tenant's clock now, in unix ms.
    pub async fn now_ms(&self, tenant: &str) -> Result<i64, LoyaltyError> {
        Ok(self.clocks.now(tenant).await?.now_ms)
    }

    /// A member by id.
    pub(crate) async fn load_member(
        &self,
        tenant: &str,
        member_id: &str,
    ) -> Result<MemberState, LoyaltyError> {
        let stored = self
            .store
            .load(&records::key(tenant, records::MEMBER, member_id))
            .await?
            .ok_or_else(|| LoyaltyError::NotFound {
                resource: "member",
                id: member_id.to_owned(),
            })?;
        Ok(MemberState {
            version: stored.version,
            record: MemberRecord::load(&stored)?,
        })
    }

    /// Commits `record` as the member's next state with `change`, atomically; see the module
    /// docs. Returns the ledger write's outcome, if there was one.
    pub(crate) async fn commit_member(
        &self,
        tenant: &str,
        state: &MemberState,
        mut record: MemberRecord,
        change: Change,
        now_ms: i64,
    ) -> Result<Option<Written>, LoyaltyError> {
        let member_id = state.id().to_owned();
        let version = state.version + 1;
        record.changed_at_ms = now_ms;
        if let Some(member) = record.member.as_mut() {
            member.version = version as i64;
        }
        let mut entry_commits = Vec::new();
        for mut entry in change.entries {
            entry.member_id.clone_from(&member_id);
            entry.create_time = Some(timestamp_of_ms(now_ms));
            let id = records::points_entry_id(&member_id, record.entry_count);
            record.entry_count += 1;
            entry_commits.push(
                Commit::record(records::key(tenant, records::POINTS_ENTRY, &id), 0, &entry)
                    .indexed(vec![records::entries_of(&member_id)]),
            );
        }
        let key = records::key(tenant, records::MEMBER, &member_id);
        let source = events::EventSource {
            aggregate: key.clone(),
            version,
            occurred_at: std::time::UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64),
            traceparent: None,
            tracestate: None,
        };
        let mut member_commit =
            Commit::record(key, state.version, &record).indexed(vec![records::all_members()]);
        member_commit.events = change
            .events
            .iter()
            .map(|event| events::envelope::outbox_event(&source, event))
            .collect::<Vec<OutboxEvent>>();
        member_commit.idempotency = change.processed;
        let mut commits = vec![member_commit];
        commits.extend(entry_commits);
        commits.extend(change.also);
        let written = match change.write {
            Some(write) => Some(
                self.write_ledger(tenant, &member_id, write, commits, change.recorded)
                    .await?,
            ),
            None => {
                self.store.commit_all(commits).await?;
                None
            }
        };
        self.refresh_balance(tenant, &member_id).await;
        Ok(written)
    }

    /// The ledger write with the other commits, opening the member's accounts if an earlier
    /// enrolment stopped before it did.
    async fn write_ledger(
        &self,
        tenant: &str,
        member_id: &str,
        write: Write,
        commits: Vec<Commit>,
        recorded: Option<Recorder>,
    ) -> Result<Written, LoyaltyError> {
        let recorded: ledger::EntryRecorder = std::sync::Arc::new(move |entry: &ledger::Entry| {
            recorded.as_ref().map(|record| record(entry))
        });
        let written = match self
            .ledger
            .write_recording(tenant, write.clone(), commits.clone(), recorded.clone())
            .await
        {
            Err(LedgerError::UnknownAccount { .. }) => {
                self.open_accounts(tenant, member_id).await?;
                self.ledger
                    .write_recording(tenant, write, commits, recorded)
                    .await
            }
            outcome => outcome,
        };
        match written {
            // The entry's id names the operation (`accrual:<order>`, `adjust:<key>`…), so it
            // existing means a concurrent call of the same operation committed first — with its
            // own member change, records and events, none of ours. That is a lost race, not a
            // fault: the operation re-reads and its own check (the accrual record, the entry)
            // answers as a repeat.
            Ok(written) if !written.new => Err(LoyaltyError::EntryRaced {
                entry_id: written.entry.id,
            }),
            Err(LedgerError::EntryConflict { id }) => {
                Err(LoyaltyError::EntryRaced { entry_id: id })
            }
            outcome => Ok(outcome?),
        }
    }

    /// `entry` with its ledger entry's hash and time filled in (when it has a ledger entry).
    pub(crate) async fn with_hash(
        &self,
        tenant: &str,
        entry: PointsEntry,
    ) -> Result<PointsEntry, LoyaltyError> {
        if entry.entry_id.is_empty() {
            return Ok(entry);
        }
        Ok(match self.ledger.entry(tenant, &entry.entry_id).await? {
            Some(recorded) => hashed(entry, &recorded),
            None => entry,
        })
    }

    /// Opens the program's accounts and the member's (idempotent). The pending account may
    /// never go negative (floor 0); the active one may, within the program's
    /// `max_negative_points`, which the service enforces (a ledger floor is fixed when an
    /// account opens, the program's limit is not).
    pub(crate) async fn open_accounts(
        &self,
        tenant: &str,
        member_id: &str,
    ) -> Result<(), LoyaltyError> {
        for name in [records::ISSUED, records::REDEEMED, records::BREAKAGE] {
            self.ledger
                .open_account(tenant, name, records::POINTS, None)
                .await?;
        }
        self.ledger
            .open_account(
                tenant,
                &records::pending_account(member_id),
                records::POINTS,
                Some(0),
            )
            .await?;
        self.ledger
            .open_account(
                tenant,
                &records::active_account(member_id),
                records::POINTS,
                None,
            )
            .await?;
        Ok(())
    }

    fn balance_key(tenant: &str, member_id: &str) -> String {
        format!("loyalty:balance:{{{tenant}}}:{member_id}")
    }

    /// The member's balance: from the cache (Redis) when there, else from the store — the
    /// ledger's accounts and the member record — and cached.
    pub async fn balance(&self, tenant: &str, member_id: &str) -> Result<Balance, LoyaltyError> {
        let key = Self::balance_key(tenant, member_id);
        let bytes = self
            .balances
            .get_or_load(&key, BALANCE_TTL, || async {
                let balance = self.balance_from_store(tenant, member_id).await?;
                Ok::<_, LoyaltyError>(Bytes::from(balance.encode_to_vec()))
            })
            .instrument(platform::telemetry::fast_path_span("cache get_or_load"))
            .await?;
        Balance::decode(bytes.as_ref()).map_err(|error| LoyaltyError::Corrupt(error.to_string()))
    }

    /// The balance read from the store alone.
    pub async fn balance_from_store(
        &self,
        tenant: &str,
        member_id: &str,
    ) -> Result<Balance, LoyaltyError> {
        let state = self.load_member(tenant, member_id).await?;
        let account = async |name: String| -> Result<ledger::Balances, LoyaltyError> {
            Ok(self
                .ledger
                .account(tenant, &name)
                .await?
                .map(|account| account.balances)
                .unwrap_or_default())
        };
        let active = account(records::active_account(member_id)).await?;
        let pending = account(records::pending_account(member_id)).await?;
        Ok(Balance {
            member_id: member_id.to_owned(),
            available_points: active.available(),
            active_points: active.posted,
            held_points: active.pending_debits,
            pending_points: pending.posted,
            lifetime_points: state.record.lifetime_points,
            tier_id: state.member().tier_id.clone(),
            as_of_time: Some(timestamp_of_ms(state.record.changed_at_ms)),
        })
    }

    /// Writes the member's new balance through to the cache after a commit. A failure only
    /// costs a cache miss (the cache marks the key stale).
    async fn refresh_balance(&self, tenant: &str, member_id: &str) {
        let key = Self::balance_key(tenant, member_id);
        match self.balance_from_store(tenant, member_id).await {
            Ok(balance) => {
                self.balances
                    .write_through(&key, &Bytes::from(balance.encode_to_vec()), BALANCE_TTL)
                    .await
            }
            Err(_) => self.balances.invalidate(&key).await,
        }
    }
}
