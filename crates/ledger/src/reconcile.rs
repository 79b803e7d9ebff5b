//! Reconciliation: walks a tenant's entries in chain order, recomputes every hash and every
//! balance from the postings alone, and compares with what is stored. Trusts nothing it checks:
//! the accounts' cached balances, the holds' states and the chain head are all re-derived.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use store::StoreError;

use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::model::{self, Balances, EntryKind, GENESIS, Posting};
use crate::records::{
    self, ACCOUNT, AccountRecord, EntryRecord, HEAD, HEAD_ID, HOLD, HeadRecord, SEQUENCE_BLOCK,
};

/// How often `reconcile` starts over when entries were written while it read.
const ATTEMPTS: u32 = 5;

const PAGE: usize = 256;

/// What `reconcile` found. Problems are in the order found: entries in chain order first, so
/// the first problem names the first bad entry, then accounts, then holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Accounts compared.
    pub accounts_checked: usize,
    /// Entries walked.
    pub entries_checked: u64,
    /// Everything that does not add up; empty when the ledger is intact.
    pub problems: Vec<Problem>,
}

impl ReconcileReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One thing that does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A stored record does not decode, or is stored under another tenant or id than it names.
    Unreadable {
        /// `entry`, `account`, `hold`.
        kind: String,
        /// Its id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The entry's stored hash is not the hash of its content: it was edited.
    HashMismatch {
        /// The entry.
        entry: String,
    },
    /// The entry's `prev_hash` is not the previous entry's hash: something before it was
    /// edited (and re-hashed), removed or inserted.
    ChainBroken {
        /// The entry.
        entry: String,
        /// The entry before it in the walk, if any.
        previous: Option<String>,
    },
    /// No entry holds this sequence number (the first of a gap).
    MissingEntry {
        /// The sequence number.
        sequence: u64,
    },
    /// An entry claims a sequence number an earlier one holds.
    RepeatedSequence {
        /// The entry.
        entry: String,
        /// The sequence number.
        sequence: u64,
    },
    /// The entry's postings do not sum to zero in `unit`.
    Unbalanced {
        /// The entry.
        entry: String,
        /// The unit.
        unit: String,
    },
    /// The entry resolves a hold that is not pending at that point of the chain.
    BadHoldReference {
        /// The entry.
        entry: String,
        /// The hold it names.
        hold: String,
    },
    /// The chain head does not point at the last entry.
    HeadMismatch {
        /// The last entry walked.
        last_entry: Option<String>,
    },
    /// The account's stored balances are not the sum of its postings.
    BalanceMismatch {
        /// The account.
        account: String,
        /// Cached on the account.
        stored: Balances,
        /// Summed from the entries.
        derived: Balances,
    },
    /// The account's available balance is below its floor.
    BelowFloor {
        /// The account.
        account: String,
    },
    /// Postings in a unit other than the account's.
    UnitMismatch {
        /// The account.
        account: String,
        /// The foreign unit.
        unit: String,
    },
    /// Entries change an account that does not exist.
    UnknownAccount {
        /// The account.
        account: String,
        /// The first entry that changes it.
        entry: String,
    },
    /// A hold's stored state disagrees with the entries (open without being pending, or
    /// pending without being open).
    HoldMismatch {
        /// The hold.
        hold: String,
    },
}

/// An account as the entries say it is.
struct Derived {
    balances: Balances,
    units: BTreeSet<String>,
    first_entry: String,
}

/// The state of a walk along the chain.
struct Walk<'a> {
    tenant: &'a str,
    problems: Vec<Problem>,
    entries: u64,
    next_sequence: u64,
    /// The last entry walked and its stored hash.
    previous: Option<(String, Vec<u8>)>,
    open_holds: BTreeMap<String, Vec<Posting>>,
    accounts: BTreeMap<String, Derived>,
}

impl Walk<'_> {
    fn unreadable(&mut self, kind: &str, id: &str, reason: impl Into<String>) {
        self.problems.push(Problem::Unreadable {
            kind: kind.to_owned(),
            id: id.to_owned(),
            reason: reason.into(),
        });
    }

    fn visit(&mut self, id: &str, record: Result<EntryRecord, String>) {
        self.entries += 1;
        let record = match record {
            Ok(record) if record.id == id && record.tenant == self.tenant => record,
            Ok(record) => {
                let reason = format!("names {}/{}", record.tenant, record.id);
                return self.unreadable("entry", id, reason);
            }
            Err(reason) => return self.unreadable("entry", id, reason),
        };
        if record.sequence < self.next_sequence {
            return self.problems.push(Problem::RepeatedSequence {
                entry: id.to_owned(),
                sequence: record.sequence,
            });
        }
        if record.sequence > self.next_sequence {
            self.problems.push(Problem::MissingEntry {
                sequence: self.next_sequence,
            });
        }
        self.next_sequence = record.sequence + 1;

        if records::entry_hash(&record)[..] != record.hash[..] {
            self.problems.push(Problem::HashMismatch {
                entry: id.to_owned(),
            });
        }
        let expected_prev = self
            .previous
            .as_ref()
            .map_or(&GENESIS[..], |(_, hash)| &hash[..]);
        if record.prev_hash[..] != *expected_prev {
            self.problems.push(Problem::ChainBroken {
                entry: id.to_owned(),
                previous: self.previous.as_ref().map(|(id, _)| id.clone()),
            });
        }
        // Chain on from what is stored, so one edited entry is reported once, not again for
        // every entry after it.
        self.previous = Some((id.to_owned(), record.hash.clone()));

        let entry = match record.to_entry() {
            Ok(entry) => entry,
            Err(reason) => return self.unreadable("entry", id, reason),
        };
        if let Some(unit) = model::unbalanced_unit(&entry.postings) {
            self.problems.push(Problem::Unbalanced {
                entry: id.to_owned(),
                unit,
            });
        }
        let held = match &entry.kind {
            EntryKind::Hold { .. } => {
                self.open_holds
                    .insert(id.to_owned(), entry.postings.clone());
                Vec::new()
            }
            kind => match kind.resolves() {
                Some(hold) => self.open_holds.remove(hold).unwrap_or_else(|| {
                    self.problems.push(Problem::BadHoldReference {
                        entry: id.to_owned(),
                        hold: hold.to_owned(),
                    });
                    Vec::new()
                }),
                None => Vec::new(),
            },
        };
        let Some(changes) = model::effects(&entry.kind, &entry.postings, &held) else {
            return self.unreadable("entry", id, "amounts overflow");
        };
        for (account, change) in changes {
            let derived = self.accounts.entry(account).or_insert_with(|| Derived {
                balances: Balances::default(),
                units: BTreeSet::new(),
                first_entry: id.to_owned(),
            });
            match derived.balances.plus(&change) {
                Some(balances) => derived.balances = balances,
                None => return self.unreadable("entry", id, "balances overflow"),
            }
        }
        for posting in &entry.postings {
            if let Some(derived) = self.accounts.get_mut(&posting.account) {
                derived.units.insert(posting.unit.clone());
            }
        }
    }
}

impl Ledger {
    /// Proves the tenant's ledger: every entry's hash and link, every entry balanced per unit,
    /// every account's cached balances equal to the sum of its postings (posted and pending),
    /// no account below its floor, every hold's state as the entries say, the head at the last
    /// entry. Reads are not one snapshot, so when entries are written meanwhile (the head moved)
    /// it starts over; after a few tries it gives up with the conflict.
    pub async fn reconcile(&self, tenant: &str) -> Result<ReconcileReport, LedgerError> {
        let head_key = records::key(tenant, HEAD, HEAD_ID).to_string();
        let mut conflict = None;
        for _ in 0..ATTEMPTS {
            let (version, head) = self.load_head(tenant).await?;
            let report = self.reconcile_at(tenant, &head).await?;
            // Every entry write moves the head: if it did not move, what was read is one state.
            let (now, _) = self.load_head(tenant).await?;
            if now == version {
                return Ok(report);
            }
            conflict = Some(StoreError::Conflict {
                key: head_key.clone(),
                expected: version,
                found: now,
            });
        }
        Err(LedgerError::Store(conflict.unwrap_or_else(|| {
            StoreError::Backend("reconcile made no attempt".into())
        })))
    }

    async fn reconcile_at(
        &self,
        tenant: &str,
        head: &HeadRecord,
    ) -> Result<ReconcileReport, LedgerError> {
        let mut walk = Walk {
            tenant,
            problems: Vec::new(),
            entries: 0,
            next_sequence: 1,
            previous: None,
            open_holds: BTreeMap::new(),
            accounts: BTreeMap::new(),
        };
        if head.last_sequence > 0 {
            for block in 0..=head.last_sequence / SEQUENCE_BLOCK {
                for (id, record) in self.entry_block(tenant, block).await? {
                    // Entries past the head were written after it was read.
                    if record
                        .as_ref()
                        .is_ok_and(|record| record.sequence > head.last_sequence)
                    {
                        continue;
                    }
                    walk.visit(&id, record);
                }
            }
        }
        if walk.next_sequence <= head.last_sequence {
            walk.problems.push(Problem::MissingEntry {
                sequence: walk.next_sequence,
            });
        }
        let last_hash = walk.previous.as_ref().map(|(_, hash)| &hash[..]);
        if head.last_sequence > 0 && last_hash != Some(&head.last_hash[..]) {
            walk.problems.push(Problem::HeadMismatch {
                last_entry: walk.previous.as_ref().map(|(id, _)| id.clone()),
            });
        }
        let accounts_checked = self.check_accounts(tenant, &mut walk).await?;
        self.check_holds(tenant, &mut walk).await?;
        Ok(ReconcileReport {
            accounts_checked,
            entries_checked: walk.entries,
            problems: walk.problems,
        })
    }

    /// Compares every stored account with the walk's sums; returns how many were compared.
    async fn check_accounts(
        &self,
        tenant: &str,
        walk: &mut Walk<'_>,
    ) -> Result<usize, LedgerError> {
        let mut checked = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .find(
                    tenant,
                    ACCOUNT,
                    &records::account_list(),
                    after.as_deref(),
                    PAGE,
                )
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (name, stored) in page {
                checked += 1;
                let derived = walk.accounts.remove(&name);
                let account = match AccountRecord::decode(stored.data.as_ref()) {
                    Ok(record) if record.name == name => record.to_account(),
                    Ok(record) => {
                        walk.unreadable("account", &name, format!("names {}", record.name));
                        continue;
                    }
                    Err(error) => {
                        walk.unreadable("account", &name, error.to_string());
                        continue;
                    }
                };
                let (balances, units) = derived
                    .map(|derived| (derived.balances, derived.units))
                    .unwrap_or_default();
                if balances != account.balances {
                    walk.problems.push(Problem::BalanceMismatch {
                        account: name.clone(),
                        stored: account.balances,
                        derived: balances,
                    });
                }
                if account
                    .floor
                    .is_some_and(|floor| account.balances.available() < floor)
                {
                    walk.problems.push(Problem::BelowFloor {
                        account: name.clone(),
                    });
                }
                for unit in units.into_iter().filter(|unit| *unit != account.unit) {
                    walk.problems.push(Problem::UnitMismatch {
                        account: name.clone(),
                        unit,
                    });
                }
            }
        }
        for (account, derived) in std::mem::take(&mut walk.accounts) {
            walk.problems.push(Problem::UnknownAccount {
                account,
                entry: derived.first_entry,
            });
        }
        Ok(checked)
    }

    /// The holds indexed as open must be exactly those the walk left pending.
    async fn check_holds(&self, tenant: &str, walk: &mut Walk<'_>) -> Result<(), LedgerError> {
        let mut open = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .find(tenant, HOLD, &records::open_hold(), after.as_deref(), PAGE)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            open.extend(page.into_iter().map(|(id, _)| id));
        }
        let pending: BTreeSet<String> = walk.open_holds.keys().cloned().collect();
        for hold in open.symmetric_difference(&pending) {
            walk.problems
                .push(Problem::HoldMismatch { hold: hold.clone() });
        }
        Ok(())
    }
}
