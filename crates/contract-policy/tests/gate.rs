//! The contract gate bites: each test copies `proto/` to a temporary workspace, makes one change,
//! and runs the same `scripts/contract-gate` steps CI runs, against the committed release image.
//!
//! Needs the npm-installed buf CLI and `.deps/` (both set up by `scripts/test`).

mod common;

use common::{Workspace, replace_once};

const NEW_ORDER_RPC: &str = r#"  // Returns the printable receipt of an order.
  rpc GetOrderReceipt(GetOrderReceiptRequest) returns (GetOrderReceiptResponse) {
    option idempotency_level = NO_SIDE_EFFECTS;
    option (commerce.api.v1.rpc) = {
      auth: {
        scopes: ["checkout.orders.read"]
      }
    };
  }
"#;

const NEW_ORDER_RPC_MESSAGES: &str = r#"
// Request of GetOrderReceipt.
message GetOrderReceiptRequest {
  // The order.
  string order_id = 1;
}

// Response of GetOrderReceipt.
message GetOrderReceiptResponse {
  // The receipt as plain text.
  string text = 1;
}
"#;

/// Inserts `rpc` as the first method of OrderService and `messages` at the end of the file.
fn add_order_rpc(text: &str, rpc: &str, messages: &str) -> String {
    let anchor = "  // Places an order from a cart";
    format!(
        "{}{messages}",
        replace_once(text, anchor, &format!("{rpc}{anchor}"))
    )
}

#[test]
fn unchanged_contracts_pass_every_step() {
    Workspace::copy()
        .gate(&["format", "lint", "breaking", "behaviour", "policy"])
        .assert_passed();
}

#[test]
fn removing_a_field_fails_breaking_naming_the_field() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/order.proto", |text| {
        replace_once(
            text,
            "  // Caller's id of the customer, if known.\n  string customer_id = 5;\n",
            "",
        )
    });
    workspace.gate(&["breaking"]).assert_failed_mentioning(&[
        "order.proto",
        r#"field "5" with name "customer_id" on message "Order" was deleted"#,
    ]);
}

#[test]
fn changing_a_field_type_fails_breaking_naming_the_field() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/order.proto", |text| {
        replace_once(text, "  int64 version = 18;", "  int32 version = 18;")
    });
    workspace.gate(&["breaking"]).assert_failed_mentioning(&[
        r#"Field "18" with name "version" on message "Order" changed type from "int64" to "int32""#,
    ]);
}

#[test]
fn renaming_a_json_name_fails_breaking_for_connect_json_callers() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/order.proto", |text| {
        replace_once(
            text,
            "  string cart_id = 3;",
            "  string cart_id = 3 [json_name = \"cartRef\"];",
        )
    });
    workspace.gate(&["breaking"]).assert_failed_mentioning(&[
        r#"Field "3" with name "cart_id" on message "Order" changed option "json_name" from "cartId" to "cartRef""#,
    ]);
}

#[test]
fn removing_an_rpc_fails_breaking_naming_the_rpc() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/order_service.proto", |text| {
        let start = text
            .find("  // Returns one order.\n")
            .expect("GetOrder comment");
        let end = start + text[start..].find("  // Lists orders").expect("next RPC");
        format!("{}{}", &text[..start], &text[end..])
    });
    workspace.gate(&["breaking"]).assert_failed_mentioning(&[
        r#"Previously present RPC "GetOrder" on service "OrderService" was deleted"#,
    ]);
}

#[test]
fn adding_a_field_passes_every_step() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/order.proto", |text| {
        replace_once(
            text,
            "  int64 version = 18;\n",
            "  int64 version = 18;\n  // Note printed on the kitchen ticket.\n  string kitchen_note = 19;\n",
        )
    });
    workspace
        .gate(&["format", "lint", "breaking", "policy"])
        .assert_passed();
}

#[test]
fn adding_an_rpc_passes_every_step() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/order_service.proto", |text| {
        add_order_rpc(text, NEW_ORDER_RPC, NEW_ORDER_RPC_MESSAGES)
    });
    workspace
        .gate(&["format", "lint", "breaking", "policy"])
        .assert_passed();
}

#[test]
fn a_new_mutating_rpc_without_idempotency_fails_the_policy_check() {
    let workspace = Workspace::copy();
    let rpc = r#"  // Reprints the receipt of an order.
  rpc ReprintReceipt(ReprintReceiptRequest) returns (ReprintReceiptResponse) {
    option (commerce.api.v1.rpc) = {
      auth: {
        scopes: ["checkout.orders.write"]
      }
    };
  }
"#;
    let messages = "\n// Request of ReprintReceipt.\nmessage ReprintReceiptRequest {\n  // The order.\n  string order_id = 1;\n}\n\n// Response of ReprintReceipt.\nmessage ReprintReceiptResponse {}\n";
    workspace.edit("checkout/v1/order_service.proto", |text| {
        add_order_rpc(text, rpc, messages)
    });
    let line = workspace.line_of("checkout/v1/order_service.proto", "rpc ReprintReceipt(");
    let run = workspace.gate(&["policy"]);
    run.assert_failed_mentioning(&[
        &format!("commerce/checkout/v1/order_service.proto:{line}: idempotency-declared:"),
        "RPC commerce.checkout.v1.OrderService.ReprintReceipt",
    ]);
    // The additive change itself is not breaking: only the policy check objects.
    workspace.gate(&["breaking"]).assert_passed();
}

#[test]
fn an_rpc_without_auth_fails_the_policy_check() {
    let workspace = Workspace::copy();
    let rpc = "  // Returns the printable receipt of an order.\n  rpc GetOrderReceipt(GetOrderReceiptRequest) returns (GetOrderReceiptResponse) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n  }\n";
    workspace.edit("checkout/v1/order_service.proto", |text| {
        add_order_rpc(text, rpc, NEW_ORDER_RPC_MESSAGES)
    });
    workspace.gate(&["policy"]).assert_failed_mentioning(&[
        "auth-declared",
        "RPC commerce.checkout.v1.OrderService.GetOrderReceipt declares no auth",
    ]);
}

#[test]
fn a_bare_number_for_money_fails_the_policy_check() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/order.proto", |text| {
        replace_once(
            text,
            "  int64 version = 18;\n",
            "  int64 version = 18;\n  // Delivery charge in cents.\n  int64 delivery_fee = 19;\n",
        )
    });
    let line = workspace.line_of("checkout/v1/order.proto", "int64 delivery_fee = 19;");
    workspace.gate(&["policy"]).assert_failed_mentioning(&[
        &format!("commerce/checkout/v1/order.proto:{line}: money-uses-money:"),
        "commerce.checkout.v1.Order.delivery_fee",
    ]);
}

#[test]
fn an_unpaged_list_rpc_fails_the_policy_check() {
    let workspace = Workspace::copy();
    let rpc = NEW_ORDER_RPC
        .replace("GetOrderReceipt", "ListOrderNotes")
        .replace("printable receipt", "notes");
    let messages = NEW_ORDER_RPC_MESSAGES.replace("GetOrderReceipt", "ListOrderNotes");
    workspace.edit("checkout/v1/order_service.proto", |text| {
        add_order_rpc(text, &rpc, &messages)
    });
    workspace.gate(&["policy"]).assert_failed_mentioning(&[
        "list-paged",
        "ListOrderNotesRequest.page_size (int32)",
        "ListOrderNotesResponse.next_page_token (string)",
    ]);
}

#[test]
fn an_unregistered_event_fails_the_policy_check() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/events.proto", |text| {
        format!("{text}\n// A receipt was printed.\nmessage ReceiptPrinted {{\n  // The order.\n  string order_id = 1;\n}}\n")
    });
    workspace.gate(&["policy"]).assert_failed_mentioning(&[
        "event-registered",
        "message commerce.checkout.v1.ReceiptPrinted in events.proto is not registered",
    ]);
}

#[test]
fn a_deprecated_rpc_must_name_its_replacement() {
    let workspace = Workspace::copy();
    let marker = "    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"checkout.orders.read\"]\n        customer: CUSTOMER_ACCESS_OWN\n      }\n    };\n  }\n  // Lists orders";
    workspace.edit("checkout/v1/order_service.proto", |text| {
        replace_once(
            text,
            marker,
            &format!("    option deprecated = true;\n{marker}"),
        )
    });
    workspace.gate(&["policy"]).assert_failed_mentioning(&[
        "deprecation-names-replacement",
        "RPC commerce.checkout.v1.OrderService.GetOrder is deprecated",
    ]);

    let named = marker.replace(
        "      }\n    };\n  }\n  // Lists orders",
        "      }\n      deprecation: {\n        replacement: \"commerce.checkout.v1.OrderService.ListOrders\"\n        removal_version: \"v2\"\n      }\n    };\n  }\n  // Lists orders",
    );
    workspace.edit("checkout/v1/order_service.proto", |text| {
        replace_once(text, marker, &named)
    });
    workspace.gate(&["policy"]).assert_passed();
}

#[test]
fn a_cache_option_on_an_authenticated_or_mutating_rpc_fails_the_policy_check() {
    let workspace = Workspace::copy();
    let read = NEW_ORDER_RPC.replace(
        "      auth: {\n        scopes: [\"checkout.orders.read\"]\n      }\n",
        "      auth: {\n        scopes: [\"checkout.orders.read\"]\n      }\n      cache: {max_age_seconds: 60}\n",
    );
    assert_ne!(read, NEW_ORDER_RPC, "the cache option was added");
    let write = r#"  // Reprints the receipt of an order.
  rpc ReprintReceipt(ReprintReceiptRequest) returns (ReprintReceiptResponse) {
    option (commerce.api.v1.rpc) = {
      auth: {public: true}
      idempotency: IDEMPOTENCY_NATURAL
      cache: {max_age_seconds: 60}
    };
  }
"#;
    let messages = format!(
        "{NEW_ORDER_RPC_MESSAGES}\n// Request of ReprintReceipt.\nmessage ReprintReceiptRequest {{\n  // The order.\n  string order_id = 1;\n}}\n\n// Response of ReprintReceipt.\nmessage ReprintReceiptResponse {{}}\n"
    );
    workspace.edit("checkout/v1/order_service.proto", |text| {
        add_order_rpc(text, &format!("{read}{write}"), &messages)
    });
    let read_line = workspace.line_of("checkout/v1/order_service.proto", "rpc GetOrderReceipt(");
    let write_line = workspace.line_of("checkout/v1/order_service.proto", "rpc ReprintReceipt(");
    workspace.gate(&["policy"]).assert_failed_mentioning(&[
        &format!("commerce/checkout/v1/order_service.proto:{read_line}: cache-public-reads-only:"),
        "RPC commerce.checkout.v1.OrderService.GetOrderReceipt declares (commerce.api.v1.rpc).cache but needs a token",
        &format!("commerce/checkout/v1/order_service.proto:{write_line}: cache-public-reads-only:"),
        "RPC commerce.checkout.v1.OrderService.ReprintReceipt declares (commerce.api.v1.rpc).cache but may have side effects",
    ]);
}

#[test]
fn customer_access_on_a_public_rpc_fails_the_policy_check() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/menu_service.proto", |text| {
        replace_once(
            text,
            "  rpc GetLocation(GetLocationRequest) returns (GetLocationResponse) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {public: true}\n",
            "  rpc GetLocation(GetLocationRequest) returns (GetLocationResponse) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {\n        public: true\n        customer: CUSTOMER_ACCESS_OWN\n      }\n",
        )
    });
    let line = workspace.line_of("checkout/v1/menu_service.proto", "rpc GetLocation(");
    workspace.gate(&["policy"]).assert_failed_mentioning(&[
        &format!("commerce/checkout/v1/menu_service.proto:{line}: customer-access-scoped:"),
        "RPC commerce.checkout.v1.MenuService.GetLocation is public but declares auth.customer",
    ]);
    // Declaring customer access is additive: the breaking check lets it through.
    workspace.gate(&["breaking"]).assert_passed();
}
