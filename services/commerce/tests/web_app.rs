//! The ordering page (`clients/web`) and its BFF (`clients/bff`) in real headless Chromium,
//! against the `commerce` binary under test: `clients/web/test/e2e.mjs` builds the page, starts
//! the BFF (which serves the page from its own origin, so every platform call crosses origins and
//! CORS is exercised), and drives the whole flow on Connect and on gRPC-web — a reward applied, a
//! double-clicked "Place order", an answer lost and retried, a declined card, the live status to
//! COMPLETED, a disallowed origin, the BFF's deadline with a hung callee. Screenshots go to
//! `clients/web/screenshots/` (git-ignored).
//!
//! What the browser saw is then checked against the server's own records: one order for the
//! double-clicked cart and one for the retried one, every authorization at the PSP tied to its
//! order (reconciliation), and the request id the BFF was given in the platform's log.
//!
//! Needs `npm ci` and Debian's `chromium` (both installed by scripts/test).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const TENANT: &str = "web-e2e";

/// Both tests build the TypeScript packages into the same `dist` folders: one at a time.
static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The orders of `customer` in `TENANT`, read with a staff token.
fn orders_of(server: &common::Running, staff: &str, customer: &str) -> Vec<Value> {
    let (status, listed) = common::connect_json(
        &server.addr,
        "/commerce.checkout.v1.OrderService/ListOrders",
        &json!({ "customerId": customer, "pageSize": 500 }).to_string(),
        Some(staff),
        &[],
    );
    assert_eq!(status, 200, "ListOrders: {listed}");
    listed["orders"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_ordering_page_works_in_chromium_on_both_transports() {
    let _builds = BUILDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let web_port = common::free_port();
    let origin = format!("http://127.0.0.1:{web_port}");
    let server = common::start_in(
        tempfile::tempdir().expect("data dir"),
        &["--cors-origins", &origin],
    );
    let screenshots = repo().join("clients/web/screenshots");
    let output = Command::new("node")
        .arg("clients/web/test/e2e.mjs")
        .current_dir(repo())
        .env("COMMERCE_API", format!("http://{}", server.addr))
        .env("WEB_PORT", web_port.to_string())
        .env("SCREENSHOT_DIR", &screenshots)
        .env("DEMO_TENANT", TENANT)
        .env("COMMERCE_JWT_HS256_SECRET", common::SECRET)
        .output()
        .expect("run node clients/web/test/e2e.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser flow failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = stdout
        .lines()
        .find_map(|line| line.strip_prefix("E2E_SUMMARY "))
        .map(|json| serde_json::from_str(json).expect("E2E_SUMMARY is JSON"))
        .unwrap_or_else(|| panic!("no E2E_SUMMARY line:\n{stdout}"));

    let staff = common::tenant_token(TENANT, Some("checkout.orders.read checkout.admin"));
    let customers = summary["customers"].as_object().expect("customers");
    let mut orders = Vec::new();
    for customer in customers.values() {
        orders.extend(orders_of(
            &server,
            &staff,
            customer.as_str().expect("customer id"),
        ));
    }
    // A double click and a retry after a lost answer each placed exactly one order.
    for (what, cart) in [
        ("double-clicked", &summary["orders"]["double_click_cart"]),
        ("retried", &summary["orders"]["retry_cart"]),
    ] {
        let cart = cart.as_str().expect("cart id");
        let placed: Vec<&Value> = orders
            .iter()
            .filter(|order| order["cartId"] == cart)
            .collect();
        assert_eq!(placed.len(), 1, "the {what} cart {cart}: {placed:?}");
    }
    assert_eq!(
        orders
            .iter()
            .filter(|order| order["cartId"] == summary["orders"]["double_click_cart"])
            .map(|order| &order["orderId"])
            .next(),
        Some(&summary["orders"]["double_click_order"]),
        "the order the page showed is the one the server holds"
    );
    // Every order's PSP authorizations, captures and ledger postings tie out: a second
    // authorization behind the page's back would be an `authorization_count` mismatch.
    let (status, reconciled) = common::connect_json(
        &server.addr,
        "/commerce.checkout.v1.CheckoutAdminService/ReconcilePayments",
        "{}",
        Some(&staff),
        &[],
    );
    assert_eq!(status, 200, "ReconcilePayments: {reconciled}");
    // int64 is a JSON string in proto3 JSON.
    let checked: usize = reconciled["ordersChecked"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        checked >= orders.len() && orders.len() >= 2,
        "reconciliation looked at the page's {} orders: {reconciled}",
        orders.len()
    );
    assert_eq!(
        reconciled["mismatches"].as_array().map_or(0, Vec::len),
        0,
        "payments tie out: {reconciled}"
    );
    // The BFF sent the request id it was given on each of its platform calls.
    let request_id = summary["request_id"].as_str().expect("request id");
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.matches(request_id).count() >= 3,
        "the platform logged the BFF's calls under request id {request_id}"
    );
}

/// `scripts/demo`, the one command a person runs to try the page: it starts the platform and the
/// BFF, prints the URL, serves the page there, signs a demo customer in, and stops everything on
/// Ctrl-C (SIGINT).
#[test]
fn scripts_demo_starts_the_page_and_stops_on_ctrl_c() {
    use std::io::{BufRead as _, BufReader};
    let _builds = BUILDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (api, admin, web) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut demo = Command::new("scripts/demo")
        .current_dir(repo())
        .env("COMMERCE_BIN", env!("CARGO_BIN_EXE_commerce"))
        .env("API_PORT", api.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("WEB_PORT", web.to_string())
        .env("DEMO_TENANT", "web-demo-script")
        .env_remove("COMMERCE_JWT_HS256_SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run scripts/demo");
    let url = format!("http://127.0.0.1:{web}/");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    let opened = lines.by_ref().map_while(Result::ok).any(|line| {
        printed.push(line.clone());
        line.starts_with(&format!("demo: open {url}"))
    });
    assert!(
        opened,
        "scripts/demo printed no URL:\n{}",
        printed.join("\n")
    );

    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl");
        assert!(output.status.success(), "curl {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let page = curl(&[&url]);
    assert!(page.contains("<script"), "the page is served: {page}");
    let signed_in: Value = serde_json::from_str(&curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"customerId":"ada"}"#,
        &format!("{url}commerce.bff.v1.StorefrontService/SignIn"),
    ]))
    .expect("SignIn answers JSON");
    assert!(
        signed_in["customerToken"]
            .as_str()
            .is_some_and(|token| !token.is_empty()),
        "SignIn: {signed_in}"
    );

    let _ = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|line| line == "demo: stopped"),
        "Ctrl-C stops everything: {rest:?}"
    );
    assert!(demo.wait().expect("wait").code().is_some());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api)).is_err(),
        "the platform is stopped"
    );
}
