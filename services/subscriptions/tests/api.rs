//! The gRPC handlers over a real engine: requests carry the tenant the platform's layers put on
//! them, and engine errors come back as the contract's status codes.

mod common;

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::subscriptions::v1::{
    self as v1, BillingInterval, InvoiceStatus, PlanVersion, SubscriptionStatus,
    invoice_service_server::InvoiceService, plan_service_server::PlanService,
    subscription_service_server::SubscriptionService,
};
use common::*;
use platform::interceptors::Tenant;
use subscriptions::{InvoiceApi, PlanApi, SubscriptionApi};
use tonic::Request;

fn request<T>(body: T) -> Request<T> {
    let mut request = Request::new(body);
    request.extensions_mut().insert(Tenant(TENANT.into()));
    request
}

#[tokio::test]
async fn a_subscription_made_through_the_handlers_is_billed_listed_and_its_invoice_settled() {
    let h = Harness::new().await;
    let plans = PlanApi::new(h.engine.clone());
    let subs = SubscriptionApi::new(h.engine.clone());
    let invoices = InvoiceApi::new(h.engine.clone());
    let plan = plans
        .create_plan(request(v1::CreatePlanRequest {
            display_name: "Coffee Club".into(),
            description: String::new(),
            terms: Some(PlanVersion {
                price: Some(Money {
                    currency_code: "USD".into(),
                    amount_minor: 900,
                }),
                interval: BillingInterval::Month as i32,
                interval_count: 1,
                ..PlanVersion::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    let created = subs
        .create_subscription(request(v1::CreateSubscriptionRequest {
            customer_id: "cust-1".into(),
            plan_id: plan.plan_id.clone(),
            payment_token: "tok_ok".into(),
            skip_trial: false,
        }))
        .await
        .unwrap()
        .into_inner();
    let sub = created.subscription.unwrap();
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    let invoice = created.first_invoice.unwrap();
    assert_eq!(invoice.status(), InvoiceStatus::Paid);

    let listed = invoices
        .list_invoices(request(v1::ListInvoicesRequest {
            subscription_id: sub.subscription_id.clone(),
            ..v1::ListInvoicesRequest::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.invoices, std::slice::from_ref(&invoice));
    // Paying a paid invoice changes nothing; voiding it is refused as not payable.
    let paid = invoices
        .pay_invoice(request(v1::PayInvoiceRequest {
            invoice_id: invoice.invoice_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(paid, invoice);
    let refused = invoices
        .void_invoice(request(v1::VoidInvoiceRequest {
            invoice_id: invoice.invoice_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let migrated = subs
        .migrate_subscription(request(v1::MigrateSubscriptionRequest {
            subscription_id: sub.subscription_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(migrated.next_plan_version, 1);
    let missing = subs
        .get_subscription(request(v1::GetSubscriptionRequest {
            subscription_id: "sub-nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // Undefined status filters are refused, not ignored.
    let invalid = subs
        .list_subscriptions(request(v1::ListSubscriptionsRequest {
            statuses: vec![99],
            ..v1::ListSubscriptionsRequest::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_price_past_the_money_bound_is_refused_by_the_handler_naming_the_field() {
    use tonic_types::StatusExt as _;
    // No validation layer in front: the engine's own bound answers as validation would.
    let h = Harness::new().await;
    let plans = PlanApi::new(h.engine.clone());
    for amount_minor in [i64::MAX, platform::limits::MAX_AMOUNT_MINOR + 1, -1] {
        let status = plans
            .create_plan(request(v1::CreatePlanRequest {
                display_name: "Everything".into(),
                description: String::new(),
                terms: Some(PlanVersion {
                    price: Some(Money {
                        currency_code: "USD".into(),
                        amount_minor,
                    }),
                    interval: BillingInterval::Month as i32,
                    interval_count: 1,
                    ..PlanVersion::default()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{amount_minor}"
        );
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "price.amount_minor"
        );
    }
}
