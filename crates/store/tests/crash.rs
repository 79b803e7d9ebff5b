//! Crash safety: a writer process committing in a loop (8 concurrent writers, group commit) is
//! killed with SIGKILL; on reopen every acknowledged commit is there and nothing is half-applied
//! (each aggregate at version v has exactly v outbox events, one per commit).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use store::{AggregateKey, EmbeddedOptions, EmbeddedStore, Store};

#[tokio::test]
async fn acknowledged_commits_survive_sigkill_and_none_is_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start writer");
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut count = 0;
    while count < 400 {
        let line = lines.next().expect("writer alive").expect("line");
        let mut parts = line.split_whitespace().skip(1);
        let (id, version) = (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().parse::<u64>().unwrap(),
        );
        let entry = acked.entry(id).or_default();
        *entry = (*entry).max(version);
        count += 1;
    }
    // SIGKILL: no destructors, no flush — whatever is on disk is all there is.
    child.kill().expect("kill");
    child.wait().expect("reap");

    let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).expect("reopen after crash");
    let mut events_per_aggregate: HashMap<String, u64> = HashMap::new();
    for event in store.pending_events(usize::MAX).await.unwrap() {
        *events_per_aggregate
            .entry(event.aggregate.id.clone())
            .or_default() += 1;
    }
    let mut checked = 0;
    for writer in 0..8 {
        for slot in 0..4 {
            let id = format!("agg-{writer}-{slot}");
            let stored = store
                .load(&AggregateKey::new("t", "crash", id.clone()))
                .await
                .unwrap();
            let version = stored.as_ref().map_or(0, |s| s.version);
            let acknowledged = acked.get(&id).copied().unwrap_or(0);
            assert!(
                version >= acknowledged,
                "{id}: acknowledged v{acknowledged} but found v{version}"
            );
            assert_eq!(
                events_per_aggregate.get(&id).copied().unwrap_or(0),
                version,
                "{id}: events do not match its version"
            );
            if let Some(stored) = stored {
                assert_eq!(
                    stored.data,
                    format!("{id} v{version}"),
                    "{id}: state and version disagree"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 32);
    assert!(acked.values().sum::<u64>() > 0);
}
