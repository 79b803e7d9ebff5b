//! Events through the running binary when processes and Redis die: a paid order always earns its
//! points, whatever stops between the commit that emits `OrderPaid` and loyalty's accrual.
//!
//! - in process (no Redis): the server is killed after loyalty's consumer read the event and
//!   before it committed the accrual; the restarted server publishes the event again;
//! - SIGTERM drains the relay and the consumers before the process exits;
//! - Redis as the bus, without persistence: the event Redis acknowledged is lost when Redis
//!   restarts; loyalty reconciliation reports the missing accrual, and the repair sweep publishes
//!   the event again;
//! - a Redis without `appendonly` is named at start-up.

mod common;

use std::time::{Duration, Instant};

use common::client::{Client, Protocol};
use common::shop::Shop;
use common::{Running, cli, start_with};

const CRASH_BEFORE_ACCRUAL: (&str, &str) = ("COMMERCE_FAILPOINTS", "loyalty.before-accrual");

fn client(server: &Running) -> Client {
    Client {
        protocol: Protocol::ConnectJson,
        addr: server.addr.clone(),
        token: common::dev_token(None),
        tenant: "demo".into(),
    }
}

/// Waits until the member has earned `points` in all (each $10.00 order earns 10).
async fn await_points(shop: &Shop, client: &Client, points: i64) {
    let started = Instant::now();
    loop {
        let earned = shop.lifetime_points(client).await.unwrap();
        if earned == points {
            return;
        }
        assert!(
            earned < points && started.elapsed() < Duration::from_secs(15),
            "earned {earned}, expected {points}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reconcile(data_dir: &std::path::Path) -> (bool, String) {
    let output = cli(&[
        "loyalty",
        "reconcile",
        "--tenant",
        "demo",
        "--settle-seconds",
        "0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn in_process_a_paid_order_whose_consumer_died_before_committing_earns_its_points_after_a_restart()
 {
    let server = start_with(tempfile::tempdir().unwrap(), &[], &[CRASH_BEFORE_ACCRUAL]);
    let shop = Shop::open(&client(&server)).await.unwrap();
    let placed = shop.place(&client(&server), "order-1", 1).await.unwrap();
    assert_eq!(placed.total, 1_000);
    // Loyalty's consumer reads OrderPaid and the process dies before the accrual commits.
    let (status, data_dir) = server.wait_exit(Duration::from_secs(15));
    assert!(!status.success(), "aborted at the failpoint: {status:?}");
    let (clean, report) = reconcile(data_dir.path());
    assert!(
        !clean && report.contains("accrual_missing") && report.contains(&placed.order_id),
        "{report}"
    );

    let server = start_with(data_dir, &[], &[]);
    await_points(&shop, &client(&server), 10).await;
    // Exactly once: the event stays settled, a second restart adds nothing.
    server.terminate();
    let (status, data_dir) = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let server = start_with(data_dir, &[], &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shop.lifetime_points(&client(&server)).await.unwrap(), 10);
    server.terminate();
    let (_, data_dir) = server.wait_exit(Duration::from_secs(15));
    let (clean, report) = reconcile(data_dir.path());
    assert!(clean, "{report}");
}

#[tokio::test]
async fn sigterm_drains_every_event_to_its_consumer_before_the_process_exits() {
    let server = start_with(tempfile::tempdir().unwrap(), &[], &[]);
    let client = client(&server);
    let shop = Shop::open(&client).await.unwrap();
    let mut orders = Vec::new();
    for n in 0..10 {
        orders.push(shop.place(&client, &format!("order-{n}"), 1).await.unwrap());
    }
    // Stop while OrderPaid events are still flowing through the in-process bus.
    server.terminate();
    let (status, data_dir) = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let path = data_dir.path().to_str().unwrap();
    let check = cli(&["store", "check", "--data-dir", path]);
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.contains("outbox: 0 event(s) waiting"), "{check}");
    let (clean, report) = reconcile(data_dir.path());
    assert!(clean, "every paid order was handled before exit: {report}");
}

#[tokio::test]
async fn a_paid_order_a_restarted_redis_forgot_is_reported_by_reconcile_and_repaired_by_the_sweep()
{
    let mut redis = fastpath::testing::RedisServer::start();
    let url = redis.url();
    // No automatic sweep in the first life: reconciliation must see the gap first.
    let quiet = ["--redis-url", &url, "--event-repair-seconds", "3600"];
    let server = start_with(
        tempfile::tempdir().unwrap(),
        &quiet,
        &[CRASH_BEFORE_ACCRUAL],
    );
    let shop = Shop::open(&client(&server)).await.unwrap();
    let placed = shop.place(&client(&server), "order-1", 1).await.unwrap();
    let (_, data_dir) = server.wait_exit(Duration::from_secs(15));
    // The event left the outbox when Redis acknowledged it; a Redis without persistence that
    // restarts has forgotten it.
    let port = redis.port;
    redis.kill();
    let _redis = fastpath::testing::RedisServer::start_on(port);
    let (clean, report) = reconcile(data_dir.path());
    assert!(
        !clean && report.contains("accrual_missing") && report.contains(&placed.order_id),
        "reconciliation reports the paid order loyalty never handled: {report}"
    );

    let repairing = [
        "--redis-url",
        &url,
        "--event-repair-seconds",
        "1",
        "--event-repair-after-seconds",
        "1",
    ];
    let server = start_with(data_dir, &repairing, &[]);
    await_points(&shop, &client(&server), 10).await;
    let logs = server.stderr.lock().unwrap().clone();
    assert!(
        logs.contains("repair sweep: an event has no effect yet"),
        "the sweep says what it republished: {logs}"
    );
    server.terminate();
    let (_, data_dir) = server.wait_exit(Duration::from_secs(15));
    let (clean, report) = reconcile(data_dir.path());
    assert!(clean, "{report}");
}

#[test]
fn a_redis_without_appendonly_is_named_at_start_up_and_one_with_it_is_not() {
    for (appendonly, warned) in [("no", true), ("yes", false)] {
        let redis_dir = tempfile::tempdir().unwrap();
        let redis = fastpath::testing::RedisServer::start_with(&[
            "--appendonly",
            appendonly,
            "--dir",
            redis_dir.path().to_str().unwrap(),
        ]);
        let mut server = start_with(
            tempfile::tempdir().unwrap(),
            &["--redis-url", &redis.url()],
            &[],
        );
        server.terminate();
        let stderr = server.stderr_after_exit();
        assert_eq!(
            stderr.contains("WARNING Redis runs without appendonly"),
            warned,
            "appendonly {appendonly}: {stderr}"
        );
    }
}
