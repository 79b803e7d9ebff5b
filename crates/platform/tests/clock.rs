//! The tenant clock over the embedded store: wall time until frozen, forward-only moves, one clock
//! per tenant, due-job runners triggered after the move, and no lost update under contention.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use commerce_api::commerce::common::v1::ErrorReason;
use platform::ApiError;
use platform::clock::{ClockError, ClockReading, Clocks, DueJobs, DueJobsReport};
use store::{AggregateKey, EmbeddedStore, Store};
use tonic::Code;

const JAN_1_2030_MS: i64 = 1_893_456_000_000;

fn store() -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::in_memory().expect("in-memory store"))
}

fn system_now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

async fn clock_version(store: &Arc<dyn Store>, tenant: &str) -> u64 {
    store
        .load(&AggregateKey::new(tenant, "clock", "clock"))
        .await
        .expect("load")
        .map_or(0, |stored| stored.version)
}

/// Records every call and reports one renewal per call, or fails when told to.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, i64)>>,
    fail: bool,
}

#[async_trait::async_trait]
impl DueJobs for Recorder {
    async fn run_due(&self, tenant: &str, now_ms: i64) -> Result<DueJobsReport, ApiError> {
        self.calls
            .lock()
            .expect("lock")
            .push((tenant.to_owned(), now_ms));
        if self.fail {
            return Err(ApiError::new(
                Code::Unavailable,
                ErrorReason::DependencyUnavailable,
                "payment provider down",
            ));
        }
        Ok(DueJobsReport {
            renewals: 1,
            invoices_paid: 2,
            payment_failures: 0,
            status_changes: 3,
        })
    }
}

#[tokio::test]
async fn an_unfrozen_clock_reads_system_time() {
    let clocks = Clocks::new(store());
    let before = system_now_ms();
    let reading = clocks.now("acme").await.expect("now");
    let after = system_now_ms();
    assert!(!reading.frozen);
    assert!(
        (before..=after).contains(&reading.now_ms),
        "{before} <= {} <= {after}",
        reading.now_ms
    );
}

#[tokio::test]
async fn advance_freezes_the_clock_at_the_target() {
    let clocks = Clocks::new(store());
    let (reading, report) = clocks
        .advance("acme", JAN_1_2030_MS)
        .await
        .expect("advance");
    let frozen = ClockReading {
        now_ms: JAN_1_2030_MS,
        frozen: true,
    };
    assert_eq!(reading, frozen);
    assert_eq!(report, DueJobsReport::default(), "no runners registered");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        clocks.now("acme").await.expect("now"),
        frozen,
        "frozen time does not follow the wall"
    );
}

#[tokio::test]
async fn advancing_to_the_current_time_again_changes_nothing() {
    let store = store();
    let clocks = Clocks::new(store.clone());
    let (first, _) = clocks
        .advance("acme", JAN_1_2030_MS)
        .await
        .expect("advance");
    let version = clock_version(&store, "acme").await;
    let (again, report) = clocks.advance("acme", JAN_1_2030_MS).await.expect("again");
    assert_eq!(again, first);
    assert_eq!(report, DueJobsReport::default());
    assert_eq!(
        clock_version(&store, "acme").await,
        version,
        "nothing written"
    );
}

#[tokio::test]
async fn moving_backwards_fails_with_both_times_and_leaves_the_clock() {
    let clocks = Clocks::new(store());
    clocks
        .advance("acme", JAN_1_2030_MS)
        .await
        .expect("advance");
    let error = clocks
        .advance("acme", JAN_1_2030_MS - 1)
        .await
        .expect_err("backwards");
    assert_eq!(
        error,
        ClockError::Backwards {
            now_ms: JAN_1_2030_MS,
            target_ms: JAN_1_2030_MS - 1,
        }
    );
    assert_eq!(clocks.now("acme").await.expect("now").now_ms, JAN_1_2030_MS);
}

#[tokio::test]
async fn an_unfrozen_clock_cannot_be_moved_into_the_past() {
    let clocks = Clocks::new(store());
    let error = clocks
        .advance("acme", JAN_1_2030_MS - 10 * 365 * 86_400_000)
        .await
        .expect_err("in the past");
    assert!(matches!(error, ClockError::Backwards { .. }), "{error:?}");
    assert!(!clocks.now("acme").await.expect("now").frozen);
}

#[tokio::test]
async fn each_tenant_has_its_own_clock() {
    let clocks = Clocks::new(store());
    clocks.advance("acme", JAN_1_2030_MS).await.expect("acme");
    clocks
        .advance("globex", JAN_1_2030_MS + 86_400_000)
        .await
        .expect("globex");
    assert_eq!(
        clocks.now("acme").await.expect("acme").now_ms,
        JAN_1_2030_MS
    );
    assert_eq!(
        clocks.now("globex").await.expect("globex").now_ms,
        JAN_1_2030_MS + 86_400_000
    );
    let initech = clocks.now("initech").await.expect("initech");
    assert!(!initech.frozen, "untouched tenants follow the wall");
}

#[tokio::test]
async fn registered_runners_see_the_tenant_and_new_time_in_order_and_reports_are_summed() {
    let (first, second) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let clocks = Clocks::new(store())
        .with_jobs(first.clone())
        .with_jobs(second.clone());
    let (_, report) = clocks
        .advance("acme", JAN_1_2030_MS)
        .await
        .expect("advance");
    assert_eq!(
        report,
        DueJobsReport {
            renewals: 2,
            invoices_paid: 4,
            payment_failures: 0,
            status_changes: 6,
        }
    );
    for recorder in [&first, &second] {
        assert_eq!(
            *recorder.calls.lock().expect("lock"),
            vec![("acme".to_owned(), JAN_1_2030_MS)]
        );
    }
}

#[tokio::test]
async fn a_failing_runner_does_not_undo_the_move_and_a_retry_runs_the_runners_again() {
    let failing = Arc::new(Recorder {
        fail: true,
        ..Recorder::default()
    });
    let after = Arc::new(Recorder::default());
    let clocks = Clocks::new(store())
        .with_jobs(failing.clone())
        .with_jobs(after.clone());
    let error = clocks
        .advance("acme", JAN_1_2030_MS)
        .await
        .expect_err("runner fails");
    assert!(matches!(error, ClockError::Job(_)), "{error:?}");
    assert!(
        after.calls.lock().expect("lock").is_empty(),
        "later runners wait for the failed one"
    );
    assert_eq!(
        clocks.now("acme").await.expect("now"),
        ClockReading {
            now_ms: JAN_1_2030_MS,
            frozen: true
        },
        "the move stands"
    );
    let _ = clocks.advance("acme", JAN_1_2030_MS).await;
    assert_eq!(
        failing.calls.lock().expect("lock").len(),
        2,
        "retrying the same target re-runs the (idempotent) runners"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_advances_end_at_the_highest_target_with_no_lost_update() {
    let store = store();
    let clocks = Clocks::new(store.clone());
    let targets: Vec<i64> = (1..=8).map(|i| JAN_1_2030_MS + i * 60_000).collect();
    let tasks: Vec<_> = targets
        .iter()
        .map(|&target| {
            let clocks = clocks.clone();
            tokio::spawn(async move { (target, clocks.advance("acme", target).await) })
        })
        .collect();
    let mut moved = 0;
    for task in tasks {
        let (target, outcome) = task.await.expect("task");
        match outcome {
            Ok((reading, _)) => {
                assert_eq!(reading.now_ms, target);
                moved += 1;
            }
            // A higher target got there first; the clock never goes back for this one.
            Err(ClockError::Backwards { now_ms, target_ms }) => {
                assert_eq!(target_ms, target);
                assert!(now_ms > target, "{now_ms} > {target}");
            }
            Err(other) => panic!("advance to {target}: {other:?}"),
        }
    }
    let max = *targets.iter().max().expect("targets");
    assert_eq!(
        clocks.now("acme").await.expect("now"),
        ClockReading {
            now_ms: max,
            frozen: true
        }
    );
    assert!(moved >= 1);
    assert_eq!(
        clock_version(&store, "acme").await,
        moved,
        "one committed version per successful move: none overwritten"
    );
}
