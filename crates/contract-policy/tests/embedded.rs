//! The contracts compiled into `commerce-api` (what the runtime will read) obey every house rule.

#[test]
fn the_embedded_contracts_have_no_policy_violations() {
    let violations = contract_policy::check(&commerce_api::DESCRIPTOR_POOL);
    let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        report.is_empty(),
        "policy violations:\n{}",
        report.join("\n")
    );
}

#[test]
fn violations_carry_real_source_lines() {
    // Strip the rpc option from PlaceOrder in a copy of the pool's files and check the report
    // points at the RPC's own line in order_service.proto.
    use prost::Message as _;
    let mut set = prost_types::FileDescriptorSet {
        file: commerce_api::DESCRIPTOR_POOL
            .file_descriptor_protos()
            .cloned()
            .collect(),
    };
    let file = set
        .file
        .iter_mut()
        .find(|file| file.name() == "commerce/checkout/v1/order_service.proto")
        .expect("order_service.proto");
    let method = file.service[0]
        .method
        .iter_mut()
        .find(|m| m.name() == "PlaceOrder")
        .expect("PlaceOrder");
    // prost_types drops unknown (extension) fields, so clearing options removes the rpc policy.
    method.options = None;
    let pool = prost_reflect::DescriptorPool::decode(set.encode_to_vec().as_slice()).expect("pool");
    let violations = contract_policy::check(&pool);
    let place_order: Vec<_> = violations
        .iter()
        .filter(|v| v.message.contains("OrderService.PlaceOrder "))
        .collect();
    let rules: Vec<&str> = place_order.iter().map(|v| v.rule).collect();
    assert_eq!(
        rules,
        ["auth-declared", "idempotency-declared"],
        "{violations:#?}"
    );
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/commerce/checkout/v1/order_service.proto"
    ))
    .expect("read proto");
    let line = source
        .lines()
        .position(|line| line.contains("rpc PlaceOrder("))
        .expect("rpc line")
        + 1;
    assert!(
        place_order
            .iter()
            .all(|v| v.line == line && v.file == "commerce/checkout/v1/order_service.proto")
    );
}
