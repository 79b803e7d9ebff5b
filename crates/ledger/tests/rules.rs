//! The ledger's rules, one behaviour per test, on the embedded store in memory.

mod common;

use common::{ISSUER, TENANT, balances, embedded, funded, posted, tamper};
use ledger::{EntryKind, HoldStatus, LedgerError, NewEntry, Problem, Write};

const ALICE: &str = "member:alice:points";
const BOB: &str = "member:bob:points";

#[tokio::test]
async fn an_unbalanced_entry_is_refused_and_writes_nothing() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    let lopsided = NewEntry::new("e-1", 2)
        .posting(ALICE, "points", -10)
        .posting(BOB, "points", 9);
    assert_eq!(
        ledger.post(TENANT, lopsided).await,
        Err(LedgerError::Unbalanced {
            unit: "points".into()
        })
    );
    // Balanced in total but not per unit is unbalanced too.
    ledger
        .open_account(TENANT, "psp:USD", "USD", None)
        .await
        .unwrap();
    let mixed = NewEntry::new("e-2", 2)
        .posting(ALICE, "points", -10)
        .posting("psp:USD", "USD", 10);
    assert!(matches!(
        ledger.post(TENANT, mixed).await,
        Err(LedgerError::Unbalanced { .. })
    ));
    assert_eq!(ledger.entry(TENANT, "e-1").await.unwrap(), None);
    assert_eq!(posted(&ledger, ALICE).await, 100);
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn repeating_an_entry_with_the_same_content_returns_the_original() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    let gift = || {
        NewEntry::new("gift-1", 5)
            .transfer(ALICE, BOB, "points", 30)
            .metadata("reason", "birthday")
    };
    let first = ledger.post(TENANT, gift()).await.unwrap();
    let again = ledger.post(TENANT, gift()).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(posted(&ledger, ALICE).await, 70, "moved once");
    assert_eq!(posted(&ledger, BOB).await, 130);
    let report = ledger.reconcile(TENANT).await.unwrap();
    assert_eq!(report.entries_checked, 3, "two fundings and one gift");
}

#[tokio::test]
async fn reusing_an_entry_id_with_different_content_is_a_conflict() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    ledger
        .post(
            TENANT,
            NewEntry::new("gift-1", 5).transfer(ALICE, BOB, "points", 30),
        )
        .await
        .unwrap();
    let conflict = Err(LedgerError::EntryConflict {
        id: "gift-1".into(),
    });
    let other_amount = NewEntry::new("gift-1", 5).transfer(ALICE, BOB, "points", 31);
    assert_eq!(ledger.post(TENANT, other_amount).await, conflict);
    let other_time = NewEntry::new("gift-1", 6).transfer(ALICE, BOB, "points", 30);
    assert_eq!(ledger.post(TENANT, other_time).await, conflict);
    // The same id as a hold is other content too.
    let as_hold = NewEntry::new("gift-1", 5).transfer(ALICE, BOB, "points", 30);
    assert_eq!(ledger.hold(TENANT, as_hold, 100).await, conflict);
    assert_eq!(posted(&ledger, ALICE).await, 70);
}

#[tokio::test]
async fn a_zero_floor_refuses_going_negative() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    let too_much = NewEntry::new("redeem-1", 2).transfer(ALICE, ISSUER, "points", 101);
    assert_eq!(
        ledger.post(TENANT, too_much).await,
        Err(LedgerError::InsufficientFunds {
            account: ALICE.into(),
            available: 100,
            required: 101
        })
    );
    // Exactly the balance is fine; crediting an account at its floor is always fine.
    let all = NewEntry::new("redeem-2", 3).transfer(ALICE, ISSUER, "points", 100);
    ledger.post(TENANT, all).await.unwrap();
    assert_eq!(posted(&ledger, ALICE).await, 0);
    let back = NewEntry::new("refund-2", 4).transfer(ISSUER, ALICE, "points", 1);
    ledger.post(TENANT, back).await.unwrap();
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn a_negative_floor_allows_an_overdraft_down_to_the_limit() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[], 0).await;
    let overdraft = "member:carol:points";
    ledger
        .open_account(TENANT, overdraft, "points", Some(-500))
        .await
        .unwrap();
    let spend =
        |id: &str, amount| NewEntry::new(id, 2).transfer(overdraft, ISSUER, "points", amount);
    ledger.post(TENANT, spend("s-1", 300)).await.unwrap();
    ledger.post(TENANT, spend("s-2", 200)).await.unwrap();
    assert_eq!(posted(&ledger, overdraft).await, -500);
    assert_eq!(
        ledger.post(TENANT, spend("s-3", 1)).await,
        Err(LedgerError::InsufficientFunds {
            account: overdraft.into(),
            available: 0,
            required: 1
        })
    );
    // The account's floor is part of its identity: reopening with another one is refused.
    assert_eq!(
        ledger
            .open_account(TENANT, overdraft, "points", Some(0))
            .await,
        Err(LedgerError::AccountConflict {
            account: overdraft.into()
        })
    );
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn postings_name_opened_accounts_in_their_own_unit() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE], 100).await;
    let typo = NewEntry::new("e-1", 2).transfer(ALICE, "member:alcie:points", "points", 5);
    assert_eq!(
        ledger.post(TENANT, typo).await,
        Err(LedgerError::UnknownAccount {
            account: "member:alcie:points".into()
        })
    );
    let dollars = NewEntry::new("e-2", 2).transfer(ALICE, ISSUER, "USD", 5);
    assert!(matches!(
        ledger.post(TENANT, dollars).await,
        Err(LedgerError::UnitMismatch { .. })
    ));
    let zero = NewEntry::new("e-3", 2).transfer(ALICE, ISSUER, "points", 0);
    assert!(matches!(
        ledger.post(TENANT, zero).await,
        Err(LedgerError::Invalid(_))
    ));
    assert_eq!(ledger.entries(TENANT, 0, 100).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_hold_reserves_funds_until_it_is_posted() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE], 100).await;
    let reserve = NewEntry::new("hold-1", 10).transfer(ALICE, ISSUER, "points", 80);
    ledger.hold(TENANT, reserve, 1_000).await.unwrap();
    let held = balances(&ledger, ALICE).await;
    assert_eq!(
        (held.posted, held.pending_debits, held.available()),
        (100, 80, 20)
    );
    // The reserved points cannot be spent twice.
    let spend = NewEntry::new("spend-1", 11).transfer(ALICE, ISSUER, "points", 21);
    assert!(matches!(
        ledger.post(TENANT, spend).await,
        Err(LedgerError::InsufficientFunds { available: 20, .. })
    ));

    let post = || NewEntry::new("capture-1", 20);
    let captured = ledger.post_hold(TENANT, "hold-1", post()).await.unwrap();
    assert_eq!(
        captured.kind,
        EntryKind::HoldPosted {
            hold_id: "hold-1".into()
        }
    );
    let after = balances(&ledger, ALICE).await;
    assert_eq!((after.posted, after.pending_debits), (20, 0));
    assert_eq!(
        ledger.post_hold(TENANT, "hold-1", post()).await,
        Ok(captured),
        "idempotent"
    );
    let state = ledger.hold_state(TENANT, "hold-1").await.unwrap().unwrap();
    assert_eq!(state.status, HoldStatus::Posted);
    assert_eq!(state.resolved_by.as_deref(), Some("capture-1"));
    // Each hold resolves once.
    assert_eq!(
        ledger
            .void_hold(TENANT, "hold-1", NewEntry::new("void-1", 21))
            .await,
        Err(LedgerError::HoldNotPending {
            hold: "hold-1".into(),
            status: HoldStatus::Posted
        })
    );
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn a_partial_post_moves_less_and_releases_the_rest() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE], 100).await;
    let reserve = NewEntry::new("hold-1", 10).transfer(ALICE, ISSUER, "points", 80);
    ledger.hold(TENANT, reserve, 1_000).await.unwrap();
    let more = NewEntry::new("capture-1", 20).transfer(ALICE, ISSUER, "points", 81);
    assert!(matches!(
        ledger.post_hold(TENANT, "hold-1", more).await,
        Err(LedgerError::ExceedsHold { hold, .. }) if hold == "hold-1"
    ));
    let backwards = NewEntry::new("capture-1", 20).transfer(ISSUER, ALICE, "points", 5);
    assert!(matches!(
        ledger.post_hold(TENANT, "hold-1", backwards).await,
        Err(LedgerError::ExceedsHold { .. })
    ));
    let less = NewEntry::new("capture-1", 20).transfer(ALICE, ISSUER, "points", 50);
    ledger.post_hold(TENANT, "hold-1", less).await.unwrap();
    let after = balances(&ledger, ALICE).await;
    assert_eq!(
        (after.posted, after.pending_debits, after.available()),
        (50, 0, 50)
    );
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn voiding_a_hold_releases_the_funds_and_it_can_no_longer_be_posted() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE], 100).await;
    let reserve = NewEntry::new("hold-1", 10).transfer(ALICE, ISSUER, "points", 80);
    ledger.hold(TENANT, reserve, 1_000).await.unwrap();
    let void = ledger
        .void_hold(TENANT, "hold-1", NewEntry::new("void-1", 20))
        .await
        .unwrap();
    assert!(void.postings.is_empty());
    let after = balances(&ledger, ALICE).await;
    assert_eq!(
        (after.posted, after.pending_debits, after.available()),
        (100, 0, 100)
    );
    assert_eq!(
        ledger
            .post_hold(TENANT, "hold-1", NewEntry::new("capture-1", 21))
            .await,
        Err(LedgerError::HoldNotPending {
            hold: "hold-1".into(),
            status: HoldStatus::Voided
        })
    );
    assert_eq!(
        ledger
            .post_hold(TENANT, "gift-1", NewEntry::new("capture-2", 21))
            .await,
        Err(LedgerError::UnknownHold {
            hold: "gift-1".into()
        })
    );
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn an_expired_hold_returns_the_funds_and_can_no_longer_be_posted() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    for (id, expires_at) in [("hold-early", 1_000), ("hold-late", 5_000)] {
        let entry = NewEntry::new(id, 10).transfer(ALICE, BOB, "points", 30);
        ledger.hold(TENANT, entry, expires_at).await.unwrap();
    }
    assert_eq!(balances(&ledger, ALICE).await.available(), 40);
    assert_eq!(balances(&ledger, BOB).await.pending_credits, 60);

    // From its expiry on a pending hold cannot be posted, even before the sweep.
    assert_eq!(
        ledger
            .post_hold(TENANT, "hold-early", NewEntry::new("capture-1", 1_000))
            .await,
        Err(LedgerError::HoldExpired {
            hold: "hold-early".into()
        })
    );
    let swept = ledger.expire_holds(TENANT, 1_000).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].id, "hold-early.expired");
    assert_eq!(
        swept[0].kind,
        EntryKind::HoldExpired {
            hold_id: "hold-early".into()
        }
    );
    assert!(
        ledger.expire_holds(TENANT, 1_000).await.unwrap().is_empty(),
        "once"
    );
    assert_eq!(balances(&ledger, ALICE).await.available(), 70);
    assert_eq!(balances(&ledger, BOB).await.pending_credits, 30);
    assert_eq!(
        ledger
            .post_hold(TENANT, "hold-early", NewEntry::new("capture-2", 999))
            .await,
        Err(LedgerError::HoldExpired {
            hold: "hold-early".into()
        })
    );
    let state = ledger
        .hold_state(TENANT, "hold-early")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.status, HoldStatus::Expired);
    // The later hold is still there to post.
    ledger
        .post_hold(TENANT, "hold-late", NewEntry::new("capture-3", 2_000))
        .await
        .unwrap();
    assert_eq!(posted(&ledger, BOB).await, 130);
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn reconcile_names_an_edited_entry_and_a_re_hashed_one_by_the_broken_link() {
    let (ledger, store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    for i in 0..4 {
        let gift = NewEntry::new(format!("gift-{i}"), 10 + i).transfer(ALICE, BOB, "points", 5);
        ledger.post(TENANT, gift).await.unwrap();
    }
    let clean = ledger.reconcile(TENANT).await.unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.entries_checked, clean.accounts_checked), (6, 3));

    tamper(&store, "gift-1", false).await;
    let report = ledger.reconcile(TENANT).await.unwrap();
    assert_eq!(
        report.problems.first(),
        Some(&Problem::HashMismatch {
            entry: "gift-1".into()
        }),
        "{report:?}"
    );
    assert!(report.problems.contains(&Problem::Unbalanced {
        entry: "gift-1".into(),
        unit: "points".into()
    }));
    assert!(report.problems.iter().any(
        |problem| matches!(problem, Problem::BalanceMismatch { account, .. } if account == ALICE)
    ));

    // Whoever re-hashes the edited entry breaks the next link instead.
    tamper(&store, "gift-2", true).await;
    let report = ledger.reconcile(TENANT).await.unwrap();
    assert!(
        report.problems.contains(&Problem::ChainBroken {
            entry: "gift-3".into(),
            previous: Some("gift-2".into())
        }),
        "{report:?}"
    );
}

/// A service's own aggregate, written with an entry by `write_with`.
fn note(version: u64, text: &str) -> store::Commit {
    store::Commit {
        key: store::AggregateKey::new(TENANT, "note", "n-1"),
        expected_version: version,
        data: bytes::Bytes::from(text.to_owned()),
        index: Vec::new(),
        events: Vec::new(),
        idempotency: None,
    }
}

#[tokio::test]
async fn write_with_commits_the_entry_and_the_other_changes_together_or_not_at_all() {
    let (ledger, store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    let key = store::AggregateKey::new(TENANT, "note", "n-1");
    let gift = |id: &str| Write::Post(NewEntry::new(id, 5).transfer(ALICE, BOB, "points", 30));

    let written = ledger
        .write_with(TENANT, gift("g-1"), vec![note(0, "first")])
        .await
        .unwrap();
    assert!(written.new);
    assert_eq!(store.load(&key).await.unwrap().unwrap().data, "first");
    assert_eq!(posted(&ledger, ALICE).await, 70);

    // A stale version of the other aggregate: a conflict, and the entry is not written either.
    let stale = ledger
        .write_with(TENANT, gift("g-2"), vec![note(0, "second")])
        .await;
    assert!(
        matches!(
            stale,
            Err(LedgerError::Store(store::StoreError::Conflict { .. }))
        ),
        "{stale:?}"
    );
    assert_eq!(ledger.entry(TENANT, "g-2").await.unwrap(), None);
    assert_eq!(posted(&ledger, ALICE).await, 70);

    // A repeat of the first entry writes nothing, not even the other changes.
    let repeat = ledger
        .write_with(TENANT, gift("g-1"), vec![note(1, "repeat")])
        .await
        .unwrap();
    assert!(!repeat.new);
    assert_eq!(repeat.entry, written.entry);
    assert_eq!(store.load(&key).await.unwrap().unwrap().data, "first");
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn expiring_one_hold_needs_its_expiry_to_have_passed() {
    let (ledger, _store) = embedded();
    funded(&ledger, &[ALICE, BOB], 100).await;
    ledger
        .hold(
            TENANT,
            NewEntry::new("h-1", 10).transfer(ALICE, BOB, "points", 40),
            50,
        )
        .await
        .unwrap();
    let early = Write::ExpireHold {
        hold_id: "h-1".into(),
        now: 49,
    };
    assert!(matches!(
        ledger.write_with(TENANT, early, Vec::new()).await,
        Err(LedgerError::Invalid(_))
    ));
    let due = Write::ExpireHold {
        hold_id: "h-1".into(),
        now: 50,
    };
    let written = ledger.write_with(TENANT, due, Vec::new()).await.unwrap();
    assert_eq!(written.entry.id, "h-1.expired");
    assert_eq!(
        ledger
            .hold_state(TENANT, "h-1")
            .await
            .unwrap()
            .unwrap()
            .status,
        HoldStatus::Expired
    );
    assert_eq!(balances(&ledger, ALICE).await.available(), 100);
}
