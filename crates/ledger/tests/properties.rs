//! Property: any sequence of transfers, holds, posts, voids and expiries between a few accounts
//! behaves like a simple model (same successes and refusals, same balances), leaves every entry
//! balanced and every account at or above its floor, and reconciles clean; then editing any one
//! stored entry makes `reconcile` name it first.

mod common;

use std::collections::BTreeMap;

use common::{TENANT, embedded, tamper};
use ledger::{HoldStatus, Ledger, LedgerError, NewEntry, Problem};
use proptest::prelude::*;

/// The accounts: two members that may not go negative, one with a 50-point overdraft, and the
/// unconstrained issuer.
const ACCOUNTS: [(&str, Option<i64>); 4] = [
    ("member:a:points", Some(0)),
    ("member:b:points", Some(0)),
    ("member:c:points", Some(-50)),
    ("loyalty:issued:points", None),
];

#[derive(Debug, Clone)]
enum Op {
    Transfer {
        from: usize,
        to: usize,
        amount: i64,
    },
    Hold {
        from: usize,
        to: usize,
        amount: i64,
        ttl: i64,
    },
    /// `part`: post this much of the hold (clamped), or all of it.
    Post {
        hold: usize,
        part: Option<i64>,
    },
    Void {
        hold: usize,
    },
    Expire,
    Advance {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    prop_oneof![
        4 => (account.clone(), account.clone(), 1..80i64)
            .prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        3 => (account.clone(), account, 1..80i64, 1..20i64)
            .prop_map(|(from, to, amount, ttl)| Op::Hold { from, to, amount, ttl }),
        2 => (any::<usize>(), proptest::option::of(1..80i64))
            .prop_map(|(hold, part)| Op::Post { hold, part }),
        1 => any::<usize>().prop_map(|hold| Op::Void { hold }),
        1 => Just(Op::Expire),
        1 => (1..15i64).prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Model {
    posted: i64,
    pending_debits: i64,
    pending_credits: i64,
}

struct ModelHold {
    id: String,
    from: usize,
    to: usize,
    amount: i64,
    expires_at: i64,
    status: HoldStatus,
}

/// The model's verdict on taking `amount` from `from`'s available balance.
fn allowed(accounts: &[Model], from: usize, amount: i64) -> bool {
    ACCOUNTS[from]
        .1
        .is_none_or(|floor| accounts[from].posted - accounts[from].pending_debits - amount >= floor)
}

fn run(ops: Vec<Op>, tamper_pick: usize) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (ledger, store) = embedded();
        let mut accounts = [Model::default(); ACCOUNTS.len()];
        let mut holds: Vec<ModelHold> = Vec::new();
        for (name, floor) in ACCOUNTS {
            ledger
                .open_account(TENANT, name, "points", floor)
                .await
                .expect("open");
        }
        // Seed the members so that there is something to move (and to tamper with).
        let issuer = ACCOUNTS.len() - 1;
        for member in 0..issuer {
            let seed = NewEntry::new(format!("seed-{member}"), 0).transfer(
                ACCOUNTS[issuer].0,
                ACCOUNTS[member].0,
                "points",
                100,
            );
            ledger.post(TENANT, seed).await.expect("seed");
            accounts[member].posted += 100;
            accounts[issuer].posted -= 100;
        }

        let mut now = 1;
        for (step, op) in ops.into_iter().enumerate() {
            now += 1;
            let id = format!("e-{step}");
            match op {
                Op::Transfer { from, to, amount } => {
                    let entry = NewEntry::new(&id, now).transfer(
                        ACCOUNTS[from].0,
                        ACCOUNTS[to].0,
                        "points",
                        amount,
                    );
                    let outcome = ledger.post(TENANT, entry).await;
                    // A posted self-transfer nets to nothing, so no floor can refuse it.
                    if from == to || allowed(&accounts, from, amount) {
                        prop_assert!(outcome.is_ok(), "{id}: {outcome:?}");
                        accounts[from].posted -= amount;
                        accounts[to].posted += amount;
                    } else {
                        prop_assert!(
                            matches!(outcome, Err(LedgerError::InsufficientFunds { .. })),
                            "{id}: {outcome:?}"
                        );
                    }
                }
                Op::Hold {
                    from,
                    to,
                    amount,
                    ttl,
                } => {
                    let entry = NewEntry::new(&id, now).transfer(
                        ACCOUNTS[from].0,
                        ACCOUNTS[to].0,
                        "points",
                        amount,
                    );
                    let outcome = ledger.hold(TENANT, entry, now + ttl).await;
                    // A self-hold still reserves its debit: pending credits are not spendable.
                    if allowed(&accounts, from, amount) {
                        prop_assert!(outcome.is_ok(), "{id}: {outcome:?}");
                        accounts[from].pending_debits += amount;
                        accounts[to].pending_credits += amount;
                        holds.push(ModelHold {
                            id: id.clone(),
                            from,
                            to,
                            amount,
                            expires_at: now + ttl,
                            status: HoldStatus::Pending,
                        });
                    } else {
                        prop_assert!(
                            matches!(outcome, Err(LedgerError::InsufficientFunds { .. })),
                            "{id}: {outcome:?}"
                        );
                    }
                }
                Op::Post { hold, part } => {
                    let count = holds.len().max(1);
                    let Some(hold) = holds.get_mut(hold % count) else {
                        continue;
                    };
                    let amount = part.map_or(hold.amount, |part| part.min(hold.amount));
                    let mut entry = NewEntry::new(&id, now);
                    if part.is_some() {
                        entry = entry.transfer(
                            ACCOUNTS[hold.from].0,
                            ACCOUNTS[hold.to].0,
                            "points",
                            amount,
                        );
                    }
                    let outcome = ledger.post_hold(TENANT, &hold.id, entry).await;
                    let lapsed = now >= hold.expires_at;
                    match hold.status {
                        HoldStatus::Pending if !lapsed => {
                            prop_assert!(outcome.is_ok(), "{id}: {outcome:?}");
                            accounts[hold.from].pending_debits -= hold.amount;
                            accounts[hold.to].pending_credits -= hold.amount;
                            accounts[hold.from].posted -= amount;
                            accounts[hold.to].posted += amount;
                            hold.status = HoldStatus::Posted;
                        }
                        HoldStatus::Pending | HoldStatus::Expired => prop_assert!(
                            matches!(outcome, Err(LedgerError::HoldExpired { .. })),
                            "{id}: {outcome:?}"
                        ),
                        status => prop_assert_eq!(
                            outcome,
                            Err(LedgerError::HoldNotPending {
                                hold: hold.id.clone(),
                                status
                            })
                        ),
                    }
                }
                Op::Void { hold } => {
                    let count = holds.len().max(1);
                    let Some(hold) = holds.get_mut(hold % count) else {
                        continue;
                    };
                    let outcome = ledger
                        .void_hold(TENANT, &hold.id, NewEntry::new(&id, now))
                        .await;
                    if hold.status == HoldStatus::Pending {
                        prop_assert!(outcome.is_ok(), "{id}: {outcome:?}");
                        accounts[hold.from].pending_debits -= hold.amount;
                        accounts[hold.to].pending_credits -= hold.amount;
                        hold.status = HoldStatus::Voided;
                    } else {
                        prop_assert_eq!(
                            outcome,
                            Err(LedgerError::HoldNotPending {
                                hold: hold.id.clone(),
                                status: hold.status
                            })
                        );
                    }
                }
                Op::Expire => {
                    let expired = ledger.expire_holds(TENANT, now).await.expect("expire");
                    let mut expected = Vec::new();
                    for hold in holds.iter_mut() {
                        if hold.status == HoldStatus::Pending && hold.expires_at <= now {
                            accounts[hold.from].pending_debits -= hold.amount;
                            accounts[hold.to].pending_credits -= hold.amount;
                            hold.status = HoldStatus::Expired;
                            expected.push(format!("{}.expired", hold.id));
                        }
                    }
                    let mut got: Vec<String> = expired.into_iter().map(|entry| entry.id).collect();
                    got.sort();
                    expected.sort();
                    prop_assert_eq!(got, expected);
                }
                Op::Advance { ms } => now += ms,
            }
        }

        check_ledger(&ledger, &accounts).await?;

        // Editing any one stored entry is noticed, and the entry named first.
        let entries = ledger.entries(TENANT, 0, 10_000).await.expect("entries");
        let victim = &entries[tamper_pick % entries.len()].id;
        tamper(&store, victim, false).await;
        let report = ledger.reconcile(TENANT).await.expect("reconcile");
        prop_assert_eq!(
            report.problems.first(),
            Some(&Problem::HashMismatch {
                entry: victim.clone()
            }),
            "{:?}",
            report
        );
        Ok(())
    })
}

/// Balances as modelled, every entry balanced, every floor kept, reconcile clean.
async fn check_ledger(ledger: &Ledger, accounts: &[Model]) -> Result<(), TestCaseError> {
    for ((name, floor), model) in ACCOUNTS.iter().zip(accounts) {
        let account = ledger
            .account(TENANT, name)
            .await
            .expect("account")
            .expect("opened");
        let balances = account.balances;
        prop_assert_eq!(
            (
                balances.posted,
                balances.pending_debits,
                balances.pending_credits
            ),
            (model.posted, model.pending_debits, model.pending_credits),
            "{}",
            name
        );
        if let Some(floor) = floor {
            prop_assert!(balances.available() >= *floor, "{name} below its floor");
        }
    }
    for entry in ledger.entries(TENANT, 0, 10_000).await.expect("entries") {
        let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
        for posting in &entry.postings {
            *sums.entry(&posting.unit).or_default() += posting.amount;
        }
        prop_assert!(
            sums.values().all(|sum| *sum == 0),
            "{} unbalanced",
            entry.id
        );
    }
    let report = ledger.reconcile(TENANT).await.expect("reconcile");
    prop_assert!(report.is_clean(), "{:?}", report);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_ledger_activity_stays_balanced_within_floors_and_reconciles(
        ops in proptest::collection::vec(op(), 1..40),
        tamper_pick in any::<usize>(),
    ) {
        run(ops, tamper_pick)?;
    }
}
