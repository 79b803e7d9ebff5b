//! Reconciliation: walks a tenant's entries in chain order, recomputes every hash and every
//! balance from the postings alone, and compares with what is stored. Trusts nothing it checks:
//! the accounts' cached balances, the holds' states and the chain head are all re-derived.
//!
//! It answers while entries keep coming (a busy tenant's chain never stands still): it reads the
//! head, walks up to it, reads the accounts and open holds, reads the head again and walks on to
//! it. Every account and hold was read between the two heads, and an entry commits atomically with
//! the accounts and hold it changes, so each stored state is one the entries produced at some
//! point of that window. An account or hold no entry of the window changed must match exactly; one
//! the window changed must match one of the states it went through.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;

use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::model::{self, Balances, EntryKind, GENESIS, Posting};
use crate::records::{self, ACCOUNT, AccountRecord, EntryRecord, HOLD, SEQUENCE_BLOCK};

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
    /// Whether the account is stored (found when the accounts are read).
    listed: bool,
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
    /// The last sequence of the first head read; entries past it were written while the
    /// accounts and holds were read (`u64::MAX` until the walk gets there).
    settled: u64,
    /// Every balance an account had from the first head on, for each account an entry past it
    /// changed: its stored balance was read at one of those points.
    moving_accounts: BTreeMap<String, Vec<Balances>>,
    /// Holds created or resolved by an entry past the first head: read either way.
    moving_holds: BTreeSet<String>,
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
        let moving = record.sequence > self.settled;
        if moving {
            if matches!(entry.kind, EntryKind::Hold { .. }) {
                self.moving_holds.insert(id.to_owned());
            }
            if let Some(hold) = entry.kind.resolves() {
                self.moving_holds.insert(hold.to_owned());
            }
        }
        for (account, change) in changes {
            let derived = self
                .accounts
                .entry(account.clone())
                .or_insert_with(|| Derived {
                    balances: Balances::default(),
                    units: BTreeSet::new(),
                    first_entry: id.to_owned(),
                    listed: false,
                });
            let Some(balances) = derived.balances.plus(&change) else {
                return self.unreadable("entry", id, "balances overflow");
            };
            if moving {
                let states = self
                    .moving_accounts
                    .entry(account)
                    .or_insert_with(|| vec![derived.balances]);
                states.push(balances);
            }
            derived.balances = balances;
        }
        for posting in &entry.postings {
            if let Some(derived) = self.accounts.get_mut(&posting.account) {
                derived.units.insert(posting.unit.clone());
            }
        }
    }
}

/// What the account and hold reads found, kept apart from the entries' problems (which come
/// first in the report) until the walk has passed the second head.
#[derive(Default)]
struct StoredState {
    accounts_checked: usize,
    /// In the report's order; a balance mismatch of an account the window changed is dropped
    /// when the stored balance is one the account went through.
    problems: Vec<Problem>,
    /// Holds whose stored state (open or not) disagrees with the walk at the first head.
    holds: BTreeSet<String>,
}

impl Ledger {
    /// Proves the tenant's ledger: every entry's hash and link, every entry balanced per unit,
    /// every account's cached balances equal to the sum of its postings (posted and pending),
    /// no account below its floor, every hold's state as the entries say, the head at the last
    /// entry. Answers while entries are being written (see the module docs): an account or hold
    /// changed while it was read is checked against every state it went through meanwhile, and
    /// is checked exactly by the next reconciliation once it rests.
    pub async fn reconcile(&self, tenant: &str) -> Result<ReconcileReport, LedgerError> {
        let mut walk = Walk {
            tenant,
            problems: Vec::new(),
            entries: 0,
            next_sequence: 1,
            previous: None,
            open_holds: BTreeMap::new(),
            accounts: BTreeMap::new(),
            settled: u64::MAX,
            moving_accounts: BTreeMap::new(),
            moving_holds: BTreeSet::new(),
        };
        let (_, first) = self.load_head(tenant).await?;
        self.walk_through(&mut walk, 1, first.last_sequence).await?;
        let mut stored = StoredState::default();
        self.check_accounts(tenant, &mut walk, &mut stored).await?;
        self.check_holds(tenant, &walk, &mut stored).await?;
        // Entries written meanwhile: walked on to the head as it is now.
        let (_, head) = self.load_head(tenant).await?;
        walk.settled = first.last_sequence;
        self.walk_through(&mut walk, first.last_sequence + 1, head.last_sequence)
            .await?;
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
        let moving = &walk.moving_accounts;
        stored.problems.retain(|problem| match problem {
            Problem::BalanceMismatch {
                account, stored, ..
            } => !moving
                .get(account)
                .is_some_and(|states| states.contains(stored)),
            _ => true,
        });
        let mut problems = walk.problems;
        problems.append(&mut stored.problems);
        problems.extend(
            stored
                .holds
                .difference(&walk.moving_holds)
                .map(|hold| Problem::HoldMismatch { hold: hold.clone() }),
        );
        Ok(ReconcileReport {
            accounts_checked: stored.accounts_checked,
            entries_checked: walk.entries,
            problems,
        })
    }

    /// Walks the entries numbered `from..=last` (fewer when some are missing); the blocks are
    /// read as they are now, so entries past `last` are skipped. An entry that does not decode
    /// (it has no number) is reported from the first read of its block only.
    async fn walk_through(
        &self,
        walk: &mut Walk<'_>,
        from: u64,
        last: u64,
    ) -> Result<(), LedgerError> {
        if last < from {
            return Ok(());
        }
        let read_before = (from > 1).then(|| (from - 1) / SEQUENCE_BLOCK);
        for block in from / SEQUENCE_BLOCK..=last / SEQUENCE_BLOCK {
            for (id, record) in self.entry_block(walk.tenant, block).await? {
                let walk_it = match &record {
                    Ok(record) => (from..=last).contains(&record.sequence),
                    Err(_) => read_before != Some(block),
                };
                if walk_it {
                    walk.visit(&id, record);
                }
            }
        }
        Ok(())
    }

    /// Compares every stored account with the walk's sums at the first head.
    async fn check_accounts(
        &self,
        tenant: &str,
        walk: &mut Walk<'_>,
        stored: &mut StoredState,
    ) -> Result<(), LedgerError> {
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
            for (name, record) in page {
                stored.accounts_checked += 1;
                let unreadable = |reason: String| Problem::Unreadable {
                    kind: "account".to_owned(),
                    id: name.clone(),
                    reason,
                };
                let account = match AccountRecord::decode(record.data.as_ref()) {
                    Ok(record) if record.name == name => record.to_account(),
                    Ok(record) => {
                        stored
                            .problems
                            .push(unreadable(format!("names {}", record.name)));
                        continue;
                    }
                    Err(error) => {
                        stored.problems.push(unreadable(error.to_string()));
                        continue;
                    }
                };
                let derived = walk.accounts.get_mut(&name);
                let balances = derived
                    .as_ref()
                    .map_or_else(Balances::default, |d| d.balances);
                if balances != account.balances {
                    stored.problems.push(Problem::BalanceMismatch {
                        account: name.clone(),
                        stored: account.balances,
                        derived: balances,
                    });
                }
                if account
                    .floor
                    .is_some_and(|floor| account.balances.available() < floor)
                {
                    stored.problems.push(Problem::BelowFloor {
                        account: name.clone(),
                    });
                }
                if let Some(derived) = derived {
                    derived.listed = true;
                    for unit in derived.units.iter().filter(|unit| **unit != account.unit) {
                        stored.problems.push(Problem::UnitMismatch {
                            account: name.clone(),
                            unit: unit.clone(),
                        });
                    }
                }
            }
        }
        // Opened before its first entry, so every account the walk has seen so far is stored.
        for (account, derived) in &walk.accounts {
            if !derived.listed {
                stored.problems.push(Problem::UnknownAccount {
                    account: account.clone(),
                    entry: derived.first_entry.clone(),
                });
            }
        }
        Ok(())
    }

    /// The holds indexed as open must be exactly those the walk left pending at the first head
    /// (or be ones an entry written meanwhile created or resolved).
    async fn check_holds(
        &self,
        tenant: &str,
        walk: &Walk<'_>,
        stored: &mut StoredState,
    ) -> Result<(), LedgerError> {
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
        stored
            .holds
            .extend(open.symmetric_difference(&pending).cloned());
        Ok(())
    }
}
