//! Issue 14, item 4, through the real binary: an anonymous caller flooding a public read under a
//! victim tenant's name (the tenant comes from the unauthenticated `commerce-tenant` header)
//! used to spend the victim's rate limit, so the victim's signed-in calls were refused. Anonymous
//! calls now have budgets of their own — per client address and per tenant — and never touch
//! the tenant's authenticated one.

mod common;

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;

const LIST_LOCATIONS: &str = "/commerce.checkout.v1.MenuService/ListLocations";

/// A Connect JSON `ListLocations` over a connection made from `from` (a loopback address: any
/// of 127.0.0.0/8 works on Linux), with the given extra header lines; the HTTP status and body.
async fn list_locations(
    addr: &str,
    from: IpAddr,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    let mut stream = socket
        .connect(addr.parse().expect("server address"))
        .await
        .expect("connect");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "POST {LIST_LOCATIONS} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response[9..12].parse().expect("status");
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {response}")),
    )
}

/// The `ErrorInfo` reason and `limit` metadata of a Connect error, and whether it has `RetryInfo`.
fn refusal(body: &serde_json::Value) -> (String, String, String, bool) {
    let details = body["details"].as_array().expect("details");
    let info = details
        .iter()
        .find(|detail| detail["type"] == "google.rpc.ErrorInfo")
        .expect("ErrorInfo");
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(info["value"].as_str().expect("value"))
        .expect("base64");
    let info = tonic_types::pb::ErrorInfo::decode(bytes.as_slice()).expect("ErrorInfo");
    (
        body["code"].as_str().unwrap_or_default().to_owned(),
        info.reason,
        info.metadata.get("limit").cloned().unwrap_or_default(),
        details
            .iter()
            .any(|detail| detail["type"] == "google.rpc.RetryInfo"),
    )
}

#[tokio::test]
async fn an_anonymous_flood_under_a_victims_tenant_leaves_the_victims_signed_in_calls_alone() {
    let server = common::start_in(
        tempfile::tempdir().expect("data dir"),
        &[
            // Budgets that barely refill during the test, so the counts are the bursts.
            "--rate-limit-per-second",
            "0.1",
            "--rate-limit-burst",
            "10",
            "--anonymous-client-rate-limit-per-second",
            "0.1",
            "--anonymous-client-rate-limit-burst",
            "5",
            "--anonymous-tenant-rate-limit-per-second",
            "0.1",
            "--anonymous-tenant-rate-limit-burst",
            "8",
        ],
    );
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    let neighbour: IpAddr = "127.0.0.2".parse().unwrap();
    let victim_token = common::token_for("victim");
    let bearer = format!("Bearer {victim_token}");

    // The flood: three times the victim's whole authenticated burst, without a token.
    let mut allowed = 0;
    for _ in 0..30 {
        let (status, body) =
            list_locations(&server.addr, attacker, &[("commerce-tenant", "victim")]).await;
        if status == 200 {
            allowed += 1;
            continue;
        }
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            refusal(&body),
            (
                "resource_exhausted".to_owned(),
                "RATE_LIMITED".to_owned(),
                "anonymous_client".to_owned(),
                true
            ),
            "{body}"
        );
    }
    assert_eq!(allowed, 5, "the attacker gets its own burst, no more");

    // The victim's signed-in calls have their whole budget (before: the flood had spent it).
    for call in 0..10 {
        let (status, body) =
            list_locations(&server.addr, attacker, &[("authorization", &bearer)]).await;
        assert_eq!(status, 200, "signed-in call {call}: {body}");
    }

    // Another anonymous address is not starved by the first: the tenant's anonymous budget (8)
    // still has what the attacker's refused calls did not take.
    for call in 0..3 {
        let (status, body) =
            list_locations(&server.addr, neighbour, &[("commerce-tenant", "victim")]).await;
        assert_eq!(status, 200, "neighbour call {call}: {body}");
    }
    // And once all anonymous callers together have used the tenant's anonymous budget, they are
    // refused as such.
    let (status, body) =
        list_locations(&server.addr, neighbour, &[("commerce-tenant", "victim")]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(refusal(&body).2, "anonymous_tenant", "{body}");

    let stderr = server.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains("anonymous_client_rate_limit_burst: 5.0"),
        "the limits are printed at start: {stderr}"
    );
}
