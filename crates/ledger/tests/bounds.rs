//! Amounts at the edges: the largest posting is taken, a larger one is refused, and an entry that
//! would overflow an account is refused with `AmountOutOfRange` and changes nothing — so the
//! account (a tenant's shared issuer, say) still takes the next ordinary entry.

mod common;

use bytes::Bytes;
use common::{ISSUER, TENANT, embedded};
use ledger::Ledger;
use ledger::model::MAX_AMOUNT;
use ledger::records::{self, ACCOUNT, AccountRecord};
use ledger::{Account, Balances, LedgerError, NewEntry};
use prost::Message as _;
use store::Commit;

#[tokio::test]
async fn the_largest_posting_is_taken_and_one_more_unit_is_refused_without_a_write() {
    let (ledger, _) = embedded();
    open(&ledger).await;
    let largest = NewEntry::new("e-max", 1).transfer(ISSUER, "member:a", "points", MAX_AMOUNT);
    ledger.post(TENANT, largest).await.unwrap();
    let beyond =
        NewEntry::new("e-beyond", 2).transfer(ISSUER, "member:a", "points", MAX_AMOUNT + 1);
    assert!(matches!(
        ledger.post(TENANT, beyond).await,
        Err(LedgerError::AmountOutOfRange { .. })
    ));
    assert!(ledger.entry(TENANT, "e-beyond").await.unwrap().is_none());
    let balance = ledger.account(TENANT, "member:a").await.unwrap().unwrap();
    assert_eq!(balance.balances.posted, MAX_AMOUNT);
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}

#[tokio::test]
async fn an_entry_that_would_overflow_the_issuer_is_refused_and_the_next_ordinary_one_is_taken() {
    let (ledger, store) = embedded();
    open(&ledger).await;
    // The issuer as a lifetime of issuing would leave it: 10 points short of i64::MIN. (Written
    // straight to the store: it would take ~9,000 maximal entries to get there.)
    let stored = store
        .load(&records::key(TENANT, ACCOUNT, ISSUER))
        .await
        .unwrap()
        .unwrap();
    let near_minimum = Account {
        name: ISSUER.into(),
        unit: "points".into(),
        floor: None,
        balances: Balances {
            posted: i64::MIN + 10,
            ..Balances::default()
        },
    };
    store
        .commit(Commit {
            key: records::key(TENANT, ACCOUNT, ISSUER),
            expected_version: stored.version,
            data: Bytes::from(AccountRecord::from_account(&near_minimum).encode_to_vec()),
            index: vec![records::account_list()],
            events: Vec::new(),
            idempotency: None,
        })
        .await
        .unwrap();

    let overflowing = NewEntry::new("e-big", 1).transfer(ISSUER, "member:a", "points", 11);
    let refused = ledger.post(TENANT, overflowing).await;
    assert!(
        matches!(&refused, Err(LedgerError::AmountOutOfRange { account, .. }) if account == ISSUER),
        "{refused:?}"
    );
    assert!(ledger.entry(TENANT, "e-big").await.unwrap().is_none());
    let issuer = ledger.account(TENANT, ISSUER).await.unwrap().unwrap();
    assert_eq!(issuer.balances.posted, i64::MIN + 10, "nothing changed");
    let member = ledger.account(TENANT, "member:a").await.unwrap().unwrap();
    assert_eq!(member.balances.posted, 0);

    let ordinary = NewEntry::new("e-small", 2).transfer(ISSUER, "member:a", "points", 10);
    ledger.post(TENANT, ordinary).await.unwrap();
    let issuer = ledger.account(TENANT, ISSUER).await.unwrap().unwrap();
    assert_eq!(issuer.balances.posted, i64::MIN);
    // A hold against the exhausted issuer overflows its pending amounts' available balance too.
    let hold = NewEntry::new("h-1", 3).transfer(ISSUER, "member:a", "points", 1);
    assert!(matches!(
        ledger.hold(TENANT, hold, 10).await,
        Err(LedgerError::AmountOutOfRange { .. })
    ));
}

/// The unconstrained issuer and a member that may not go negative.
async fn open(ledger: &Ledger) {
    ledger
        .open_account(TENANT, ISSUER, "points", None)
        .await
        .unwrap();
    ledger
        .open_account(TENANT, "member:a", "points", Some(0))
        .await
        .unwrap();
}
