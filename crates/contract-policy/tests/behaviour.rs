//! The gate refuses behavioural breaks `buf breaking` cannot see: each test copies `proto/`, makes
//! one change, and runs `scripts/contract-gate behaviour` (as CI does) against the committed
//! release image, or against a release the test cuts from its copy first. Every break fails naming
//! the element and its old → new value; every reverse (loosening) passes; reviewed entries of
//! `proto/BREAKING-ACCEPTED.toml` let exactly their change pass.
//!
//! Needs the npm-installed buf CLI and `.deps/` (both set up by `scripts/test`).

mod common;

use std::process::Command;

use common::{GateRun, Workspace, replace_once};

const MEMBER_SERVICE: &str = "loyalty/v1/member_service.proto";
const POINTS_SERVICE: &str = "loyalty/v1/points_service.proto";
const ORDER_SERVICE: &str = "checkout/v1/order_service.proto";
const MENU_SERVICE: &str = "checkout/v1/menu_service.proto";

const GET_BALANCE_MEMBER_ID: &str = "message GetBalanceRequest {\n  // The member.\n  string member_id = 1 [(buf.validate.field).string = {\n    min_len: 1\n    max_len: 64\n";
const GET_BALANCE_SCOPE: &str = "    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"loyalty.members.read\"]\n        customer: CUSTOMER_ACCESS_OWN\n      }\n    };\n  }\n  // Lists a member's points";

fn behaviour(workspace: &Workspace) -> GateRun {
    workspace.gate(&["behaviour"])
}

/// The gate failed with exactly these findings.
fn assert_refused(run: &GateRun, expected: &[String]) {
    assert!(!run.passed, "gate should fail, but passed:\n{}", run.text);
    assert_eq!(run.findings(), expected, "full output:\n{}", run.text);
}

fn at(file: &str, line: usize, rule: &str, message: &str) -> String {
    format!("commerce/{file}:{line}: {rule}: {message}")
}

/// Line of the field `lines_below` lines under `anchor` (its message's opening line).
fn line_below(workspace: &Workspace, file: &str, anchor: &str, lines_below: usize) -> usize {
    workspace.line_of(file, anchor) + lines_below
}

fn set_get_balance_member_id(text: &str, rules: &str) -> String {
    replace_once(
        text,
        GET_BALANCE_MEMBER_ID,
        &format!(
            "message GetBalanceRequest {{\n  // The member.\n  string member_id = 1 [(buf.validate.field).string = {{\n{rules}"
        ),
    )
}

fn set_points_range(text: &str, range: &str) -> String {
    replace_once(
        text,
        "    gte: -1000000000\n    lte: 1000000000\n    not_in: [0]\n",
        &format!("{range}    not_in: [0]\n"),
    )
}

fn get_balance_rpc(text: &str, options: &str) -> String {
    replace_once(
        text,
        GET_BALANCE_SCOPE,
        &format!("{options}  }}\n  // Lists a member's points"),
    )
}

// ---- validation rules ----

#[test]
fn a_tightened_max_len_fails_naming_the_field() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        set_get_balance_member_id(text, "    min_len: 1\n    max_len: 8\n")
    });
    let line = line_below(&workspace, MEMBER_SERVICE, "message GetBalanceRequest {", 2);
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "validation-tightened",
            "GetBalanceRequest.member_id max_len 64 → 8",
        )],
    );
    // The wire shape and the house rules are fine: only the behaviour step sees this break.
    workspace.gate(&["breaking", "policy"]).assert_passed();
}

#[test]
fn a_loosened_max_len_passes() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        set_get_balance_member_id(text, "    min_len: 1\n    max_len: 128\n")
    });
    behaviour(&workspace).assert_passed();
}

#[test]
fn a_tightened_numeric_range_fails_naming_the_field() {
    let workspace = Workspace::copy();
    workspace.edit(POINTS_SERVICE, |text| {
        set_points_range(text, "    gte: -1000000000\n    lte: 1000000\n")
    });
    let line = workspace.line_of(POINTS_SERVICE, "int64 points = 2");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            POINTS_SERVICE,
            line,
            "validation-tightened",
            "AdjustPointsRequest.points lte 1000000000 → 1000000",
        )],
    );
}

#[test]
fn a_widened_numeric_range_passes() {
    let workspace = Workspace::copy();
    workspace.edit(POINTS_SERVICE, |text| {
        set_points_range(text, "    gte: -2000000000\n    lte: 2000000000\n")
    });
    behaviour(&workspace).assert_passed();
}

#[test]
fn a_new_required_rule_fails_naming_the_field() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            "string display_name = 2 [(buf.validate.field).string.max_len = 120];",
            "string display_name = 2 [\n    (buf.validate.field).required = true,\n    (buf.validate.field).string.max_len = 120\n  ];",
        )
    });
    let line = workspace.line_of(MEMBER_SERVICE, "string display_name = 2 [");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "validation-tightened",
            "EnrollMemberRequest.display_name required false → true",
        )],
    );
}

#[test]
fn a_dropped_required_rule_passes() {
    let workspace = Workspace::copy();
    workspace.edit(POINTS_SERVICE, |text| {
        replace_once(
            text,
            "commerce.common.v1.Money refunded_amount = 4 [(buf.validate.field).required = true];",
            "commerce.common.v1.Money refunded_amount = 4;",
        )
    });
    behaviour(&workspace).assert_passed();
}

fn add_get_balance_field(text: &str, field: &str) -> String {
    replace_once(
        text,
        "    min_len: 1\n    max_len: 64\n  }];\n}\n\n// Response of GetBalance.",
        &format!(
            "    min_len: 1\n    max_len: 64\n  }}];\n  // Region of the balance.\n  {field}\n}}\n\n// Response of GetBalance."
        ),
    )
}

#[test]
fn a_new_field_that_requests_must_set_fails_naming_the_field() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        add_get_balance_field(
            text,
            "string region = 2 [(buf.validate.field).string.min_len = 1];",
        )
    });
    let line = workspace.line_of(MEMBER_SERVICE, "string region = 2");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "validation-tightened",
            "GetBalanceRequest.region min_len unset → 1 (new field)",
        )],
    );
}

#[test]
fn a_new_field_that_requests_may_omit_passes() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        add_get_balance_field(
            text,
            "string region = 2 [(buf.validate.field).string.max_len = 16];",
        )
    });
    behaviour(&workspace).assert_passed();
}

const DISPLAY_NAME: &str = "string display_name = 2 [(buf.validate.field).string.max_len = 120];";

fn display_name_in(values: &str) -> String {
    format!(
        "string display_name = 2 [(buf.validate.field).string = {{\n    max_len: 120\n    in: [{values}]\n  }}];"
    )
}

#[test]
fn a_narrowed_in_list_fails_naming_the_field() {
    let mut workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            DISPLAY_NAME,
            &display_name_in(r#""Ann", "Bob", "Cy""#),
        )
    });
    workspace.release();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            &display_name_in(r#""Ann", "Bob", "Cy""#),
            &display_name_in(r#""Ann", "Bob""#),
        )
    });
    let line = workspace.line_of(MEMBER_SERVICE, "string display_name = 2 [");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "validation-tightened",
            r#"EnrollMemberRequest.display_name in ["Ann", "Bob", "Cy"] → ["Ann", "Bob"]"#,
        )],
    );
}

#[test]
fn a_widened_in_list_passes() {
    let mut workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(text, DISPLAY_NAME, &display_name_in(r#""Ann", "Bob""#))
    });
    workspace.release();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            &display_name_in(r#""Ann", "Bob""#),
            &display_name_in(r#""Ann", "Bob", "Cy""#),
        )
    });
    behaviour(&workspace).assert_passed();
}

const CURRENCY_PATTERN: &str =
    r#"string currency_code = 1 [(buf.validate.field).string.pattern = "^[A-Z]{3}$"];"#;

#[test]
fn a_changed_pattern_fails_as_incomparable_even_when_wider() {
    let workspace = Workspace::copy();
    workspace.edit("common/v1/money.proto", |text| {
        replace_once(
            text,
            CURRENCY_PATTERN,
            r#"string currency_code = 1 [(buf.validate.field).string.pattern = "^[A-Z]{3,4}$"];"#,
        )
    });
    let line = workspace.line_of("common/v1/money.proto", "string currency_code = 1");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            "common/v1/money.proto",
            line,
            "validation-incomparable",
            r#"Money.currency_code pattern "^[A-Z]{3}$" → "^[A-Z]{3,4}$""#,
        )],
    );
}

#[test]
fn a_removed_pattern_passes() {
    let workspace = Workspace::copy();
    workspace.edit("common/v1/money.proto", |text| {
        replace_once(text, CURRENCY_PATTERN, "string currency_code = 1;")
    });
    behaviour(&workspace).assert_passed();
}

// ---- RPC policy ----

#[test]
fn an_added_scope_fails_naming_the_rpc() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        get_balance_rpc(
            text,
            "    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"loyalty.members.read\", \"loyalty.admin\"]\n      }\n    };\n",
        )
    });
    let line = workspace.line_of(MEMBER_SERVICE, "rpc GetBalance(");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "auth-tightened",
            "MemberService.GetBalance scopes [loyalty.members.read] → [loyalty.admin, loyalty.members.read]",
        )],
    );
    // The wire shape and the house rules are fine: only the behaviour step sees this break.
    workspace.gate(&["breaking", "policy"]).assert_passed();
}

#[test]
fn a_dropped_scope_passes() {
    let mut workspace = Workspace::copy();
    let two_scopes = "    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"loyalty.members.read\", \"loyalty.admin\"]\n      }\n    };\n";
    workspace.edit(MEMBER_SERVICE, |text| get_balance_rpc(text, two_scopes));
    workspace.release();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            "[\"loyalty.members.read\", \"loyalty.admin\"]",
            "[\"loyalty.members.read\"]",
        )
    });
    behaviour(&workspace).assert_passed();
}

#[test]
fn a_public_rpc_becoming_authenticated_fails_naming_the_rpc() {
    let workspace = Workspace::copy();
    workspace.edit(MENU_SERVICE, |text| {
        replace_once(
            text,
            "rpc GetLocation(GetLocationRequest) returns (GetLocationResponse) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {public: true}\n",
            "rpc GetLocation(GetLocationRequest) returns (GetLocationResponse) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"checkout.menu.read\"]\n      }\n",
        )
    });
    let line = workspace.line_of(MENU_SERVICE, "rpc GetLocation(");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MENU_SERVICE,
            line,
            "auth-tightened",
            "MenuService.GetLocation auth public → scopes [checkout.menu.read]",
        )],
    );
}

#[test]
fn an_authenticated_rpc_becoming_public_passes() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        get_balance_rpc(
            text,
            "    option idempotency_level = NO_SIDE_EFFECTS;\n    option (commerce.api.v1.rpc) = {\n      auth: {public: true}\n    };\n",
        )
    });
    behaviour(&workspace).assert_passed();
}

const ACCRUE_POINTS_NATURAL: &str = "rpc AccruePoints(AccruePointsRequest) returns (AccruePointsResponse) {\n    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"loyalty.points.write\"]\n      }\n      idempotency: IDEMPOTENCY_NATURAL\n";

fn accrue_points_with(idempotency: &str) -> String {
    ACCRUE_POINTS_NATURAL.replace("IDEMPOTENCY_NATURAL", idempotency)
}

#[test]
fn an_optional_key_becoming_required_fails_naming_the_rpc() {
    let mut workspace = Workspace::copy();
    workspace.edit(POINTS_SERVICE, |text| {
        replace_once(
            text,
            ACCRUE_POINTS_NATURAL,
            &accrue_points_with("IDEMPOTENCY_KEY_OPTIONAL"),
        )
    });
    workspace.release();
    workspace.edit(POINTS_SERVICE, |text| {
        replace_once(
            text,
            &accrue_points_with("IDEMPOTENCY_KEY_OPTIONAL"),
            &accrue_points_with("IDEMPOTENCY_KEY_REQUIRED"),
        )
    });
    let line = workspace.line_of(POINTS_SERVICE, "rpc AccruePoints(");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            POINTS_SERVICE,
            line,
            "idempotency-tightened",
            "PointsService.AccruePoints idempotency IDEMPOTENCY_KEY_OPTIONAL → IDEMPOTENCY_KEY_REQUIRED",
        )],
    );
    // The wire shape and the house rules are fine: only the behaviour step sees this break.
    workspace.gate(&["breaking", "policy"]).assert_passed();
}

#[test]
fn a_required_key_becoming_optional_passes() {
    let workspace = Workspace::copy();
    workspace.edit(POINTS_SERVICE, |text| {
        replace_once(
            text,
            "        scopes: [\"loyalty.points.adjust\"]\n      }\n      idempotency: IDEMPOTENCY_KEY_REQUIRED\n",
            "        scopes: [\"loyalty.points.adjust\"]\n      }\n      idempotency: IDEMPOTENCY_KEY_OPTIONAL\n",
        )
    });
    behaviour(&workspace).assert_passed();
}

fn place_order_timeout(text: &str, timeout: &str) -> String {
    replace_once(
        text,
        "      idempotency: IDEMPOTENCY_KEY_REQUIRED\n      max_timeout_ms: 30000\n",
        &format!("      idempotency: IDEMPOTENCY_KEY_REQUIRED\n      max_timeout_ms: {timeout}\n"),
    )
}

#[test]
fn a_lowered_max_timeout_fails_naming_the_rpc() {
    let workspace = Workspace::copy();
    workspace.edit(ORDER_SERVICE, |text| place_order_timeout(text, "10000"));
    let line = workspace.line_of(ORDER_SERVICE, "rpc PlaceOrder(");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            ORDER_SERVICE,
            line,
            "timeout-lowered",
            "OrderService.PlaceOrder max_timeout_ms 30000 → 10000",
        )],
    );
}

#[test]
fn a_raised_max_timeout_passes() {
    let workspace = Workspace::copy();
    workspace.edit(ORDER_SERVICE, |text| place_order_timeout(text, "60000"));
    behaviour(&workspace).assert_passed();
}

fn place_order_rate_cost(text: &str, tokens: &str) -> String {
    replace_once(
        text,
        "      max_timeout_ms: 30000\n",
        &format!("      max_timeout_ms: 30000\n      rate_limit_tokens: {tokens}\n"),
    )
}

#[test]
fn a_rate_cost_more_than_doubled_fails_naming_the_rpc() {
    let workspace = Workspace::copy();
    workspace.edit(ORDER_SERVICE, |text| place_order_rate_cost(text, "5"));
    let line = workspace.line_of(ORDER_SERVICE, "rpc PlaceOrder(");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            ORDER_SERVICE,
            line,
            "rate-cost-raised",
            "OrderService.PlaceOrder rate_limit_tokens 1 → 5",
        )],
    );
}

#[test]
fn a_rate_cost_at_most_doubled_passes() {
    let workspace = Workspace::copy();
    workspace.edit(ORDER_SERVICE, |text| place_order_rate_cost(text, "2"));
    behaviour(&workspace).assert_passed();
}

#[test]
fn a_read_losing_no_side_effects_fails_naming_the_rpc() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        get_balance_rpc(
            text,
            "    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"loyalty.members.read\"]\n      }\n      idempotency: IDEMPOTENCY_NATURAL\n    };\n",
        )
    });
    let line = workspace.line_of(MEMBER_SERVICE, "rpc GetBalance(");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "no-side-effects-lost",
            "MemberService.GetBalance idempotency_level NO_SIDE_EFFECTS → IDEMPOTENCY_UNKNOWN",
        )],
    );
}

#[test]
fn an_rpc_gaining_no_side_effects_passes() {
    let workspace = Workspace::copy();
    workspace.edit(POINTS_SERVICE, |text| {
        replace_once(
            text,
            "rpc AccruePoints(AccruePointsRequest) returns (AccruePointsResponse) {\n",
            "rpc AccruePoints(AccruePointsRequest) returns (AccruePointsResponse) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n",
        )
    });
    behaviour(&workspace).assert_passed();
}

// ---- events ----

const ORDER_PAID_REGISTRATION: &str = "message OrderPaid {\n  option (commerce.api.v1.event) = {\n    aggregate: \"order\"\n    emitted_when: \"the payment is captured\"\n  };\n";

#[test]
fn a_changed_event_aggregate_fails_naming_the_event() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/events.proto", |text| {
        replace_once(
            text,
            ORDER_PAID_REGISTRATION,
            &ORDER_PAID_REGISTRATION.replace("aggregate: \"order\"", "aggregate: \"payment\""),
        )
    });
    let line = workspace.line_of("checkout/v1/events.proto", "message OrderPaid {");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            "checkout/v1/events.proto",
            line,
            "event-registration-changed",
            "OrderPaid aggregate order → payment",
        )],
    );
}

#[test]
fn an_unregistered_event_type_fails_naming_the_event() {
    let workspace = Workspace::copy();
    workspace.edit("checkout/v1/events.proto", |text| {
        replace_once(text, ORDER_PAID_REGISTRATION, "message OrderPaid {\n")
    });
    let line = workspace.line_of("checkout/v1/events.proto", "message OrderPaid {");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            "checkout/v1/events.proto",
            line,
            "event-removed",
            "OrderPaid event (aggregate order) → not registered",
        )],
    );
}

// ---- deprecations ----

const GET_ORDER_POLICY: &str = "    option (commerce.api.v1.rpc) = {\n      auth: {\n        scopes: [\"checkout.orders.read\"]\n        customer: CUSTOMER_ACCESS_OWN\n      }\n    };\n  }\n  // Lists orders";

/// Deprecates GetOrder with `schedule` (fields of its `deprecation`), releases that, then removes
/// GetOrder from the working tree.
fn remove_deprecated_get_order(schedule: &str) -> Workspace {
    let mut workspace = Workspace::copy();
    workspace.edit(ORDER_SERVICE, |text| {
        replace_once(
            text,
            GET_ORDER_POLICY,
            &format!(
                "    option deprecated = true;\n    option (commerce.api.v1.rpc) = {{\n      auth: {{\n        scopes: [\"checkout.orders.read\"]\n      }}\n      deprecation: {{\n        replacement: \"commerce.checkout.v1.OrderService.ListOrders\"\n{schedule}      }}\n    }};\n  }}\n  // Lists orders"
            ),
        )
    });
    workspace.release();
    workspace.edit(ORDER_SERVICE, |text| {
        let start = text
            .find("  // Returns one order.\n")
            .expect("GetOrder comment");
        let end = start + text[start..].find("  // Lists orders").expect("next RPC");
        format!("{}{}", &text[..start], &text[end..])
    });
    workspace
}

#[test]
fn removing_a_deprecated_rpc_before_its_sunset_fails_naming_the_sunset() {
    let mut workspace = remove_deprecated_get_order(
        "        removal_version: \"v1\"\n        sunset_date: \"2027-06-30\"\n",
    );
    workspace.on("2027-06-30");
    let line = workspace.line_of(ORDER_SERVICE, "service OrderService {");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            ORDER_SERVICE,
            line,
            "deprecated-removed-early",
            "OrderService.GetOrder deprecated (removal_version v1, sunset_date 2027-06-30) → removed",
        )],
    );
}

#[test]
fn removing_a_deprecated_rpc_after_its_sunset_passes() {
    let mut workspace = remove_deprecated_get_order(
        "        removal_version: \"v1\"\n        sunset_date: \"2027-06-30\"\n",
    );
    workspace.on("2027-07-01");
    behaviour(&workspace).assert_passed();
}

#[test]
fn removing_a_deprecated_rpc_whose_removal_version_is_a_later_package_fails_after_its_sunset() {
    let mut workspace = remove_deprecated_get_order(
        "        removal_version: \"v2\"\n        sunset_date: \"2027-06-30\"\n",
    );
    workspace.on("2030-01-01");
    behaviour(&workspace).assert_failed_mentioning(&[
        "deprecated-removed-early",
        "OrderService.GetOrder deprecated (removal_version v2, sunset_date 2027-06-30) → removed",
    ]);
}

#[test]
fn removing_a_deprecated_field_follows_the_schedule_in_its_comment() {
    let mut workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            "  // Name shown in apps.\n  string display_name = 2 [(buf.validate.field).string.max_len = 120];\n",
            "  // Name shown in apps.\n  // Deprecated: use profile_name; removal in v1, sunset 2027-06-30.\n  string display_name = 2 [\n    deprecated = true,\n    (buf.validate.field).string.max_len = 120\n  ];\n",
        )
    });
    workspace.release();
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            "  // Name shown in apps.\n  // Deprecated: use profile_name; removal in v1, sunset 2027-06-30.\n  string display_name = 2 [\n    deprecated = true,\n    (buf.validate.field).string.max_len = 120\n  ];\n",
            "  reserved 2;\n  reserved \"display_name\";\n",
        )
    });
    workspace.on("2027-06-30");
    let line = workspace.line_of(MEMBER_SERVICE, "message EnrollMemberRequest {");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "deprecated-removed-early",
            "EnrollMemberRequest.display_name deprecated (removal_version v1, sunset_date 2027-06-30) → removed",
        )],
    );
    workspace.on("2027-07-01");
    behaviour(&workspace).assert_passed();
}

// ---- accepted breaks ----

const ACCEPT_MAX_LEN: &str = r##"# Reviewed.
[[accepted]]
element = "commerce.loyalty.v1.GetBalanceRequest.member_id"
rule = "validation-tightened"
change = "max_len 64 → 8"
reason = "member ids are 8 characters; nothing longer was ever issued"
approved_by = "api-review"
issue = "#21"
expires = 2099-12-31
"##;

#[test]
fn an_accepted_entry_lets_exactly_its_change_pass() {
    let workspace = Workspace::copy();
    workspace.accept(ACCEPT_MAX_LEN);
    workspace.edit(MEMBER_SERVICE, |text| {
        set_get_balance_member_id(text, "    min_len: 1\n    max_len: 8\n")
    });
    let run = behaviour(&workspace);
    run.assert_passed();
    assert!(
        run.text.contains(
            "accepted by proto/BREAKING-ACCEPTED.toml: commerce/loyalty/v1/member_service.proto:"
        ),
        "{}",
        run.text
    );

    // A second change of the same field is not covered by the entry.
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            "    min_len: 1\n    max_len: 8\n",
            "    min_len: 2\n    max_len: 8\n",
        )
    });
    let line = line_below(&workspace, MEMBER_SERVICE, "message GetBalanceRequest {", 2);
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "validation-tightened",
            "GetBalanceRequest.member_id min_len 1 → 2",
        )],
    );
}

#[test]
fn an_accepted_entry_for_a_different_change_of_the_element_is_stale() {
    let workspace = Workspace::copy();
    workspace.accept(ACCEPT_MAX_LEN);
    workspace.edit(MEMBER_SERVICE, |text| {
        set_get_balance_member_id(text, "    min_len: 1\n    max_len: 4\n")
    });
    let line = line_below(&workspace, MEMBER_SERVICE, "message GetBalanceRequest {", 2);
    assert_refused(
        &behaviour(&workspace),
        &[
            at(
                MEMBER_SERVICE,
                line,
                "validation-tightened",
                "GetBalanceRequest.member_id max_len 64 → 4",
            ),
            r#"proto/BREAKING-ACCEPTED.toml:2: accepted-entry-stale: no finding commerce.loyalty.v1.GetBalanceRequest.member_id validation-tightened "max_len 64 → 8" to accept; remove the entry"#.to_owned(),
        ],
    );
}

#[test]
fn a_stale_entry_fails_the_gate() {
    let workspace = Workspace::copy();
    workspace.accept(ACCEPT_MAX_LEN);
    let run = behaviour(&workspace);
    assert_refused(
        &run,
        &[r#"proto/BREAKING-ACCEPTED.toml:2: accepted-entry-stale: no finding commerce.loyalty.v1.GetBalanceRequest.member_id validation-tightened "max_len 64 → 8" to accept; remove the entry"#.to_owned()],
    );
}

#[test]
fn an_expired_entry_fails_the_gate_and_accepts_nothing() {
    let mut workspace = Workspace::copy();
    workspace.accept(&ACCEPT_MAX_LEN.replace("2099-12-31", "2026-01-31"));
    workspace.edit(MEMBER_SERVICE, |text| {
        set_get_balance_member_id(text, "    min_len: 1\n    max_len: 8\n")
    });
    workspace.on("2026-01-31");
    behaviour(&workspace).assert_passed();

    workspace.on("2026-02-01");
    let line = line_below(&workspace, MEMBER_SERVICE, "message GetBalanceRequest {", 2);
    assert_refused(
        &behaviour(&workspace),
        &[
            at(
                MEMBER_SERVICE,
                line,
                "validation-tightened",
                "GetBalanceRequest.member_id max_len 64 → 8",
            ),
            r#"proto/BREAKING-ACCEPTED.toml:2: accepted-entry-expired: the acceptance of commerce.loyalty.v1.GetBalanceRequest.member_id validation-tightened "max_len 64 → 8" expired on 2026-01-31; fix the contract, or review the entry again with a new expiry"#.to_owned(),
        ],
    );
}

#[test]
fn an_entry_without_a_reason_fails_the_gate_naming_its_line() {
    let workspace = Workspace::copy();
    workspace.accept(&ACCEPT_MAX_LEN.replace(
        "reason = \"member ids are 8 characters; nothing longer was ever issued\"\n",
        "",
    ));
    behaviour(&workspace).assert_failed_mentioning(&[
        "proto/BREAKING-ACCEPTED.toml",
        "at line 2",
        "missing field `reason`",
    ]);
}

#[test]
fn a_refused_break_comes_with_a_ready_entry_to_review() {
    let workspace = Workspace::copy();
    workspace.edit(MEMBER_SERVICE, |text| {
        set_get_balance_member_id(text, "    min_len: 1\n    max_len: 8\n")
    });
    behaviour(&workspace).assert_failed_mentioning(&[
        "[[accepted]]\nelement = \"commerce.loyalty.v1.GetBalanceRequest.member_id\"\nrule = \"validation-tightened\"\nchange = \"max_len 64 → 8\"\n",
    ]);
}

#[test]
fn list_rules_names_the_behavioural_rules() {
    let output = Command::new(env!("CARGO_BIN_EXE_contract-policy"))
        .arg("--list-rules")
        .output()
        .expect("run contract-policy --list-rules");
    assert!(output.status.success());
    let listed = String::from_utf8_lossy(&output.stdout);
    for (rule, _) in contract_policy::BEHAVIOUR_RULES
        .iter()
        .chain(contract_policy::ACCEPTED_FILE_RULES)
        .chain(contract_policy::RULES)
    {
        assert!(
            listed.contains(&format!("{rule}: ")),
            "{rule} missing:\n{listed}"
        );
    }
}

#[test]
fn closing_a_released_method_to_customers_fails_naming_the_rpc() {
    let mut workspace = Workspace::copy();
    // A release in which customers may read their balance…
    workspace.release();
    // …then the method is closed to customer tokens: browsers holding one would be refused.
    workspace.edit(MEMBER_SERVICE, |text| {
        replace_once(
            text,
            GET_BALANCE_SCOPE,
            &GET_BALANCE_SCOPE.replace("        customer: CUSTOMER_ACCESS_OWN\n", ""),
        )
    });
    let line = workspace.line_of(MEMBER_SERVICE, "rpc GetBalance(");
    assert_refused(
        &behaviour(&workspace),
        &[at(
            MEMBER_SERVICE,
            line,
            "auth-tightened",
            "MemberService.GetBalance customer access CUSTOMER_ACCESS_OWN → none",
        )],
    );
}
