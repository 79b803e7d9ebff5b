//! The generated crate carries what the runtime reads from the contract: every service, the custom
//! options, protovalidate rules that actually validate, and proto3 JSON names for Connect callers.

use commerce_api::DESCRIPTOR_POOL;
use commerce_api::commerce::checkout::v1::{
    AddCartLineRequest, ListOrdersRequest, PlaceOrderRequest,
};
use commerce_api::commerce::common::v1::Money;
use prost_protovalidate::{Error, Validator};
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

fn violated_fields(result: Result<(), Error>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(Error::Validation(error)) => {
            error.violations().iter().map(|v| v.field_path()).collect()
        }
        Err(other) => panic!("validator failed to run: {other}"),
    }
}

fn valid_place_order() -> PlaceOrderRequest {
    PlaceOrderRequest {
        cart_id: "cart_01".into(),
        quote_id: "quote_01".into(),
        expected_total: Some(Money {
            currency_code: "USD".into(),
            amount_minor: 1250,
        }),
        payment_token: "tok_visa_4242".into(),
        ..Default::default()
    }
}

/// The three areas, and the PSP simulator's internal contract (`commerce.psp.v1`) that the split
/// topology's PSP process serves.
#[test]
fn descriptor_pool_holds_every_service_of_the_three_areas_and_the_psp_simulator() {
    let mut services: Vec<String> = DESCRIPTOR_POOL
        .services()
        .filter(|service| service.package_name().starts_with("commerce."))
        .map(|service| service.full_name().to_owned())
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            "commerce.checkout.v1.CartService",
            "commerce.checkout.v1.CheckoutAdminService",
            "commerce.checkout.v1.MenuService",
            "commerce.checkout.v1.OrderService",
            "commerce.loyalty.v1.MemberService",
            "commerce.loyalty.v1.PointsService",
            "commerce.loyalty.v1.ProgramService",
            "commerce.loyalty.v1.RewardService",
            "commerce.psp.v1.PspService",
            "commerce.subscriptions.v1.ClockService",
            "commerce.subscriptions.v1.InvoiceService",
            "commerce.subscriptions.v1.PlanService",
            "commerce.subscriptions.v1.SubscriptionService",
        ]
    );
}

#[test]
fn custom_rpc_options_are_readable_from_the_embedded_descriptors() {
    let extension = DESCRIPTOR_POOL
        .get_extension_by_name("commerce.api.v1.rpc")
        .expect("rpc option");
    let place_order = DESCRIPTOR_POOL
        .get_service_by_name("commerce.checkout.v1.OrderService")
        .and_then(|service| {
            service
                .methods()
                .find(|method| method.name() == "PlaceOrder")
        })
        .expect("PlaceOrder");
    let options = place_order.options();
    let Value::Message(policy) = options.get_extension(&extension).into_owned() else {
        panic!("rpc option is not a message")
    };
    let idempotency = policy
        .get_field_by_name("idempotency")
        .expect("field")
        .into_owned();
    let key_required = DESCRIPTOR_POOL
        .get_enum_by_name("commerce.api.v1.Idempotency")
        .and_then(|enumeration| enumeration.get_value_by_name("IDEMPOTENCY_KEY_REQUIRED"))
        .expect("enum value");
    assert_eq!(idempotency, Value::EnumNumber(key_required.number()));

    let Value::Message(auth) = policy.get_field_by_name("auth").expect("auth").into_owned() else {
        panic!("auth is not a message")
    };
    assert_eq!(
        auth.get_field_by_name("scopes")
            .expect("scopes")
            .into_owned(),
        Value::List(vec![Value::String("checkout.orders.write".into())])
    );
}

#[test]
fn a_valid_request_passes_protovalidate() {
    let validator = Validator::new();
    assert_eq!(
        violated_fields(validator.validate(&valid_place_order())),
        Vec::<String>::new()
    );
}

#[test]
fn a_card_number_in_place_of_a_payment_token_is_rejected() {
    let validator = Validator::new();
    let request = PlaceOrderRequest {
        payment_token: "4242424242424242".into(),
        ..valid_place_order()
    };
    assert_eq!(
        violated_fields(validator.validate(&request)),
        ["payment_token"]
    );
}

#[test]
fn field_rules_reject_bad_input_and_report_every_violated_field() {
    let validator = Validator::new();
    let request = AddCartLineRequest {
        cart_id: String::new(),
        item_id: "item_1".into(),
        quantity: 0,
        ..Default::default()
    };
    let mut fields = violated_fields(validator.validate(&request));
    fields.sort();
    assert_eq!(fields, ["cart_id", "quantity"]);

    let missing_total = PlaceOrderRequest {
        expected_total: None,
        ..valid_place_order()
    };
    assert_eq!(
        violated_fields(validator.validate(&missing_total)),
        ["expected_total"]
    );

    let bad_currency = PlaceOrderRequest {
        expected_total: Some(Money {
            currency_code: "usd".into(),
            amount_minor: 1,
        }),
        ..valid_place_order()
    };
    assert_eq!(
        violated_fields(validator.validate(&bad_currency)),
        ["expected_total.currency_code"]
    );
}

#[test]
fn a_negative_page_size_is_rejected_per_aip_158() {
    let validator = Validator::new();
    let request = ListOrdersRequest {
        page_size: -1,
        ..Default::default()
    };
    assert_eq!(violated_fields(validator.validate(&request)), ["page_size"]);
    let zero = ListOrdersRequest {
        page_size: 0,
        ..Default::default()
    };
    assert!(violated_fields(validator.validate(&zero)).is_empty());
}

#[test]
fn money_uses_proto3_json_names_with_int64_as_string() {
    let money = Money {
        currency_code: "EUR".into(),
        amount_minor: 9_007_199_254_740_993,
    };
    let json = serde_json::to_value(money.transcode_to_dynamic()).expect("serialize");
    assert_eq!(
        json,
        serde_json::json!({"currencyCode": "EUR", "amountMinor": "9007199254740993"})
    );

    let back = DynamicMessage::deserialize(
        Money::default().descriptor(),
        serde_json::json!({"currencyCode": "JPY", "amountMinor": "500"}),
    )
    .expect("deserialize");
    assert_eq!(
        back.transcode_to::<Money>().expect("transcode"),
        Money {
            currency_code: "JPY".into(),
            amount_minor: 500
        }
    );
}
