//! For tests of code built on the ledger: editing a stored entry behind the ledger's back, as
//! someone with write access to the store might, to show that reconciliation catches it.

use bytes::Bytes;
use prost::Message as _;
use store::{Commit, Store};

use crate::records::{self, AccountRecord, EntryRecord};

/// Changes stored entry `id`: one point more on its first posting (or a metadata field when it
/// has none). With `rehash` the entry's own hash is recomputed, so only the chain link to the
/// next entry shows the edit. Panics if the entry is not there.
pub async fn tamper(store: &dyn Store, tenant: &str, id: &str, rehash: bool) {
    let key = records::key(tenant, records::ENTRY, id);
    let stored = store.load(&key).await.expect("load").expect("stored entry");
    let mut record = EntryRecord::decode(stored.data.as_ref()).expect("decode");
    match record.postings.first_mut() {
        Some(posting) => posting.amount += 1,
        None => {
            record.metadata.insert("edited".into(), "yes".into());
        }
    }
    if rehash {
        record.hash = records::entry_hash(&record).to_vec();
    }
    let accounts: Vec<String> = record.postings.iter().map(|p| p.account.clone()).collect();
    store
        .commit(Commit {
            key,
            expected_version: stored.version,
            data: Bytes::from(record.encode_to_vec()),
            index: records::entry_index(record.sequence, accounts.iter().map(String::as_str)),
            events: Vec::new(),
            idempotency: None,
        })
        .await
        .expect("tamper");
}

/// Adds `delta` to stored account `name`'s posted balance behind the ledger's back (its cached
/// balance then no longer sums its entries). Panics if the account is not there or moved while
/// being edited.
pub async fn tamper_account(store: &dyn Store, tenant: &str, name: &str, delta: i64) {
    let key = records::key(tenant, records::ACCOUNT, name);
    let stored = store
        .load(&key)
        .await
        .expect("load")
        .expect("stored account");
    let mut record = AccountRecord::decode(stored.data.as_ref()).expect("decode");
    record.posted += delta;
    store
        .commit(Commit {
            key,
            expected_version: stored.version,
            data: Bytes::from(record.encode_to_vec()),
            index: vec![records::account_list()],
            events: Vec::new(),
            idempotency: None,
        })
        .await
        .expect("tamper");
}
