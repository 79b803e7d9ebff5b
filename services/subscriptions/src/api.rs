//! The gRPC handlers of PlanService, SubscriptionService and InvoiceService: each reads the
//! tenant the platform put on the request, calls the engine, and maps its error once.
//!
//! Creates and plan changes (`IDEMPOTENCY_KEY_REQUIRED`) pass the request's idempotency context
//! to the engine, whose commit completing the call records the exact response under the key, so
//! a crash before the reply leaves a replay, not a second run; and the id derived from the key,
//! which the engine remembers: a call finding the key used (a retry of a call whose charge had an
//! unknown outcome, say) finds the resource the first attempt created instead of making another.

use platform::units::ms_of;
use std::sync::Arc;

use commerce_api::commerce::subscriptions::v1::{
    self as v1, InvoiceStatus, SubscriptionStatus, invoice_service_server::InvoiceService,
    plan_service_server::PlanService, subscription_service_server::SubscriptionService,
};
use platform::ApiError;
use platform::request::{customer, idempotency, idempotency_id, page_size, tenant};
use tonic::{Request, Response, Status};

use crate::engine::Subscriptions;
use crate::error::{ERROR_DOMAIN, SubscriptionsError};

type Reply<T> = Result<Response<T>, Status>;

fn fail(error: SubscriptionsError) -> Status {
    ApiError::from(error).into_status(ERROR_DOMAIN)
}

/// NOT_FOUND for an object a customer token may not see (another customer's reads exactly like
/// one that does not exist).
fn owned_by(
    customer: Option<&str>,
    owner: &str,
    resource: &'static str,
    id: &str,
) -> Result<(), Status> {
    platform::request::owned(customer, owner, || {
        fail(SubscriptionsError::NotFound {
            resource,
            id: id.to_owned(),
        })
    })
}

/// For a customer token: subscription `id` must be the caller's own.
async fn own_subscription<T>(
    engine: &Subscriptions,
    request: &Request<T>,
    tenant: &str,
    id: &str,
) -> Result<(), Status> {
    let Some(customer) = customer(request) else {
        return Ok(());
    };
    let subscription = engine.subscription(tenant, id).await.map_err(fail)?;
    owned_by(
        Some(&customer),
        &subscription.customer_id,
        "subscription",
        id,
    )
}

/// For a customer token: invoice `id` must bill the caller.
async fn own_invoice<T>(
    engine: &Subscriptions,
    request: &Request<T>,
    tenant: &str,
    id: &str,
) -> Result<(), Status> {
    let Some(customer) = customer(request) else {
        return Ok(());
    };
    let invoice = engine.invoice(tenant, id).await.map_err(fail)?;
    owned_by(Some(&customer), &invoice.customer_id, "invoice", id)
}

fn ok<T>(message: T) -> Reply<T> {
    Ok(Response::new(message))
}

/// The page size a list asks for, as the engine takes it (`platform::request::page_size`).
fn size(requested: i32) -> i32 {
    page_size(requested) as i32
}

/// Statuses of a list filter, refusing values the enum does not define.
fn statuses<T: TryFrom<i32>>(values: &[i32]) -> Result<Vec<T>, Status> {
    values
        .iter()
        .map(|&value| {
            T::try_from(value).map_err(|_| {
                fail(SubscriptionsError::invalid(
                    "statuses",
                    format!("{value} is not a defined status"),
                ))
            })
        })
        .collect()
}

/// PlanService over the engine.
#[derive(Clone)]
pub struct PlanApi {
    engine: Arc<Subscriptions>,
}

impl PlanApi {
    /// Handlers over `engine`.
    pub fn new(engine: Arc<Subscriptions>) -> Self {
        PlanApi { engine }
    }
}

#[tonic::async_trait]
impl PlanService for PlanApi {
    async fn create_plan(
        &self,
        request: Request<v1::CreatePlanRequest>,
    ) -> Reply<v1::CreatePlanResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        // The commit creating the plan recorded this very response for the key.
        let plan = self
            .engine
            .create_plan_recording(
                &tenant,
                &key,
                &body.display_name,
                &body.description,
                body.terms.unwrap_or_default(),
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("subscriptions.create_plan.replying");
        ok(v1::CreatePlanResponse { plan: Some(plan) })
    }

    async fn get_plan(&self, request: Request<v1::GetPlanRequest>) -> Reply<v1::GetPlanResponse> {
        let tenant = tenant(&request)?;
        let plan = self
            .engine
            .plan(&tenant, &request.get_ref().plan_id)
            .await
            .map_err(fail)?;
        ok(v1::GetPlanResponse { plan: Some(plan) })
    }

    async fn list_plans(
        &self,
        request: Request<v1::ListPlansRequest>,
    ) -> Reply<v1::ListPlansResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let (plans, next_page_token) = self
            .engine
            .list_plans(
                &tenant,
                size(body.page_size),
                &body.page_token,
                body.include_archived,
            )
            .await
            .map_err(fail)?;
        ok(v1::ListPlansResponse {
            plans,
            next_page_token,
        })
    }

    async fn create_plan_version(
        &self,
        request: Request<v1::CreatePlanVersionRequest>,
    ) -> Reply<v1::CreatePlanVersionResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        let price = body
            .price
            .ok_or_else(|| fail(SubscriptionsError::invalid("price", "is required")))?;
        // The commit adding the version recorded this very response for the key.
        let plan = self
            .engine
            .add_plan_version_recording(
                &tenant,
                &key,
                &body.plan_id,
                price,
                body.trial_days,
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("subscriptions.create_plan_version.replying");
        ok(v1::CreatePlanVersionResponse { plan: Some(plan) })
    }

    async fn archive_plan(
        &self,
        request: Request<v1::ArchivePlanRequest>,
    ) -> Reply<v1::ArchivePlanResponse> {
        let tenant = tenant(&request)?;
        let plan = self
            .engine
            .archive_plan(&tenant, &request.get_ref().plan_id)
            .await
            .map_err(fail)?;
        ok(v1::ArchivePlanResponse { plan: Some(plan) })
    }
}

/// SubscriptionService over the engine.
#[derive(Clone)]
pub struct SubscriptionApi {
    engine: Arc<Subscriptions>,
}

impl SubscriptionApi {
    /// Handlers over `engine`.
    pub fn new(engine: Arc<Subscriptions>) -> Self {
        SubscriptionApi { engine }
    }
}

#[tonic::async_trait]
impl SubscriptionService for SubscriptionApi {
    async fn create_subscription(
        &self,
        request: Request<v1::CreateSubscriptionRequest>,
    ) -> Reply<v1::CreateSubscriptionResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let customer = customer(&request);
        let mut body = request.into_inner();
        // A customer subscribes themselves: the token names the customer.
        if let Some(customer) = customer {
            if !body.customer_id.is_empty() && body.customer_id != customer {
                return Err(ApiError::new(
                    tonic::Code::PermissionDenied,
                    commerce_api::commerce::common::v1::ErrorReason::CustomerNotAllowed,
                    "a customer token subscribes its own customer only",
                )
                .into_status(ERROR_DOMAIN));
            }
            body.customer_id = customer;
        }
        // The commit completing the creation (the first charge's outcome, or the creation of a
        // trial) recorded this very response for the key.
        let created = self
            .engine
            .create_subscription_recording(
                &tenant,
                &key,
                &body.customer_id,
                &body.plan_id,
                &body.payment_token,
                body.skip_trial,
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("subscriptions.create_subscription.replying");
        ok(v1::CreateSubscriptionResponse {
            subscription: Some(created.subscription),
            first_invoice: created.first_invoice,
        })
    }

    async fn get_subscription(
        &self,
        request: Request<v1::GetSubscriptionRequest>,
    ) -> Reply<v1::GetSubscriptionResponse> {
        let tenant = tenant(&request)?;
        own_subscription(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().subscription_id,
        )
        .await?;
        let subscription = self
            .engine
            .subscription(&tenant, &request.get_ref().subscription_id)
            .await
            .map_err(fail)?;
        ok(v1::GetSubscriptionResponse {
            subscription: Some(subscription),
        })
    }

    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Reply<v1::ListSubscriptionsResponse> {
        let tenant = tenant(&request)?;
        let customer = customer(&request);
        let mut body = request.into_inner();
        // A customer lists only their own subscriptions; asking for another's finds none.
        if let Some(customer) = customer {
            if !body.customer_id.is_empty() && body.customer_id != customer {
                return ok(v1::ListSubscriptionsResponse::default());
            }
            body.customer_id = customer;
        }
        let statuses = statuses::<SubscriptionStatus>(&body.statuses)?;
        let (subscriptions, next_page_token) = self
            .engine
            .list_subscriptions(
                &tenant,
                &body.customer_id,
                &statuses,
                size(body.page_size),
                &body.page_token,
            )
            .await
            .map_err(fail)?;
        ok(v1::ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        })
    }

    async fn preview_plan_change(
        &self,
        request: Request<v1::PreviewPlanChangeRequest>,
    ) -> Reply<v1::PreviewPlanChangeResponse> {
        let tenant = tenant(&request)?;
        own_subscription(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().subscription_id,
        )
        .await?;
        let body = request.into_inner();
        let proration = self
            .engine
            .preview_plan_change(&tenant, &body.subscription_id, &body.new_plan_id)
            .await
            .map_err(fail)?;
        ok(v1::PreviewPlanChangeResponse {
            proration: Some(proration),
        })
    }

    async fn change_plan(
        &self,
        request: Request<v1::ChangePlanRequest>,
    ) -> Reply<v1::ChangePlanResponse> {
        let tenant = tenant(&request)?;
        own_subscription(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().subscription_id,
        )
        .await?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        // The commit completing the change (the proration invoice's payment outcome, or the
        // change itself when nothing is invoiced) recorded this very response for the key.
        let change = self
            .engine
            .change_plan_recording(
                &tenant,
                &key,
                &body.subscription_id,
                &body.new_plan_id,
                body.expected_net.map(|net| net.amount_minor),
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("subscriptions.change_plan.replying");
        ok(v1::ChangePlanResponse {
            subscription: Some(change.subscription),
            invoice: change.invoice,
        })
    }

    async fn pause_subscription(
        &self,
        request: Request<v1::PauseSubscriptionRequest>,
    ) -> Reply<v1::PauseSubscriptionResponse> {
        let tenant = tenant(&request)?;
        own_subscription(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().subscription_id,
        )
        .await?;
        let body = request.into_inner();
        let subscription = self
            .engine
            .pause_subscription(&tenant, &body.subscription_id, ms_of(&body.resume_time))
            .await
            .map_err(fail)?;
        ok(v1::PauseSubscriptionResponse {
            subscription: Some(subscription),
        })
    }

    async fn resume_subscription(
        &self,
        request: Request<v1::ResumeSubscriptionRequest>,
    ) -> Reply<v1::ResumeSubscriptionResponse> {
        let tenant = tenant(&request)?;
        own_subscription(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().subscription_id,
        )
        .await?;
        let body = request.into_inner();
        let subscription = self
            .engine
            .resume_subscription(&tenant, &body.subscription_id, ms_of(&body.resume_time))
            .await
            .map_err(fail)?;
        ok(v1::ResumeSubscriptionResponse {
            subscription: Some(subscription),
        })
    }

    async fn cancel_subscription(
        &self,
        request: Request<v1::CancelSubscriptionRequest>,
    ) -> Reply<v1::CancelSubscriptionResponse> {
        let tenant = tenant(&request)?;
        own_subscription(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().subscription_id,
        )
        .await?;
        let body = request.into_inner();
        let subscription = self
            .engine
            .cancel_subscription(
                &tenant,
                &body.subscription_id,
                body.at_period_end,
                &body.reason,
            )
            .await
            .map_err(fail)?;
        ok(v1::CancelSubscriptionResponse {
            subscription: Some(subscription),
        })
    }

    async fn update_payment_method(
        &self,
        request: Request<v1::UpdatePaymentMethodRequest>,
    ) -> Reply<v1::UpdatePaymentMethodResponse> {
        let tenant = tenant(&request)?;
        own_subscription(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().subscription_id,
        )
        .await?;
        let body = request.into_inner();
        let subscription = self
            .engine
            .update_payment_method(&tenant, &body.subscription_id, &body.payment_token)
            .await
            .map_err(fail)?;
        ok(v1::UpdatePaymentMethodResponse {
            subscription: Some(subscription),
        })
    }

    async fn migrate_subscription(
        &self,
        request: Request<v1::MigrateSubscriptionRequest>,
    ) -> Reply<v1::MigrateSubscriptionResponse> {
        let tenant = tenant(&request)?;
        let (subscription, next_plan_version) = self
            .engine
            .migrate_subscription(&tenant, &request.get_ref().subscription_id)
            .await
            .map_err(fail)?;
        ok(v1::MigrateSubscriptionResponse {
            subscription: Some(subscription),
            next_plan_version,
        })
    }
}

/// InvoiceService over the engine.
#[derive(Clone)]
pub struct InvoiceApi {
    engine: Arc<Subscriptions>,
}

impl InvoiceApi {
    /// Handlers over `engine`.
    pub fn new(engine: Arc<Subscriptions>) -> Self {
        InvoiceApi { engine }
    }
}

#[tonic::async_trait]
impl InvoiceService for InvoiceApi {
    async fn get_invoice(
        &self,
        request: Request<v1::GetInvoiceRequest>,
    ) -> Reply<v1::GetInvoiceResponse> {
        let tenant = tenant(&request)?;
        own_invoice(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().invoice_id,
        )
        .await?;
        let invoice = self
            .engine
            .invoice(&tenant, &request.get_ref().invoice_id)
            .await
            .map_err(fail)?;
        ok(v1::GetInvoiceResponse {
            invoice: Some(invoice),
        })
    }

    async fn list_invoices(
        &self,
        request: Request<v1::ListInvoicesRequest>,
    ) -> Reply<v1::ListInvoicesResponse> {
        let tenant = tenant(&request)?;
        // A customer lists the invoices of one of their own subscriptions (never the tenant's).
        if customer(&request).is_some() {
            if request.get_ref().subscription_id.is_empty() {
                return Err(ApiError::new(
                    tonic::Code::InvalidArgument,
                    commerce_api::commerce::common::v1::ErrorReason::ValidationFailed,
                    "a customer token lists invoices by subscription_id",
                )
                .into_status(ERROR_DOMAIN));
            }
            own_subscription(
                &self.engine,
                &request,
                &tenant,
                &request.get_ref().subscription_id,
            )
            .await?;
        }
        let body = request.into_inner();
        let statuses = statuses::<InvoiceStatus>(&body.statuses)?;
        let (invoices, next_page_token) = self
            .engine
            .list_invoices(
                &tenant,
                &body.subscription_id,
                &statuses,
                size(body.page_size),
                &body.page_token,
            )
            .await
            .map_err(fail)?;
        ok(v1::ListInvoicesResponse {
            invoices,
            next_page_token,
        })
    }

    async fn pay_invoice(
        &self,
        request: Request<v1::PayInvoiceRequest>,
    ) -> Reply<v1::PayInvoiceResponse> {
        let tenant = tenant(&request)?;
        own_invoice(
            &self.engine,
            &request,
            &tenant,
            &request.get_ref().invoice_id,
        )
        .await?;
        let invoice = self
            .engine
            .pay_invoice(&tenant, &request.get_ref().invoice_id)
            .await
            .map_err(fail)?;
        ok(v1::PayInvoiceResponse {
            invoice: Some(invoice),
        })
    }

    async fn void_invoice(
        &self,
        request: Request<v1::VoidInvoiceRequest>,
    ) -> Reply<v1::VoidInvoiceResponse> {
        let tenant = tenant(&request)?;
        let invoice = self
            .engine
            .void_invoice(&tenant, &request.get_ref().invoice_id)
            .await
            .map_err(fail)?;
        ok(v1::VoidInvoiceResponse {
            invoice: Some(invoice),
        })
    }

    async fn mark_invoice_uncollectible(
        &self,
        request: Request<v1::MarkInvoiceUncollectibleRequest>,
    ) -> Reply<v1::MarkInvoiceUncollectibleResponse> {
        let tenant = tenant(&request)?;
        let invoice = self
            .engine
            .mark_invoice_uncollectible(&tenant, &request.get_ref().invoice_id)
            .await
            .map_err(fail)?;
        ok(v1::MarkInvoiceUncollectibleResponse {
            invoice: Some(invoice),
        })
    }
}
