// The package's entry point, `@commerce/api-client`: every message schema, enum and service
// descriptor of the public contracts (proto/commerce, generated into ./gen by `buf generate`).
// Single files are importable too: `@commerce/api-client/gen/commerce/loyalty/v1/member_service_pb.js`.
//
// Hand-written; services/commerce/tests/client_examples.rs checks that it re-exports every
// generated file. Names are unique across the contracts today; should two files ever export the
// same name, tsc refuses the ambiguous `export *` and the name must be re-exported explicitly.

// The google.rpc.ErrorInfo of a failed call (its `reason`, `domain`, `metadata`).
export { errorInfo, type ErrorInfo } from "./error_info.js";

// commerce.common.v1
export * from "./gen/commerce/common/v1/address_pb.js";
export * from "./gen/commerce/common/v1/envelope_pb.js";
export * from "./gen/commerce/common/v1/errors_pb.js";
export * from "./gen/commerce/common/v1/money_pb.js";

// commerce.api.v1
export * from "./gen/commerce/api/v1/options_pb.js";

// commerce.checkout.v1
export * from "./gen/commerce/checkout/v1/cart_pb.js";
export * from "./gen/commerce/checkout/v1/cart_service_pb.js";
export * from "./gen/commerce/checkout/v1/checkout_admin_service_pb.js";
export * from "./gen/commerce/checkout/v1/events_pb.js";
export * from "./gen/commerce/checkout/v1/location_pb.js";
export * from "./gen/commerce/checkout/v1/menu_pb.js";
export * from "./gen/commerce/checkout/v1/menu_service_pb.js";
export * from "./gen/commerce/checkout/v1/order_pb.js";
export * from "./gen/commerce/checkout/v1/order_service_pb.js";
export * from "./gen/commerce/checkout/v1/quote_pb.js";

// commerce.loyalty.v1
export * from "./gen/commerce/loyalty/v1/events_pb.js";
export * from "./gen/commerce/loyalty/v1/ledger_pb.js";
export * from "./gen/commerce/loyalty/v1/member_pb.js";
export * from "./gen/commerce/loyalty/v1/member_service_pb.js";
export * from "./gen/commerce/loyalty/v1/points_service_pb.js";
export * from "./gen/commerce/loyalty/v1/program_pb.js";
export * from "./gen/commerce/loyalty/v1/program_service_pb.js";
export * from "./gen/commerce/loyalty/v1/reward_pb.js";
export * from "./gen/commerce/loyalty/v1/reward_service_pb.js";

// commerce.subscriptions.v1
export * from "./gen/commerce/subscriptions/v1/clock_pb.js";
export * from "./gen/commerce/subscriptions/v1/clock_service_pb.js";
export * from "./gen/commerce/subscriptions/v1/events_pb.js";
export * from "./gen/commerce/subscriptions/v1/invoice_pb.js";
export * from "./gen/commerce/subscriptions/v1/invoice_service_pb.js";
export * from "./gen/commerce/subscriptions/v1/plan_pb.js";
export * from "./gen/commerce/subscriptions/v1/plan_service_pb.js";
export * from "./gen/commerce/subscriptions/v1/subscription_pb.js";
export * from "./gen/commerce/subscriptions/v1/subscription_service_pb.js";
