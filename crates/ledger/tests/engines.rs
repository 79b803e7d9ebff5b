//! Concurrency and reconciliation on both store engines: the embedded one in memory and
//! MongoDB (SecantusDB, a single-node replica set, so `commit_all` runs as a transaction).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{ISSUER, TENANT, embedded, funded, mongodb, posted, tamper};
use ledger::{Entry, HoldStatus, Ledger, LedgerError, NewEntry, Problem, Write};
use store::{AggregateKey, Commit, IdempotencyRecord, Store, StoreError};

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
    an_entry_and_the_idempotency_record_made_from_it_commit_together_or_not_at_all,
    a_burst_of_appends_batches_and_each_append_stands_or_fails_alone,
    two_replicas_appending_to_one_chain_keep_it_numbered_and_linked,
    reconcile_answers_while_entries_keep_coming_and_still_names_an_edited_account,
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
    let report = assert_chain_intact(&ledger, 3 + written).await;
    assert_eq!(report.entries_checked, 3 + written);
    assert_eq!(report.accounts_checked, 4);
}

/// The tenant's chain holds `count` entries numbered 1..=count, each linked to the one before,
/// and reconciles clean; returns the reconciliation's report.
async fn assert_chain_intact(ledger: &Ledger, count: u64) -> ledger::ReconcileReport {
    let entries = ledger.entries(TENANT, 0, 10_000).await.expect("entries");
    assert_eq!(entries.len() as u64, count);
    assert!(
        entries
            .iter()
            .enumerate()
            .all(|(i, entry)| entry.sequence == i as u64 + 1),
        "sequences run 1..n without gaps"
    );
    let unlinked: Vec<_> = entries
        .windows(2)
        .filter(|pair| pair[1].prev_hash != pair[0].hash)
        .map(|pair| pair[1].id.clone())
        .collect();
    assert!(
        unlinked.is_empty(),
        "entries not linked to the one before: {unlinked:?}"
    );
    let report = ledger.reconcile(TENANT).await.expect("reconcile");
    assert!(report.is_clean(), "{report:?}");
    report
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

const ADJUST: &str = "commerce.loyalty.v1.PointsService/AdjustPoints";

/// A caller's response recorded under `key` by `write_recording`: here just the hash the chain
/// gave the entry, known only inside the write.
fn record_of(key: &str) -> ledger::EntryRecorder {
    let key = key.to_owned();
    std::sync::Arc::new(move |entry: &Entry| {
        Some(IdempotencyRecord {
            tenant: TENANT.into(),
            method: ADJUST.into(),
            key: key.clone(),
            request_digest: Bytes::from_static(b"digest"),
            response: Bytes::copy_from_slice(&entry.hash),
            expires_at: store::unix_now() + 3600,
        })
    })
}

/// A service's own aggregate, written with an entry.
fn note(version: u64, text: &str) -> Commit {
    Commit {
        key: AggregateKey::new(TENANT, "note", "n-1"),
        expected_version: version,
        data: Bytes::from(text.to_owned()),
        index: Vec::new(),
        events: Vec::new(),
        idempotency: None,
    }
}

/// On MongoDB the record is written in the transaction of the entry (after it), so a later commit
/// of the batch that fails must take the record back with it.
async fn an_entry_and_the_idempotency_record_made_from_it_commit_together_or_not_at_all(
    ledger: Ledger,
    store: Arc<dyn Store>,
) {
    funded(&ledger, &MEMBERS[..2], 100).await;
    let gift = |id: &str, amount: i64| {
        Write::Post(NewEntry::new(id, 5).transfer(MEMBERS[0], MEMBERS[1], "points", amount))
    };
    let recorded = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .idempotency_record(TENANT, ADJUST, key)
                .await
                .expect("read record")
        }
    };

    let written = ledger
        .write_recording(
            TENANT,
            gift("g-1", 30),
            vec![note(0, "first")],
            record_of("k-1"),
        )
        .await
        .expect("write");
    assert!(written.new);
    let record = recorded("k-1").await.expect("recorded with the entry");
    assert_eq!(&record.response[..], &written.entry.hash[..]);

    // A stale aggregate later in the batch: no entry, and no record either.
    let stale = ledger
        .write_recording(
            TENANT,
            gift("g-2", 10),
            vec![note(0, "stale")],
            record_of("k-2"),
        )
        .await;
    assert!(
        matches!(stale, Err(LedgerError::Store(StoreError::Conflict { .. }))),
        "{stale:?}"
    );
    assert_eq!(recorded("k-2").await, None);
    assert_eq!(ledger.entry(TENANT, "g-2").await.expect("entry"), None);

    // The key already recorded: no entry, no change of the other aggregate.
    let taken = ledger
        .write_recording(
            TENANT,
            gift("g-3", 10),
            vec![note(1, "taken")],
            record_of("k-1"),
        )
        .await;
    assert!(
        matches!(
            taken,
            Err(LedgerError::Store(StoreError::IdempotencyKeyTaken(_)))
        ),
        "{taken:?}"
    );
    assert_eq!(ledger.entry(TENANT, "g-3").await.expect("entry"), None);
    let kept = store
        .load(&AggregateKey::new(TENANT, "note", "n-1"))
        .await
        .expect("load")
        .expect("note");
    assert_eq!(kept.data, "first");
    assert_eq!(recorded("k-1").await, Some(record));

    // A repeat of the first entry writes nothing, so it records nothing.
    let repeat = ledger
        .write_recording(TENANT, gift("g-1", 30), Vec::new(), record_of("k-4"))
        .await
        .expect("repeat");
    assert!(!repeat.new);
    assert_eq!(recorded("k-4").await, None);
    assert_eq!(posted(&ledger, MEMBERS[0]).await, 70);
}

/// A burst of appends to one tenant, all at once: they are computed on top of each other and
/// committed in batches, yet each is judged alone — the floor lets exactly the first ten debits
/// through, an append whose own commit is stale fails with the conflict (and nothing of it is
/// written), a repeat of a written id answers the original — and the chain stays gap-free and
/// reconciles. On the embedded store the burst takes far fewer store transactions than appends.
async fn a_burst_of_appends_batches_and_each_append_stands_or_fails_alone(
    ledger: Ledger,
    store: Arc<dyn Store>,
) {
    funded(&ledger, &MEMBERS[..2], 100).await;
    let mut tasks = Vec::new();
    for n in 0..60usize {
        let (ledger, store) = (ledger.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            match n % 3 {
                // Debits of 10 from a, which holds 100.
                0 => {
                    let entry = NewEntry::new(format!("debit-{n}"), 10)
                        .transfer(MEMBERS[0], ISSUER, "points", 10);
                    match ledger.post(TENANT, entry).await {
                        Ok(_) => "debited",
                        Err(LedgerError::InsufficientFunds { .. }) => "short",
                        Err(other) => panic!("debit failed: {other}"),
                    }
                }
                // With a record of the caller's that is stale every other time.
                1 => {
                    let mine = AggregateKey::new(TENANT, "note", format!("note-{n}"));
                    let stale = n % 2 == 0;
                    let with = Commit {
                        key: mine.clone(),
                        expected_version: u64::from(stale),
                        data: Bytes::from_static(b"note"),
                        index: Vec::new(),
                        events: Vec::new(),
                        idempotency: None,
                    };
                    let entry = NewEntry::new(format!("with-{n}"), 10)
                        .transfer(ISSUER, MEMBERS[1], "points", 1);
                    let written = ledger
                        .write_with(TENANT, Write::Post(entry), vec![with])
                        .await;
                    let note = store.load(&mine).await.unwrap();
                    let entry = ledger.entry(TENANT, &format!("with-{n}")).await.unwrap();
                    match written {
                        Ok(written) => {
                            assert!(!stale && written.new && note.is_some() && entry.is_some());
                            "with"
                        }
                        Err(LedgerError::Store(StoreError::Conflict { .. })) => {
                            assert!(stale && note.is_none() && entry.is_none());
                            "stale"
                        }
                        Err(other) => panic!("write_with failed: {other}"),
                    }
                }
                // The same entry twice, at once.
                _ => {
                    let entry = NewEntry::new(format!("twice-{}", n / 6), 10)
                        .transfer(ISSUER, MEMBERS[1], "points", 2);
                    ledger.post(TENANT, entry).await.expect("twice");
                    "twice"
                }
            }
        }));
    }
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for task in tasks {
        *seen.entry(task.await.expect("task")).or_default() += 1;
    }
    assert_eq!(seen["debited"], 10, "{seen:?}");
    assert_eq!(seen["short"], 10, "{seen:?}");
    assert_eq!(seen["with"], 10, "{seen:?}");
    assert_eq!(seen["stale"], 10, "{seen:?}");
    assert_eq!(seen["twice"], 20, "{seen:?}");
    assert_eq!(posted(&ledger, MEMBERS[0]).await, 0);
    // 100 funded + 10 × 1 + 10 distinct "twice" entries × 2.
    assert_eq!(posted(&ledger, MEMBERS[1]).await, 100 + 10 + 20);
    let entries = ledger.entries(TENANT, 0, 10_000).await.expect("entries");
    // 2 fundings, 10 debits, 10 with-entries, 10 distinct twice-entries.
    assert_eq!(entries.len(), 32);
    assert!(
        entries
            .iter()
            .enumerate()
            .all(|(i, entry)| entry.sequence == i as u64 + 1)
    );
    let report = ledger.reconcile(TENANT).await.expect("reconcile");
    assert!(report.is_clean(), "{report:?}");
}

/// Two replicas of a service append to one tenant's chain through one database: each has its
/// own chain writer (here, a second ledger on a second handle to the same store), batching its
/// appends on the head it read while the other moves it. Every entry must still be numbered
/// 1..n and linked to the one before — a batch whose first entry lost the race must not leave
/// its later entries chained to it.
async fn two_replicas_appending_to_one_chain_keep_it_numbered_and_linked(
    ledger: Ledger,
    store: Arc<dyn Store>,
) {
    const TASKS: usize = 16;
    const GIFTS: usize = 25;
    let replicas = [
        ledger.clone(),
        Ledger::new(Arc::new(Counting {
            inner: store,
            transactions: 0.into(),
        })),
    ];
    funded(&ledger, &MEMBERS[..1], 1).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let ledger = replicas[task % 2].clone();
            tokio::spawn(async move {
                for gift in 0..GIFTS {
                    let entry = NewEntry::new(format!("gift-{task}-{gift}"), 10)
                        .transfer(ISSUER, MEMBERS[0], "points", 1);
                    ledger.post(TENANT, entry).await.expect("gift");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let written = (TASKS * GIFTS) as u64;
    assert_eq!(posted(&ledger, MEMBERS[0]).await, 1 + written as i64);
    assert_chain_intact(&ledger, 1 + written).await;
}

/// A busy tenant's chain never stands still, so reconciliation must answer while entries keep
/// coming — transfers, holds posted and voided — and be clean (it gave up with a conflict after
/// five tries when the head moved under it). It must still catch an account edited behind the
/// ledger's back meanwhile.
async fn reconcile_answers_while_entries_keep_coming_and_still_names_an_edited_account(
    ledger: Ledger,
    store: Arc<dyn Store>,
) {
    const QUIET: &str = "member:quiet:points";
    funded(&ledger, &MEMBERS, 1_000_000).await;
    funded(&ledger, &[QUIET], 50).await;
    use std::sync::atomic::Ordering::Relaxed;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers: Vec<_> = (0..4usize)
        .map(|task| {
            let (ledger, stop, count) = (ledger.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut written = 0u64;
                while !stop.load(Relaxed) {
                    let n = written;
                    let (from, to) = (MEMBERS[task % 3], MEMBERS[(task + 1) % 3]);
                    let at = 100 + n as i64;
                    let entry = NewEntry::new(format!("w{task}-{n}-move"), at)
                        .transfer(from, to, "points", 3);
                    ledger.post(TENANT, entry).await.expect("transfer");
                    let hold = format!("w{task}-{n}-hold");
                    let reserve =
                        NewEntry::new(hold.clone(), at).transfer(from, ISSUER, "points", 2);
                    ledger
                        .hold(TENANT, reserve, at + 1_000_000)
                        .await
                        .expect("hold");
                    let resolve = NewEntry::new(format!("{hold}-end"), at + 1);
                    if n.is_multiple_of(2) {
                        ledger
                            .post_hold(TENANT, &hold, resolve)
                            .await
                            .expect("post");
                    } else {
                        ledger
                            .void_hold(TENANT, &hold, resolve)
                            .await
                            .expect("void");
                    }
                    written += 3;
                    count.fetch_add(3, Relaxed);
                }
                written
            })
        })
        .collect();
    // Reconciliations during which entries were written, out of how many.
    let (mut overlapped, mut runs) = (0, 0);
    while overlapped < 10 {
        runs += 1;
        assert!(
            runs <= 500,
            "entries written during {overlapped} of {runs} reconciliations"
        );
        let before = count.load(Relaxed);
        let report = ledger
            .reconcile(TENANT)
            .await
            .expect("reconcile answers while entries are written");
        assert!(report.is_clean(), "{report:?}");
        if count.load(Relaxed) > before {
            overlapped += 1;
        }
    }
    ledger::testing::tamper_account(store.as_ref(), TENANT, QUIET, 7).await;
    let report = ledger.reconcile(TENANT).await.expect("reconcile");
    stop.store(true, Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    assert_eq!(
        report.problems,
        vec![Problem::BalanceMismatch {
            account: QUIET.into(),
            stored: ledger::Balances {
                posted: 57,
                ..Default::default()
            },
            derived: ledger::Balances {
                posted: 50,
                ..Default::default()
            },
        }],
        "after {written} entries written alongside"
    );
}

/// Counts the store's transactions: a `commit_all` is one, a `commit_each` one.
struct Counting {
    inner: Arc<dyn Store>,
    transactions: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn load(&self, key: &AggregateKey) -> Result<Option<store::Versioned>, StoreError> {
        self.inner.load(key).await
    }
    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        self.transactions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.commit(commit).await
    }
    async fn commit_all(&self, commits: Vec<Commit>) -> Result<Vec<u64>, StoreError> {
        self.transactions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.commit_all(commits).await
    }
    async fn commit_each(&self, jobs: Vec<Vec<Commit>>) -> Vec<Result<Vec<u64>, StoreError>> {
        self.transactions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.commit_each(jobs).await
    }
    async fn find(
        &self,
        tenant: &str,
        kind: &str,
        index: &store::IndexEntry,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, store::Versioned)>, StoreError> {
        self.inner.find(tenant, kind, index, after_id, limit).await
    }
    async fn pending_events(&self, limit: usize) -> Result<Vec<store::PendingEvent>, StoreError> {
        self.inner.pending_events(limit).await
    }
    async fn mark_delivered(&self, events: &[store::PendingEvent]) -> Result<(), StoreError> {
        self.inner.mark_delivered(events).await
    }
    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency_record(tenant, method, key).await
    }
    async fn save_idempotency_record(&self, record: IdempotencyRecord) -> Result<(), StoreError> {
        self.inner.save_idempotency_record(record).await
    }
    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, StoreError> {
        self.inner.purge_expired_idempotency(now).await
    }
}

/// 200 appends at once to one tenant's chain go to the store in a handful of batches, not one
/// transaction each (they took turns, one commit and one fsync each, before batching).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_two_hundred_appends_takes_a_handful_of_store_transactions() {
    let counting = Arc::new(Counting {
        inner: common::embedded_store(),
        transactions: 0.into(),
    });
    let ledger = Ledger::new(counting.clone());
    funded(&ledger, &MEMBERS[..1], 1_000).await;
    let before = counting
        .transactions
        .load(std::sync::atomic::Ordering::SeqCst);
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let entry = NewEntry::new(format!("gift-{n}"), 10)
                    .transfer(ISSUER, MEMBERS[0], "points", 1);
                ledger.post(TENANT, entry).await.expect("gift");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let transactions = counting
        .transactions
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    assert!(
        transactions <= 20,
        "200 appends took {transactions} store transactions"
    );
    assert_eq!(posted(&ledger, MEMBERS[0]).await, 1_200);
    assert!(ledger.reconcile(TENANT).await.unwrap().is_clean());
}
