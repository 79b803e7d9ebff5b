//! Ledgers for tests: on the embedded store in memory, or on MongoDB (a SecantusDB child process
//! per test binary, a database per test).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use ledger::{Ledger, NewEntry};
use store::testing::MongoServer;
use store::{EmbeddedStore, MongoOptions, MongoStore, Store};

pub const TENANT: &str = "tenant-a";
pub const ISSUER: &str = "loyalty:issued:points";

pub fn embedded_store() -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::in_memory().expect("in-memory store"))
}

pub fn embedded() -> (Ledger, Arc<dyn Store>) {
    let store = embedded_store();
    (Ledger::new(store.clone()), store)
}

/// A fresh database on this binary's SecantusDB (stopped by its watchdog when the binary exits,
/// taking its in-memory data with it).
pub async fn mongodb() -> (Ledger, Arc<dyn Store>) {
    static SERVER: OnceLock<MongoServer> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let uri = SERVER.get_or_init(MongoServer::start).uri();
    let database = format!("ledger_test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let store: Arc<dyn Store> = Arc::new(
        MongoStore::connect(&uri, &database, MongoOptions::default())
            .await
            .expect("connect"),
    );
    (Ledger::new(store.clone()), store)
}

/// Opens `members` with floor 0 and the unconstrained issuer, and gives each member `funds`.
pub async fn funded(ledger: &Ledger, members: &[&str], funds: i64) {
    ledger
        .open_account(TENANT, ISSUER, "points", None)
        .await
        .expect("open issuer");
    for member in members {
        ledger
            .open_account(TENANT, member, "points", Some(0))
            .await
            .expect("open member");
        ledger
            .post(
                TENANT,
                NewEntry::new(format!("fund-{member}"), 1)
                    .transfer(ISSUER, member, "points", funds),
            )
            .await
            .expect("fund");
    }
}

pub async fn posted(ledger: &Ledger, account: &str) -> i64 {
    balances(ledger, account).await.posted
}

pub async fn balances(ledger: &Ledger, account: &str) -> ledger::Balances {
    ledger
        .account(TENANT, account)
        .await
        .expect("account")
        .expect("opened")
        .balances
}

/// Edits a stored entry through the store, as someone with database access could: a valid
/// version compare-and-set, the index kept. Adds 1 to its first posting (or a metadata pair if
/// it has none); with `rehash`, also recomputes its own hash to cover the edit.
pub async fn tamper(store: &Arc<dyn Store>, id: &str, rehash: bool) {
    ledger::testing::tamper(store.as_ref(), TENANT, id, rehash).await;
}
