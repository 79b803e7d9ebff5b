//! Concurrency and reconciliation on both store engines: the embedded one in memory and
//! MongoDB (SecantusDB, a single-node replica set, so `commit_all` runs as a transaction).

mod common;

use std::sync::Arc;

use common::{ISSUER, TENANT, embedded, funded, mongodb, posted, tamper};
use ledger::{HoldStatus, Ledger, LedgerError, NewEntry, Problem};
use store::Store;

const MEMBERS: [&str; 3] = ["member:a:points", "member:b:points", "member:c:points"];

/// Runs each scenario as a test on both engines.
macro_rules! on_both_engines {
    ($($scenario:ident),* $(,)?) => {
        mod on_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let (ledger, store) = super::embedded();
                    super::$scenario(ledger, store).await;
                }
            )*
        }
        mod on_mongodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let (ledger, store) = super::mongodb().await;
                    super::$scenario(ledger, store).await;
                }
            )*
        }
    };
}

on_both_engines!(
    concurrent_transfers_conserve_totals_and_keep_the_chain_intact,
    racing_post_and_void_resolve_a_hold_once,
    reconcile_is_clean_then_names_the_edited_entry,
);

async fn concurrent_transfers_conserve_totals_and_keep_the_chain_intact(
    ledger: Ledger,
    _store: Arc<dyn Store>,
) {
    const FUNDS: i64 = 1_000;
    funded(&ledger, &MEMBERS, FUNDS).await;
    let mut tasks = Vec::new();
    for task in 0..8usize {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            for round in 0..25usize {
                let from = MEMBERS[(task + round) % 3];
                let to = MEMBERS[(task + round + 1 + round % 2) % 3];
                // Big enough that some transfers find the source short.
                let amount = ((task * 37 + round * 101) % 400 + 1) as i64;
                let entry = NewEntry::new(format!("t{task}-r{round}"), 100 + round as i64)
                    .transfer(from, to, "points", amount);
                match ledger.post(TENANT, entry).await {
                    Ok(_) => written += 1,
                    Err(LedgerError::InsufficientFunds { .. }) => {}
                    Err(other) => panic!("transfer failed: {other}"),
                }
            }
            written
        }));
    }
    let mut written = 0;
    for task in tasks {
        written += task.await.expect("task");
    }
    assert!(written > 100, "most transfers went through: {written}");

    let mut total = 0;
    for member in MEMBERS {
        let balance = posted(&ledger, member).await;
        assert!(balance >= 0, "{member} went negative: {balance}");
        total += balance;
    }
    assert_eq!(total, 3 * FUNDS, "points were created or lost");
    let entries = ledger.entries(TENANT, 0, 10_000).await.expect("entries");
    assert_eq!(entries.len() as u64, 3 + written);
    assert!(
        entries
            .iter()
            .enumerate()
            .all(|(i, entry)| entry.sequence == i as u64 + 1),
        "sequences run 1..n without gaps"
    );
    assert!(
        entries
            .windows(2)
            .all(|pair| pair[1].prev_hash == pair[0].hash),
        "each entry chains to the one before"
    );
    let report = ledger.reconcile(TENANT).await.expect("reconcile");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.entries_checked, 3 + written);
    assert_eq!(report.accounts_checked, 4);
}

async fn racing_post_and_void_resolve_a_hold_once(ledger: Ledger, _store: Arc<dyn Store>) {
    funded(&ledger, &MEMBERS[..1], 100).await;
    let reserve = NewEntry::new("hold-1", 10).transfer(MEMBERS[0], ISSUER, "points", 60);
    ledger.hold(TENANT, reserve, 10_000).await.expect("hold");
    let post = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            ledger
                .post_hold(TENANT, "hold-1", NewEntry::new("capture", 20))
                .await
        })
    };
    let void = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            ledger
                .void_hold(TENANT, "hold-1", NewEntry::new("void", 20))
                .await
        })
    };
    let (post, void) = (post.await.expect("post"), void.await.expect("void"));
    let state = ledger
        .hold_state(TENANT, "hold-1")
        .await
        .expect("state")
        .expect("hold");
    match state.status {
        HoldStatus::Posted => {
            assert!(post.is_ok());
            assert!(matches!(void, Err(LedgerError::HoldNotPending { .. })));
            assert_eq!(posted(&ledger, MEMBERS[0]).await, 40);
        }
        HoldStatus::Voided => {
            assert!(void.is_ok());
            assert!(matches!(post, Err(LedgerError::HoldNotPending { .. })));
            assert_eq!(posted(&ledger, MEMBERS[0]).await, 100);
        }
        other => panic!("hold is {other:?}"),
    }
    let report = ledger.reconcile(TENANT).await.expect("reconcile");
    assert!(report.is_clean(), "{report:?}");
}

async fn reconcile_is_clean_then_names_the_edited_entry(ledger: Ledger, store: Arc<dyn Store>) {
    funded(&ledger, &MEMBERS, 100).await;
    let reserve = NewEntry::new("hold-1", 10).transfer(MEMBERS[0], MEMBERS[1], "points", 60);
    ledger.hold(TENANT, reserve, 1_000).await.expect("hold");
    let gift = NewEntry::new("gift-1", 11).transfer(MEMBERS[1], MEMBERS[2], "points", 10);
    ledger.post(TENANT, gift).await.expect("gift");
    ledger.expire_holds(TENANT, 2_000).await.expect("expire");
    let clean = ledger.reconcile(TENANT).await.expect("reconcile");
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.entries_checked, clean.accounts_checked), (6, 4));

    // Editing the hold changes what its expiry released: named first, by id.
    tamper(&store, "hold-1", false).await;
    let report = ledger.reconcile(TENANT).await.expect("reconcile");
    assert_eq!(
        report.problems.first(),
        Some(&Problem::HashMismatch {
            entry: "hold-1".into()
        }),
        "{report:?}"
    );
}
