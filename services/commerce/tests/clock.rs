//! ClockService through the `commerce` binary over Connect JSON: a tenant's clock follows wall time
//! until advanced, then stays frozen at the target; it never moves back (CLOCK_BACKWARDS with both
//! times); and each tenant has its own.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use prost::Message as _;
use serde_json::{Value, json};

mod common;

/// A Connect JSON call with `token`.
fn json_call(addr: &str, path: &str, body: &Value, token: &str) -> (u16, Value) {
    common::connect_json(addr, path, &body.to_string(), Some(token), &[])
}

const GET_CLOCK: &str = "/commerce.subscriptions.v1.ClockService/GetClock";
const ADVANCE_CLOCK: &str = "/commerce.subscriptions.v1.ClockService/AdvanceClock";

/// The `google.rpc.ErrorInfo` of a Connect error body.
fn error_info(body: &Value) -> tonic_types::pb::ErrorInfo {
    let detail = body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|detail| detail["type"] == "google.rpc.ErrorInfo")
        .unwrap_or_else(|| panic!("no ErrorInfo in {body}"));
    let value = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(
            detail["value"]
                .as_str()
                .expect("value")
                .trim_end_matches('='),
        )
        .expect("base64");
    tonic_types::pb::ErrorInfo::decode(value.as_slice()).expect("ErrorInfo")
}

/// Unix seconds of an RFC 3339 UTC time as Connect JSON writes it (`2030-01-01T00:00:00Z`, with
/// optional fraction), computed without a date library.
fn unix_seconds(rfc3339: &str) -> i64 {
    let (date, time) = rfc3339.split_once('T').expect("T");
    let mut ymd = date
        .split('-')
        .map(|part| part.parse::<i64>().expect("date"));
    let (year, month, day) = (
        ymd.next().unwrap(),
        ymd.next().unwrap(),
        ymd.next().unwrap(),
    );
    let time = time.trim_end_matches('Z');
    let time = time.split('.').next().expect("time");
    let mut hms = time
        .split(':')
        .map(|part| part.parse::<i64>().expect("time"));
    let (hour, minute, second) = (
        hms.next().unwrap(),
        hms.next().unwrap(),
        hms.next().unwrap(),
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hour * 3600 + minute * 60 + second
}

#[test]
fn the_clock_follows_wall_time_until_advanced_then_stays_at_the_target() {
    let server = common::start();
    let token = common::token_for("demo");

    let (status, body) = json_call(&server.addr, GET_CLOCK, &json!({}), &token);
    assert_eq!(status, 200, "{body}");
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let now = unix_seconds(body["clock"]["now"].as_str().expect("now"));
    assert!(
        (now - wall).abs() <= 5,
        "unfrozen clock {now} vs wall {wall}"
    );
    assert!(!body["clock"]["frozen"].as_bool().unwrap_or(false));

    let target = json!({"targetTime": "2030-01-01T00:00:00Z"});
    let (status, body) = json_call(&server.addr, ADVANCE_CLOCK, &target, &token);
    assert_eq!(status, 200, "{body}");
    let frozen = json!({"now": "2030-01-01T00:00:00Z", "frozen": true});
    assert_eq!(body["clock"], frozen);
    for counter in [
        "renewalCount",
        "paidInvoiceCount",
        "failedPaymentCount",
        "statusChangeCount",
    ] {
        let count = body.get(counter).map_or(0, |count| {
            count.as_str().map_or_else(
                || count.as_i64().expect("int64"),
                |text| text.parse().expect("int64 string"),
            )
        });
        assert_eq!(count, 0, "{counter}: nothing is due on an empty tenant");
    }

    let (status, body) = json_call(&server.addr, GET_CLOCK, &json!({}), &token);
    assert_eq!((status, &body["clock"]), (200, &frozen), "{body}");

    let (status, body) = json_call(&server.addr, ADVANCE_CLOCK, &target, &token);
    assert_eq!(
        (status, &body["clock"]),
        (200, &frozen),
        "the same time again is a no-op: {body}"
    );
}

#[test]
fn moving_the_clock_back_fails_with_clock_backwards_and_both_times() {
    let server = common::start();
    let token = common::token_for("demo");
    let (status, body) = json_call(
        &server.addr,
        ADVANCE_CLOCK,
        &json!({"targetTime": "2030-01-01T00:00:00Z"}),
        &token,
    );
    assert_eq!(status, 200, "{body}");

    let (status, body) = json_call(
        &server.addr,
        ADVANCE_CLOCK,
        &json!({"targetTime": "2029-12-31T23:59:59.500Z"}),
        &token,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_argument")),
        "{body}"
    );
    let info = error_info(&body);
    assert_eq!(info.reason, "CLOCK_BACKWARDS");
    assert_eq!(info.domain, "subscriptions.commerce.dev");
    assert_eq!(info.metadata["now"], "2030-01-01T00:00:00Z");
    assert_eq!(info.metadata["target"], "2029-12-31T23:59:59.500Z");

    let (_, body) = json_call(&server.addr, GET_CLOCK, &json!({}), &token);
    assert_eq!(
        body["clock"]["now"], "2030-01-01T00:00:00Z",
        "the clock did not move"
    );
}

#[test]
fn each_tenant_has_its_own_clock() {
    let server = common::start();
    let (demo, other) = (common::token_for("demo"), common::token_for("other"));
    let (status, body) = json_call(
        &server.addr,
        ADVANCE_CLOCK,
        &json!({"targetTime": "2030-01-01T00:00:00Z"}),
        &demo,
    );
    assert_eq!(status, 200, "{body}");

    let (status, body) = json_call(&server.addr, GET_CLOCK, &json!({}), &other);
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["clock"]["frozen"].as_bool().unwrap_or(false),
        "{body}"
    );
    assert_ne!(body["clock"]["now"], "2030-01-01T00:00:00Z");
}

#[test]
fn advancing_needs_the_clock_write_scope() {
    let server = common::start();
    let reader = common::dev_token(Some("subscriptions.read"));
    let (status, body) = json_call(&server.addr, GET_CLOCK, &json!({}), &reader);
    assert_eq!(status, 200, "{body}");
    let (status, body) = json_call(
        &server.addr,
        ADVANCE_CLOCK,
        &json!({"targetTime": "2030-01-01T00:00:00Z"}),
        &reader,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("permission_denied")),
        "{body}"
    );
}
